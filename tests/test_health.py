"""Probes over real HTTP in each of the five states, and the framework-free probe function."""

from __future__ import annotations

import pytest
import requests

from coordinator import FakeClock, Registration, RetryPolicy, health
from states import State

from conftest import REFUSED, ScriptedTransport, status

URL = "http://127.0.0.1:8998/route"


def in_state(target: State, payload: dict) -> Registration:
    clock = FakeClock(100.0)
    script = {State.REGISTERED: (status(200),), State.FAILED: (status(404, "no route"),)}.get(target, (REFUSED,))
    reg = Registration(URL, payload, clock=clock, transport=ScriptedTransport(*script), on_exhausted="return")
    steps = {State.INIT: 0, State.REGISTERING: 1, State.BACKOFF: 2, State.REGISTERED: 2, State.FAILED: 2}
    for _ in range(steps[target]):
        reg.poll()
    assert reg.state is target
    return reg


EXPECTED = {  # state: (livez, readyz, startupz)
    State.INIT: (200, 503, 503),
    State.REGISTERING: (200, 503, 503),
    State.BACKOFF: (200, 503, 503),
    State.REGISTERED: (200, 200, 200),
    State.FAILED: (503, 503, 503),
}


@pytest.fixture
def http():  # type: ignore[no-untyped-def]
    with requests.Session() as s:
        s.trust_env = False
        yield s


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_probes_over_http_in_each_state(state: State, payload, http) -> None:  # type: ignore[no-untyped-def]
    reg = in_state(state, payload)
    with health.serve(reg) as probes:
        codes = tuple(http.get(f"{probes.url}{p}", timeout=5).status_code for p in ("/livez", "/readyz", "/startupz"))
        status_page = http.get(f"{probes.url}/status", timeout=5)
        livez = http.get(f"{probes.url}/livez", timeout=5).json()
    assert codes == EXPECTED[state]
    assert status_page.status_code == 200
    body = status_page.json()
    assert body["state"] == state.value and body["snapshot"]["state"] == state.value
    assert {"state", "attempt", "seconds_to_next_attempt", "last_error", "ok"} <= set(livez)
    assert livez["attempt"] == reg.snapshot().attempt
    if state is State.BACKOFF:
        assert 0 <= livez["seconds_to_next_attempt"] <= 0.5
        assert livez["last_error"]["type"] == "ConnectionRefusedError"
    else:
        assert livez["seconds_to_next_attempt"] is None
    if state is State.FAILED:
        assert livez["reason"] == "permanent" and livez["last_status"] == 404


def test_unknown_path_is_404(payload, http) -> None:  # type: ignore[no-untyped-def]
    with health.serve(in_state(State.INIT, payload)) as probes:
        r = http.get(f"{probes.url}/metrics", timeout=5)
    assert r.status_code == 404 and "/readyz" in r.json()["error"]


def test_probe_function_is_framework_free(payload) -> None:  # type: ignore[no-untyped-def]
    reg = in_state(State.BACKOFF, payload)
    code, body = health.probe("/readyz", reg.snapshot(), reg.clock.now())
    assert code == 503 and body["ok"] is False and body["state"] == "BACKOFF"
    with pytest.raises(KeyError):
        health.probe("/nope", reg.snapshot(), 0.0)


def test_several_registrations_aggregate(payload, http) -> None:  # type: ignore[no-untyped-def]
    regs = [in_state(State.REGISTERED, payload), in_state(State.BACKOFF, payload)]
    with health.serve(regs) as probes:
        ready = http.get(f"{probes.url}/readyz", timeout=5)
        live = http.get(f"{probes.url}/livez", timeout=5)
    assert (ready.status_code, live.status_code) == (503, 200)
    assert [r["state"] for r in ready.json()["registrations"]] == ["REGISTERED", "BACKOFF"]


def test_binds_loopback_by_default(payload) -> None:  # type: ignore[no-untyped-def]
    with health.serve(in_state(State.INIT, payload)) as probes:
        assert probes.url.startswith("http://127.0.0.1:")


def test_background_failure_shows_on_the_probes(payload, http) -> None:  # type: ignore[no-untyped-def]
    reg = Registration(URL, payload, clock=FakeClock(), transport=ScriptedTransport(REFUSED),
                       policy=RetryPolicy(max_attempts=3), on_exhausted="raise")
    with health.serve(reg) as probes:
        reg.start()
        snap = reg.wait(timeout=10)
        live = http.get(f"{probes.url}/livez", timeout=5)
    assert snap.state is State.FAILED and live.status_code == 503  # "raise" does not apply off-thread
    assert live.json()["reason"] == "exhausted"
