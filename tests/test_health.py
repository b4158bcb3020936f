"""Probes over real HTTP in each of the five states, and the framework-free probe function."""

from __future__ import annotations

import http.client
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from coordinator import Discovery, FakeClock, Registration, RetryPolicy, health
from coordinator.testing import ScriptedTransport, Step
from states import State

URL = "http://127.0.0.1:8998/route"
ANSWERS: dict[State, Step] = {State.REGISTERED: 200, State.FAILED: (404, {}, "no route")}  # else: refused


def in_state(target: State, payload: dict[str, Any], name: str | None = None) -> Registration:
    clock = FakeClock(100.0)
    reg = Registration(URL, payload, clock=clock, transport=ScriptedTransport([], then=ANSWERS.get(target, "refused")),
                       on_exhausted="return", name=name)
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
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False
        yield s


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_probes_over_http_in_each_state(state: State, payload: dict[str, Any], session: requests.Session) -> None:
    reg = in_state(state, payload)
    with health.serve(reg) as probes:
        codes = tuple(session.get(f"{probes.url}{p}", timeout=5).status_code
                      for p in ("/livez", "/readyz", "/startupz"))
        status_page = session.get(f"{probes.url}/status", timeout=5)
        livez = session.get(f"{probes.url}/livez", timeout=5).json()
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


def test_unknown_path_is_404(payload: dict[str, Any], session: requests.Session) -> None:
    with health.serve(in_state(State.INIT, payload)) as probes:
        r = session.get(f"{probes.url}/nope", timeout=5)
    assert r.status_code == 404 and "/readyz" in r.json()["error"]


def test_probe_function_is_framework_free(payload: dict[str, Any]) -> None:
    reg = in_state(State.BACKOFF, payload)
    code, body = health.probe("/readyz", reg.snapshot(), reg.clock.now())
    assert code == 503 and body["ok"] is False and body["state"] == "BACKOFF"
    with pytest.raises(KeyError):
        health.probe("/nope", reg.snapshot(), 0.0)


def test_several_registrations_aggregate(payload: dict[str, Any], session: requests.Session) -> None:
    regs = [in_state(State.REGISTERED, payload), in_state(State.BACKOFF, payload)]
    with health.serve(regs) as probes:
        ready = session.get(f"{probes.url}/readyz", timeout=5)
        live = session.get(f"{probes.url}/livez", timeout=5)
    assert (ready.status_code, live.status_code) == (503, 200)
    assert [r["state"] for r in ready.json()["registrations"]] == ["REGISTERED", "BACKOFF"]


def test_binds_loopback_by_default(payload: dict[str, Any]) -> None:
    with health.serve(in_state(State.INIT, payload)) as probes:
        assert probes.url.startswith("http://127.0.0.1:")


def test_background_failure_shows_on_the_probes(payload: dict[str, Any], session: requests.Session) -> None:
    reg = Registration(URL, payload, clock=FakeClock(), transport=ScriptedTransport([], then="refused"),
                       policy=RetryPolicy(max_attempts=3), on_exhausted="raise")
    with health.serve(reg) as probes:
        reg.start()
        snap = reg.wait(timeout=10)
        live = session.get(f"{probes.url}/livez", timeout=5)
    assert snap.state is State.FAILED and live.status_code == 503  # "raise" does not apply off-thread
    assert live.json()["reason"] == "exhausted"


# -- ?verbose, ?exclude, /metrics ------------------------------------------------------------


