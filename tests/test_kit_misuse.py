"""The testing kit refuses misuse loudly: a wrong step fails the test, naming the step."""

from __future__ import annotations

import pytest

from coordinator import FakeClock, Registration
from coordinator.testing import FaultServer, ScriptedTransport, ScriptError, TimingTransport, example_payload
from coordinator.testing.faultserver import respond

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
