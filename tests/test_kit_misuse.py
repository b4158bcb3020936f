"""The testing kit refuses misuse loudly: a wrong step fails the test, naming the step."""

from __future__ import annotations

import threading

import pytest

from coordinator import FakeClock, Reason, Registration
from coordinator.outcome import HarnessError
from coordinator.testing import Call, FaultServer, ScriptedTransport, ScriptError, TimingTransport, example_payload
from coordinator.testing.faultserver import respond
from states import State

URL = "http://bootstrap.test:8998/route"


@pytest.mark.parametrize("returned", [None, "refsued", 99999])
def test_a_callable_step_returning_no_answer_fails_the_test_naming_the_step(returned: object) -> None:
    def step(call: object) -> object:
        return returned

    reg = Registration(URL, example_payload(), clock=FakeClock(), hooks=(), on_exhausted="return",
                       transport=ScriptedTransport([step]))  # type: ignore[list-item]  # the point: a wrong step
    with pytest.raises(ScriptError, match="attempt 1: step .*step"):
        reg.run()


@pytest.mark.parametrize("code", [-1, 99, 600, 99999])
def test_statuses_outside_http_are_refused_where_the_script_is_written(code: int) -> None:
    with pytest.raises(ValueError, match=r"\[100, 599\]"):
        ScriptedTransport([code])
    with pytest.raises(ValueError, match=r"\[100, 599\]"):
        ScriptedTransport([(code, {})])


def test_timing_transport_times_lookups_too() -> None:
    with FaultServer(respond(503, "not yet")) as server:
        timing = TimingTransport()
        outcome = timing.get(server.url, 2.0)
        timing.close()
    assert outcome.status == 503
    assert timing.timeouts == [2.0] and len(timing.durations) == 1


def test_a_check_inside_a_step_fails_the_test_as_a_script_error() -> None:
    def step(call: Call) -> int:
        assert call.method == "GET", "expected a GET"
        return 200

    reg = Registration(URL, example_payload(), clock=FakeClock(), hooks=(), transport=ScriptedTransport([step]))
    with pytest.raises(ScriptError, match="attempt 1: step .* failed its check: expected a GET") as info:
        reg.run()
    assert isinstance(info.value.__cause__, AssertionError)
    assert reg.snapshot().reason is Reason.INTERNAL


class BrokenClock(FakeClock):
    def sleep(self, seconds: float, interrupt: threading.Event | None = None) -> None:
        assert False, "an invariant of the library's own"  # noqa: B011 - a production assert that fires


def test_a_bug_in_the_run_reaches_the_caller_as_itself_never_as_a_kit_error() -> None:
    reg = Registration(URL, example_payload(), clock=BrokenClock(), hooks=(), transport=ScriptedTransport([503]))
    reg.start()
    with pytest.raises(AssertionError, match="an invariant of the library's own") as info:
        reg.wait(5)
    assert not isinstance(info.value, HarnessError)
    snap = reg.snapshot()
    assert (snap.state, snap.reason) == (State.FAILED, Reason.INTERNAL)