def test_verbose_is_kube_apiserver_text(payload: dict[str, Any], session: requests.Session) -> None:
    ok, waiting = in_state(State.REGISTERED, payload, "rank0"), in_state(State.BACKOFF, payload, "rank1")
    with health.serve([ok, waiting]) as probes:
        r = session.get(f"{probes.url}/readyz?verbose", timeout=5)
        live = session.get(f"{probes.url}/livez?verbose=1", timeout=5)
        excluded = session.get(f"{probes.url}/readyz?verbose&exclude=rank1&exclude=rank9", timeout=5)
    assert r.status_code == 503 and r.headers["Content-Type"].startswith("text/plain")
    lines = r.text.splitlines()
    assert lines[0] == "[+]registration rank0 ok"
    assert lines[1].startswith("[-]registration rank1 failed: BACKOFF, attempt 1, ConnectionRefusedError, "
                               "next attempt in 0.")
    assert lines[1].endswith(" s") and lines[2] == "readyz check failed"
    assert live.status_code == 200 and live.text.splitlines()[-1] == "livez check passed"
    assert excluded.status_code == 200
    assert excluded.text.splitlines() == [
        "[+]registration rank0 ok", "[+]registration rank1 excluded: ok",
        'warn: some health checks cannot be excluded: no matches for "rank9"', "readyz check passed"]


def test_verbose_failed_says_why_in_full(payload: dict[str, Any]) -> None:
    clock = FakeClock()
    reg = Registration(URL, payload, clock=clock, name="rank3", on_exhausted="return",
                       transport=ScriptedTransport([(404, {}, "no route")], clock=clock), hooks=())
    reg.run()
    code, text = health.verbose("/livez", [reg.snapshot()], clock.now())
    assert code == 503
    assert text.splitlines()[0] == "[-]registration rank3 failed: FAILED (permanent), attempt 1, HTTP 404"


def test_json_bodies_name_the_driver(payload: dict[str, Any], session: requests.Session) -> None:
    reg = in_state(State.INIT, payload)
    with health.serve(reg) as probes:
        body = session.get(f"{probes.url}/readyz", timeout=5).json()
    assert (body["kind"], body["name"]) == ("registration", None)


def test_metrics_from_a_registry_and_404_without_the_extra(payload: dict[str, Any], session: requests.Session,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import CollectorRegistry

    from coordinator.instrumentation import PrometheusHook

    registry = CollectorRegistry()
    clock = FakeClock()
    reg = Registration(URL, payload, clock=clock, name="rank0", hooks=[PrometheusHook(registry)],
                       transport=ScriptedTransport(["refused", 200], clock=clock))
    reg.run()
    with health.serve(reg, registry=registry) as probes:
        r = session.get(f"{probes.url}/metrics", timeout=5)
        monkeypatch.setitem(sys.modules, "prometheus_client", None)
        missing = session.get(f"{probes.url}/metrics", timeout=5)
        still = session.get(f"{probes.url}/readyz", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain; version=")
    assert ('prefill_startup_attempts_total{kind="registration",lane="refused",name="rank0",outcome="refused"} 1.0'
            in r.text)
    assert 'prefill_startup_state{kind="registration",name="rank0",state="REGISTERED"} 1.0' in r.text
    assert "prefill_startup_duration_seconds_count" in r.text
    assert missing.status_code == 404 and "pip install 'prefill-startup[metrics]'" in missing.text
    assert still.status_code == 200


def test_a_discovery_among_the_drivers(payload: dict[str, Any], session: requests.Session) -> None:
    clock = FakeClock()
    d = Discovery("10.0.0.5:8998", clock=clock, transport=ScriptedTransport([503], clock=clock), hooks=())
    d.poll(), d.poll()
    with health.serve([in_state(State.REGISTERED, payload), d]) as probes:
        text = session.get(f"{probes.url}/readyz?verbose", timeout=5).text
    assert "[-]discovery 10.0.0.5:8998 failed: BACKOFF, attempt 1, HTTP 503, NotYet, next attempt in" in text


def test_probe_server_holds_a_burst_of_fresh_connections(payload: dict[str, Any]) -> None:
    reg = in_state(State.REGISTERED, payload)
    clients = 64
    errors: list[OSError] = []
    codes: list[int] = []
    barrier = threading.Barrier(clients)
    with health.serve(reg) as probes:
        def hit() -> None:
            barrier.wait(10)
            conn = http.client.HTTPConnection("127.0.0.1", probes.port, timeout=10)
            try:
                conn.request("GET", "/readyz")
                codes.append(conn.getresponse().status)
            except OSError as exc:
                errors.append(exc)
            finally:
                conn.close()

        threads = [threading.Thread(target=hit) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert errors == [] and codes == [200] * clients
