"""The driver on the fake clock: step by step, end to end, and over real loopback HTTP."""

from __future__ import annotations

import json
import logging
import random
from typing import Any

import pytest

from coordinator import FakeClock, Registration, RegistrationFailed, RetryPolicy, Snapshot, bootstrap_url
from coordinator.outcome import Failure, root_cause
from coordinator.policy import Policy
from coordinator.protocol import encode_payload
from coordinator.sim.upstream import sglang_pr25125
from coordinator.testing import FaultServer, ScriptedTransport, free_port, ipv6_available
from coordinator.testing.faultserver import respond
from coordinator.transport import HttpTransport, classify_exception
from states import State

URL = "http://127.0.0.1:8998/route"


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structlog event a record carries (empty for a record without one)."""
    event: dict[str, Any] = getattr(record, "structlog", {})
    return event


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [fields(r) for r in caplog.records if fields(r).get("event") == name]


def make(transport: ScriptedTransport, clock: FakeClock, payload: dict[str, Any], **kw: Any) -> Registration:
    kw.setdefault("on_exhausted", "return")
    return Registration(URL, payload, clock=clock, transport=transport, **kw)


# -- upstream's seven cases, on both policies where they apply --------------------------------


@pytest.mark.parametrize("policy", [RetryPolicy(), sglang_pr25125()], ids=["ours", "upstream"])
def test_first_attempt_success_does_not_sleep(policy: Policy, clock: FakeClock, payload: dict[str, Any]) -> None:
    t = ScriptedTransport([], then=200)
    snap = make(t, clock, payload, policy=policy).run()
    assert (snap.state, snap.attempt, clock.sleeps) == (State.REGISTERED, 1, [])


@pytest.mark.parametrize("policy", [RetryPolicy(), sglang_pr25125()], ids=["ours", "upstream"])
def test_success_after_retries(policy: Policy, clock: FakeClock, payload: dict[str, Any]) -> None:
    t = ScriptedTransport(["refused", "refused"], then=200)
    snap = make(t, clock, payload, policy=policy).run()
    assert (snap.state, snap.attempt, len(clock.sleeps)) == (State.REGISTERED, 3, 2)


def test_all_attempts_exhausted(clock: FakeClock, payload: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "coordinator")
    t = ScriptedTransport([], then="refused")
    snap = make(t, clock, payload, policy=sglang_pr25125()).run()
    assert (snap.state, snap.reason, snap.attempt, len(clock.sleeps)) == (State.FAILED, "exhausted", 5, 4)
    [failed] = events(caplog, "registration.failed")
    assert failed["error_type"] == "ConnectionRefusedError" and failed["attempt"] == 5


def test_root_cause_of_nested_exception() -> None:
    try:
        try:
            try:
                raise ConnectionRefusedError(111, "Connection refused")
            except OSError as e:
                raise RuntimeError("new connection failed") from e
        except RuntimeError:
            raise ValueError("max retries")  # implicit __context__
    except ValueError as exc:
        caught = exc
    assert isinstance(root_cause(caught), ConnectionRefusedError)
    assert classify_exception(caught) is Failure.REFUSED


def test_root_cause_of_plain_exception() -> None:
    exc = TimeoutError("timed out")
    assert root_cause(exc) is exc
    assert classify_exception(exc) is Failure.TIMEOUT


def test_exponential_delays_upstream(payload: dict[str, Any]) -> None:
    clock = FakeClock(0.0)
    snap = make(ScriptedTransport([], then="refused"), clock, payload, policy=sglang_pr25125()).run()
    assert snap.state is State.FAILED
    expected, now = [], 0.0
    for k in range(4):  # upstream's formula, its jitter read from the clock at each failure
        expected.append(min(2**k, 30) * (0.75 + 0.25 * (now % 1)))
        now += expected[-1]
    assert clock.sleeps == pytest.approx(expected)
    assert expected[0] == 0.75 and expected[1] == pytest.approx(1.875)


def test_jitter_within_bounds(payload: dict[str, Any]) -> None:
    for seed in range(20):
        clock = FakeClock()
        policy = RetryPolicy(max_attempts=6)
        make(ScriptedTransport([], then=503), clock, payload, policy=policy, rng=random.Random(seed)).run()
        for n, slept in enumerate(clock.sleeps, start=1):
            top = min(30.0, 2.0 ** (n - 1))
            assert top * 0.5 <= slept <= top


# -- beyond upstream ------------------------------------------------------------------------------


def test_permanent_4xx_fails_after_one_attempt(clock: FakeClock, payload: dict[str, Any],
                                               caplog: pytest.LogCaptureFixture) -> None:
    t = ScriptedTransport([], then=(403, {}, "forbidden: wrong cluster"))
    snap = make(t, clock, payload).run()
    assert (snap.state, snap.reason, snap.attempt, snap.last_status, clock.sleeps) == (
        State.FAILED, "permanent", 1, 403, [])
    [failed] = events(caplog, "registration.failed")
    assert failed["status"] == 403 and "forbidden: wrong cluster" in failed["body"]


def test_deadline_is_respected(payload: dict[str, Any]) -> None:
    clock = FakeClock()
    t = ScriptedTransport([], then=503, clock=clock, latency=0.01)
    snap = make(t, clock, payload, policy=RetryPolicy(deadline_s=20.0)).run()
    assert (snap.state, snap.reason) == (State.FAILED, "deadline")
    assert clock.now() <= 20.0
    assert all(call.timeout <= 5.0 for call in t.calls)


def test_run_raises_by_default_with_snapshot_and_cause(clock: FakeClock, payload: dict[str, Any]) -> None:
    reg = Registration(URL, payload, clock=clock, transport=ScriptedTransport([], then="refused"),
                       policy=RetryPolicy(max_attempts=2))
    with pytest.raises(RegistrationFailed) as info:
        reg.run()
    assert info.value.snapshot.state is State.FAILED and info.value.reason == "exhausted"
    assert info.value.cause is not None and info.value.cause.type == "ConnectionRefusedError"
    assert "2 attempt(s)" in str(info.value)


def test_transition_driven_step_by_step(clock: FakeClock, payload: dict[str, Any]) -> None:
    t = ScriptedTransport(["refused", 503], then=200)
    reg = make(t, clock, payload)
    assert reg.state is State.INIT and reg.snapshot().attempt == 0

    assert reg.poll().state is State.REGISTERING and not t.calls  # start: no attempt yet
    snap = reg.poll()
    assert (snap.state, snap.attempt, len(t.calls)) == (State.BACKOFF, 1, 1)
    assert snap.last_error is not None and snap.last_error.type == "ConnectionRefusedError"
    due = snap.next_attempt_at
    assert due is not None and 0 < due <= 0.5  # refused lane, first retry: a random phase

    clock.advance(due / 2)
    assert reg.poll().state is State.BACKOFF  # not due: the timer guard holds
    clock.advance(due)
    assert reg.poll().state is State.REGISTERING and len(t.calls) == 1
    snap = reg.poll()
    assert (snap.state, snap.attempt, snap.last_status) == (State.BACKOFF, 2, 503)
    assert snap.next_attempt_at is not None and 0.5 <= snap.next_attempt_at - clock.now() <= 1.0  # trouble lane now

    clock.advance(1.0)
    reg.poll()
    snap = reg.poll()
    assert (snap.state, snap.attempt, snap.last_status, snap.reason) == (State.REGISTERED, 3, 200, "registered")
    assert reg.poll() is snap  # terminal: nothing more happens
    assert t.closed


def test_snapshot_is_frozen_and_json_ready(clock: FakeClock, payload: dict[str, Any]) -> None:
    reg = make(ScriptedTransport([], then="refused"), clock, payload)
    reg.poll(), reg.poll()
    snap = reg.snapshot()
    with pytest.raises(AttributeError):
        snap.state = State.FAILED  # type: ignore[misc]  # the point: a frozen field raises
    assert snap.next_attempt_at is not None
    data = json.loads(json.dumps(snap.to_dict(now=clock.now())))
    assert data["state"] == "BACKOFF" and data["attempt"] == 1
    assert data["last_error"]["type"] == "ConnectionRefusedError"
    assert data["seconds_to_next_attempt"] == pytest.approx(snap.next_attempt_at - clock.now())
    assert set(data) >= {"state", "attempt", "max_attempts", "started_at", "state_since", "next_attempt_at",
                         "last_status", "last_error", "elapsed_s", "reason"}


def test_two_ranks_failing_together_draw_different_delays(payload: dict[str, Any]) -> None:
    def first_delay(rng: random.Random | None) -> float:
        clock = FakeClock(5.0)
        reg = make(ScriptedTransport([], then="refused"), clock, payload, rng=rng)
        reg.poll(), reg.poll()
        due = reg.snapshot().next_attempt_at
        assert due is not None
        return due - 5.0

    assert first_delay(None) != first_delay(None)  # default: seeded from OS entropy
    assert first_delay(random.Random(7)) == first_delay(random.Random(7))


def test_listener_sees_every_state_change(clock: FakeClock, payload: dict[str, Any]) -> None:
    reg = make(ScriptedTransport(["refused"], then=200), clock, payload)
    seen: list[State] = []

    def broken(s: Snapshot) -> None:
        1 / 0  # a broken listener must not stop the registration

    reg.add_listener(lambda s: seen.append(s.state))
    reg.add_listener(broken)
    assert reg.run().state is State.REGISTERED
    assert seen == [State.REGISTERING, State.BACKOFF, State.REGISTERING, State.REGISTERED]


def test_a_crashing_transport_fails_the_registration(clock: FakeClock, payload: dict[str, Any]) -> None:
    snap = make(ScriptedTransport([KeyError("bug")]), clock, payload).run()
    assert snap.last_error is not None
    assert (snap.state, snap.reason, snap.last_error.type) == (State.FAILED, "permanent", "KeyError")


def test_stop_without_a_thread_cancels(clock: FakeClock, payload: dict[str, Any],
                                       caplog: pytest.LogCaptureFixture) -> None:
    reg = make(ScriptedTransport([], then="refused"), clock, payload)
    reg.poll(), reg.poll()
    snap = reg.stop()
    assert (snap.state, snap.reason) == (State.FAILED, "cancelled")
    [failed] = events(caplog, "registration.failed")
    assert failed["reason"] == "cancelled"


def test_timeout_failure_goes_to_trouble_lane(clock: FakeClock, payload: dict[str, Any]) -> None:
    reg = make(ScriptedTransport(["timeout"], then=200), clock, payload)
    assert reg.run().state is State.REGISTERED
    assert 0.5 <= clock.sleeps[0] <= 1.0


# -- logs ------------------------------------------------------------------------------------


def test_long_outage_does_not_flood_the_log(payload: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "coordinator")
    clock = FakeClock()
    t = ScriptedTransport([], then="refused", clock=clock, latency=0.001)
    snap = make(t, clock, payload, policy=RetryPolicy(deadline_s=3600.0)).run()
    assert snap.state is State.FAILED and snap.attempt > 5000
    warnings = [r for r in caplog.records
                if r.levelno == logging.INFO and fields(r)["event"] == "registration.attempt_failed"]
    assert 5 <= len(warnings) <= 10
    assert [fields(w)["repeats"] for w in warnings[-3:]] == [64, 128, 256]  # summaries carry the count
    assert len(events(caplog, "registration.attempt_failed")) == snap.attempt - 1  # one event per attempt
    [failed] = [r for r in caplog.records if fields(r)["event"] == "registration.failed"]
    assert failed.levelname == "ERROR" and fields(failed)["repeats"] == snap.attempt


def test_event_fields_are_stable(clock: FakeClock, payload: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "coordinator")
    make(ScriptedTransport([(503, {}, "busy")], then=200), clock, payload, name="rank3").run()
    [failed] = events(caplog, "registration.attempt_failed")
    assert {"attempt", "max_attempts", "url", "status", "delay_s", "elapsed_s",
            "lane", "repeats", "registration"} <= set(failed)
    [ok] = events(caplog, "registration.registered")
    assert ok["attempt"] == 2 and ok["registration"] == "rank3"
    changes = events(caplog, "registration.state_changed")
    assert [(c["from_state"], c["to_state"]) for c in changes] == [
        ("INIT", "REGISTERING"), ("REGISTERING", "BACKOFF"), ("BACKOFF", "REGISTERING"),
        ("REGISTERING", "REGISTERED")]


def test_logs_reach_stdlib_logging_as_readable_lines(clock: FakeClock, payload: dict[str, Any],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "coordinator")
    make(ScriptedTransport(["refused"], then=200), clock, payload).run()
    [line] = [r.getMessage() for r in caplog.records
              if r.levelno == logging.INFO and "attempt_failed" in r.getMessage()]
    assert line.startswith("registration.attempt_failed ")
    assert "error_type='ConnectionRefusedError'" in line and "attempt=1" in line
    assert all(r.name == "coordinator" for r in caplog.records)


def test_a_caller_logger_is_used(clock: FakeClock, payload: dict[str, Any]) -> None:
    import structlog

    with structlog.testing.capture_logs() as logs:
        log = structlog.get_logger()
        make(ScriptedTransport(["refused"], then=200), clock, payload, logger=log).run()
    assert [e["event"] for e in logs if e["log_level"] != "debug"] == [
        "registration.started", "registration.attempt_failed", "registration.registered"]


# -- real HTTP on loopback ---------------------------------------------------------------------


def test_loopback_503_twice_then_200(payload: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    warming = respond(503, "warming up", keep_alive=True)
    with FaultServer(warming, warming, respond(200, "OK", keep_alive=True)) as server:
        clock = FakeClock()
        snap = Registration(server.url, payload, clock=clock).run()
    assert (snap.state, snap.attempt, len(clock.sleeps)) == (State.REGISTERED, 3, 2)
    failed = events(caplog, "registration.attempt_failed")
    assert [f["status"] for f in failed] == [503, 503]
    assert all("warming up" in f["body"] for f in failed)
    [req] = server.requests[:1]
    assert json.loads(req.body) == payload and (req.method, req.target) == ("PUT", "/route")
    assert req.header("Content-Type") == "application/json"


def test_loopback_nothing_listening_fails_after_five(payload: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    url = f"http://127.0.0.1:{free_port()}/route"
    snap = Registration(url, payload, clock=clock, policy=RetryPolicy(max_attempts=5),
                        on_exhausted="return").run()
    assert (snap.state, snap.attempt, len(clock.sleeps)) == (State.FAILED, 5, 4)
    assert snap.last_error is not None and snap.last_error.type == "ConnectionRefusedError"
    [failed] = events(caplog, "registration.failed")
    assert failed["error_type"] == "ConnectionRefusedError" and "refused" in failed["error"].lower()


def test_transport_keeps_one_connection_across_attempts(payload: dict[str, Any]) -> None:
    busy = respond(503, "x", keep_alive=True)
    transport = HttpTransport()
    with FaultServer(busy, busy, respond(200, "OK", keep_alive=True)) as server:
        try:
            body = encode_payload(payload)
            codes = [transport.attempt(server.url, body, 2.0).status for _ in range(3)]
        finally:
            transport.close()
    assert codes == [503, 503, 200]
    assert server.connection_count == 1  # keep-alive: one TCP connection for three attempts


def test_bootstrap_url_matches_sglang() -> None:
    assert bootstrap_url("0.0.0.0", 8998) == "http://127.0.0.1:8998/route"
    assert bootstrap_url("::", 8998) == "http://[::1]:8998/route"
    assert bootstrap_url("10.0.0.5", 9000) == "http://10.0.0.5:9000/route"
    assert bootstrap_url("fe80::1", 8998) == "http://[fe80::1]:8998/route"
    assert bootstrap_url("0.0.0.0", 8998, dist_init_addr="node0.cluster:5000") == "http://node0.cluster:8998/route"
    assert bootstrap_url("0.0.0.0", 8998, dist_init_addr="[2001:db8::7]:5000") == "http://[2001:db8::7]:8998/route"


@pytest.mark.parametrize("args,field", [
    (("", 8998), "host"), (("h", 0), "port"), (("h", 70000), "port"), (("h", "8998"), "port"),
    (("h", 8998, "nohostport"), "dist_init_addr"), (("h", 8998, "h:notaport"), "dist_init_addr"),
    (("h", 8998, "[::1]5000"), "dist_init_addr"), (("a/b", 8998), "host"),
])
def test_bootstrap_url_rejects_bad_input(args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        bootstrap_url(*args)


def test_ipv6_loopback(payload: dict[str, Any]) -> None:
    if not ipv6_available():
        pytest.skip("no IPv6 loopback")
    from coordinator import BootstrapServer

    with BootstrapServer("::1") as server:
        snap = Registration(bootstrap_url("::1", server.port), payload, clock=FakeClock()).run()
        assert snap.state is State.REGISTERED and server.registered_count == 1


def test_nothing_keeps_a_terminal_registration_alive(payload: dict[str, Any]) -> None:
    import gc
    import weakref

    from coordinator.driver import _MACHINE

    refs: list[weakref.ref[Registration]] = []
    for i in range(50):  # default hooks (logs, metrics) included
        reg = Registration(URL, payload, clock=FakeClock(), transport=ScriptedTransport(["refused"], then=200),
                           name=f"rank{i}")
        reg.run()
        refs.append(weakref.ref(reg))
    del reg
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert _MACHINE.models == []  # one Machine for the process; drivers never join its model list


def test_the_report_shows_people_relative_seconds_never_monotonic_instants(clock: FakeClock,
                                                                        payload: dict[str, Any]) -> None:
    clock.advance(1266.68)  # a monotonic clock's value means nothing to a reader
    reg = make(ScriptedTransport([], then="refused"), clock, payload)
    reg.poll(), reg.poll()
    clock.advance(0.1)
    report = reg.snapshot().report(clock.now())
    assert not {"started_at", "state_since", "next_attempt_at", "taken_at"} & set(report)
    assert report["started_s_ago"] == pytest.approx(0.1) and report["in_state_s"] == pytest.approx(0.1)
    assert "1266" not in json.dumps(report)
