"""Fault-injection matrix: real HTTP (HttpTransport) against scripted faulty servers.

Every scenario asserts the final state and reason, the number of attempts (client and
server side), the root cause as logged (``record.structlog`` of logger "coordinator"),
and the time on the registration's FakeClock (virtual: backoff sleeps are instant, so
the elapsed time is exactly the sum of the recorded sleeps). Real socket waits are kept
short by small attempt timeouts and measured with ``time.perf_counter``.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import logging
import random
import socket
import threading
from typing import Any, Callable, Iterator

import pytest

from coordinator import Backoff, BootstrapServer, FakeClock, Registration, RegistrationFailed, RetryPolicy, Snapshot
from coordinator.testing import TimingTransport, example_payload
from coordinator.testing.faultserver import (
    Action,
    FaultServer,
    close_without_answer,
    forward,
    free_port,
    hang,
    ipv6_available,
    oversized_body,
    redirect,
    reset_mid_response,
    reset_on_accept,
    respond,
    trickle_body,
    trickle_headers,
)
from states import State

TIMEOUT_S = 0.3
MARGIN_S = 0.35  # scheduling slack on a loaded CI machine
FAST = RetryPolicy(attempt_timeout_s=TIMEOUT_S, deadline_s=60.0)
MB = 1024 * 1024


def bounds(lane: str, n: int) -> tuple[float, float]:
    """Where retry ``n`` (1-based) of ``lane`` must sleep under the default policy."""
    if lane == "refused":  # a random phase, then a steady half second
        return (0.0, 0.5) if n == 1 else (0.5, 0.5)
    top = min(30.0, 2.0 ** (n - 1))  # trouble: 1 s doubling to 30 s, jitter 0.5
    return top * 0.5, top


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structlog event a record carries (empty for a record without one)."""
    event: dict[str, Any] = getattr(record, "structlog", {})
    return event


def action_attr(action: Action, name: str) -> Any:
    """What one kind of action records (``total_bytes``, ...): the factories are typed as the base Action."""
    return getattr(action, name)


class Harness:
    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.clock = FakeClock(1000.0)
        self.transport: TimingTransport | None = None
        self.reg: Registration | None = None

    def make(
        self,
        url: str,
        *,
        policy: RetryPolicy = FAST,
        payload: dict[str, Any] | None = None,
        timed: bool = True,
        listener: Callable[[Snapshot], None] | None = None,
        seed: int = 7,
        **kw: Any,
    ) -> Registration:
        kw.setdefault("on_exhausted", "return")
        self.transport = TimingTransport() if timed else None
        self.reg = Registration(
            url,
            payload if payload is not None else example_payload(),
            policy=policy,
            clock=self.clock,
            rng=random.Random(seed),
            transport=self.transport,
            **kw,
        )
        if listener is not None:
            self.reg.add_listener(listener)
        return self.reg

    def run(self, url: str, **kw: Any) -> Snapshot:
        return self.make(url, **kw).run()

    # -- what the log says ----------------------------------------------------------------

    def records(self, event: str | None = None) -> list[logging.LogRecord]:
        return [
            r
            for r in self.caplog.records
            if r.name == "coordinator"
            and isinstance(getattr(r, "structlog", None), dict)
            and (event is None or fields(r).get("event") == event)
        ]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [fields(r) for r in self.records(event)]

    def failures(self) -> list[dict[str, Any]]:
        return self.events("registration.attempt_failed")

    def final(self) -> dict[str, Any]:
        [end] = self.events("registration.registered") + self.events("registration.failed")
        return end

    # -- common checks --------------------------------------------------------------------

    def check_time(self, snap: Snapshot) -> None:
        """Virtual time moved only by the backoff sleeps, and each sleep is the logged delay."""
        sleeps = self.clock.sleeps
        assert sleeps == pytest.approx([e["delay_s"] for e in self.failures()], abs=1e-5)
        assert snap.elapsed_s == pytest.approx(sum(sleeps))
        assert self.clock.now() == pytest.approx(1000.0 + sum(sleeps))
        assert self.final()["elapsed_s"] == pytest.approx(sum(sleeps), abs=1e-5)

    def check_attempt_durations(self, at_most: float = TIMEOUT_S + MARGIN_S) -> None:
        assert self.transport is not None
        assert all(d <= at_most for d in self.transport.durations), self.transport.durations


@pytest.fixture
def h(caplog: pytest.LogCaptureFixture) -> Iterator[Harness]:
    caplog.set_level(logging.DEBUG, logger="coordinator")
    harness = Harness(caplog)
    yield harness
    if harness.transport is not None:  # a registration that crashed never closed it
        harness.transport.close()
    leaked = [t.name for t in threading.enumerate() if t.name.startswith(("faultserver", "bootstrap-server"))]
    assert leaked == [], f"server threads left running: {leaked}"


def get_route_all(host: str, port: int) -> tuple[int, str]:
    """What a decode instance sees: GET /route for the topology."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/route?prefill_dp_rank=-1&prefill_cp_rank=-1&target_tp_rank=-1&target_pp_rank=-1")
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


# -- the server is not there yet, or never ------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_refused_then_bootstrap_server_comes_up(h: Harness, k: int) -> None:
    port = free_port()
    servers: list[BootstrapServer] = []

    def start_after_k_refusals(snap: Snapshot) -> None:
        if snap.state is State.BACKOFF and snap.attempt == k and not servers:
            servers.append(BootstrapServer(port=port).start())

    try:
        snap = h.run(f"http://127.0.0.1:{port}/route", listener=start_after_k_refusals)
        [server] = servers
        assert (server.put_count, server.registered_count) == (1, 1)
    finally:
        for s in servers:
            s.close()
    assert (snap.state, snap.reason, snap.attempt, snap.last_status) == (State.REGISTERED, "registered", k + 1, 200)
    failures = h.failures()
    assert [f["error_type"] for f in failures] == ["ConnectionRefusedError"] * k
    assert [f["lane"] for f in failures] == ["refused"] * k
    for n, sleep in enumerate(h.clock.sleeps, start=1):
        low, high = bounds("refused", n)
        assert low <= sleep <= high
    assert h.final()["event"] == "registration.registered" and h.final()["attempt"] == k + 1
    h.check_time(snap)


def test_never_up_hits_the_deadline(h: Harness) -> None:
    port = free_port()
    policy = RetryPolicy(attempt_timeout_s=TIMEOUT_S, deadline_s=3.0, jitter=0.0, refused=Backoff(0.1, 0.5))
    snap = h.run(f"http://127.0.0.1:{port}/route", policy=policy)
    # Refused lane without jitter: 0.1, 0.2, 0.4, then the 0.5 cap; the last sleep is
    # clamped so one last attempt fits before 3.0 - min(0.3, 0.05) = 2.95 s: the budget is used
    # to within one attempt's minimum.
    assert h.clock.sleeps == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5, 0.25])
    assert (snap.state, snap.reason, snap.attempt) == (State.FAILED, "deadline", 9)
    assert snap.last_error is not None and snap.last_error.type == "ConnectionRefusedError"
    final = h.final()
    assert (final["event"], final["reason"], final["attempt"], final["error_type"]) == (
        "registration.failed", "deadline", 9, "ConnectionRefusedError"
    )
    assert policy.deadline_s is not None
    assert snap.elapsed_s == pytest.approx(2.95) and snap.elapsed_s <= policy.deadline_s
    h.check_time(snap)


def test_exhausted_raises_registration_failed_by_default(h: Harness) -> None:
    port = free_port()
    reg = h.make(
        f"http://127.0.0.1:{port}/route",
        policy=RetryPolicy(attempt_timeout_s=TIMEOUT_S, max_attempts=2),
        on_exhausted="raise",
    )
    with pytest.raises(RegistrationFailed) as info:
        reg.run()
    err = info.value
    assert (err.snapshot.state, err.snapshot.reason, err.snapshot.attempt) == (State.FAILED, "exhausted", 2)
    assert err.reason == "exhausted"
    assert err.cause is not None and err.cause.type == "ConnectionRefusedError"
    assert "failed (exhausted) after 2 attempt(s)" in str(err) and "ConnectionRefusedError" in str(err)
    assert reg.snapshot() is err.snapshot
    assert [f["error_type"] for f in h.failures()] == ["ConnectionRefusedError"]
    assert (h.final()["reason"], h.final()["error_type"]) == ("exhausted", "ConnectionRefusedError")
    h.check_time(err.snapshot)


# -- transient statuses ------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, k",
    [(503, 1), (503, 3), (500, 2), (502, 1), (504, 1), (429, 2), (408, 1)],
)
def test_transient_status_then_ok(h: Harness, status: int, k: int) -> None:
    body = f"busy ({status})"
    with FaultServer(*[respond(status, body)] * k, respond(200, "OK")) as server:
        snap = h.run(server.url)
        assert server.request_count == k + 1
        assert all(r.method == "PUT" and r.target == "/route" for r in server.requests)
    assert (snap.state, snap.reason, snap.attempt, snap.last_status) == (State.REGISTERED, "registered", k + 1, 200)
    failures = h.failures()
    assert [f["status"] for f in failures] == [status] * k
    assert [f["body"] for f in failures] == [f"HTTP {status}: {body}"] * k
    assert all(f["lane"] == "trouble" and "error_type" not in f for f in failures)
    for n, sleep in enumerate(h.clock.sleeps, start=1):
        low, high = bounds("trouble", n)
        assert low <= sleep <= high
    assert len(h.clock.sleeps) == k
    h.check_time(snap)


def test_persistent_503_exhausts_max_attempts(h: Harness) -> None:
    with FaultServer(respond(503, "overloaded")) as server:
        snap = h.run(server.url, policy=RetryPolicy(attempt_timeout_s=TIMEOUT_S, max_attempts=3))
        assert server.request_count == 3
    assert (snap.state, snap.reason, snap.attempt, snap.last_status) == (State.FAILED, "exhausted", 3, 503)
    final = h.final()
    assert (final["reason"], final["status"], final["body"]) == ("exhausted", 503, "HTTP 503: overloaded")
    assert "status=503" in h.records("registration.failed")[0].getMessage()
    assert len(h.clock.sleeps) == 2
    h.check_time(snap)


def test_keep_alive_connection_is_reused_across_attempts(h: Harness) -> None:
    with FaultServer(respond(503, "busy", keep_alive=True), respond(503, "busy", keep_alive=True),
                     respond(200, "OK")) as server:
        snap = h.run(server.url)
        assert (server.request_count, server.connection_count) == (3, 1)
    assert (snap.state, snap.attempt) == (State.REGISTERED, 3)
    assert [f["status"] for f in h.failures()] == [503, 503]
    h.check_time(snap)


# -- Retry-After ---------------------------------------------------------------------------

DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


@pytest.mark.parametrize(
    "status, headers, low, high",
    [
        pytest.param(503, {"Retry-After": "7"}, 7.0, 7.0 * 1.5, id="seconds"),
        pytest.param(429, {"Retry-After": "4"}, 4.0, 4.0 * 1.5, id="seconds-429"),
        pytest.param(503, {"Retry-After": "86400"}, 15.0, 30.0, id="huge-clamped-to-trouble-cap"),
        pytest.param(503, {"Retry-After": "9" * 400}, 15.0, 30.0, id="overflowing-digits-clamped"),
        pytest.param(503, {"Date": DATE, "Retry-After": "Wed, 21 Oct 2015 07:28:12 GMT"}, 12.0, 18.0,
                     id="http-date-vs-date-header"),
        pytest.param(503, {"Date": DATE, "Retry-After": "Wed, 21 Oct 2015 07:27:00 GMT"}, 0.0, 0.5,
                     id="http-date-in-the-past"),
    ],
)
def test_retry_after_is_a_clamped_floor(h: Harness, status: int, headers: dict[str, str], low: float,
                                        high: float) -> None:
    with FaultServer(respond(status, "later", headers), respond(200)) as server:
        snap = h.run(server.url)
        assert server.request_count == 2
    assert (snap.state, snap.attempt) == (State.REGISTERED, 2)
    [failure] = h.failures()
    assert (failure["status"], failure["lane"]) == (status, "trouble")
    [sleep] = h.clock.sleeps
    assert low <= sleep <= high
    h.check_time(snap)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Retry-After": "soon"}, id="word"),
        pytest.param({"Retry-After": "1.5"}, id="fraction"),
        pytest.param({"Retry-After": "-3"}, id="negative"),
        pytest.param({"Retry-After": "Wed, 21 Oct 2015 07:28:12 GMT"}, id="http-date-without-date-header"),
        pytest.param({"Date": "yesterday", "Retry-After": "Wed, 21 Oct 2015 07:28:12 GMT"}, id="garbage-date-header"),
        pytest.param(
            {"Retry-After": "\u00b2"},  # byte 0xB2 on the wire: SUPERSCRIPT TWO in latin-1
            id="superscript-digit",
        ),
    ],
)
def test_garbage_retry_after_is_ignored(h: Harness, headers: dict[str, str]) -> None:
    with FaultServer(respond(503, "later", headers), respond(200)) as server:
        snap = h.run(server.url)
        assert server.request_count == 2
    assert (snap.state, snap.attempt) == (State.REGISTERED, 2)
    [failure] = h.failures()
    assert (failure["status"], failure["lane"]) == (503, "trouble")
    [sleep] = h.clock.sleeps
    low, high = bounds("trouble", 1)  # the normal first trouble-lane delay
    assert low <= sleep <= high
    h.check_time(snap)


def test_retry_after_beyond_the_deadline_is_clamped_to_it(h: Harness) -> None:
    with FaultServer(respond(503, "later", {"Retry-After": "30"})) as server:
        snap = h.run(server.url, policy=RetryPolicy(attempt_timeout_s=TIMEOUT_S, deadline_s=10.0))
        assert server.request_count == 2
    # Slept only what leaves room for one last attempt: 10 - min(0.3, 0.05); then no room is left.
    assert h.clock.sleeps == pytest.approx([9.95])
    assert (snap.state, snap.reason, snap.attempt, snap.last_status) == (State.FAILED, "deadline", 2, 503)
    assert (h.final()["reason"], h.final()["status"]) == ("deadline", 503)
    h.check_time(snap)


# -- permanent answers ---------------------------------------------------------------------

LONG = "denied\n\n   " + "y" * 5000


@pytest.mark.parametrize(
    "status, body, excerpt",
    [
        (400, "payload field 'rank_ip': must be a non-empty string", None),
        (401, "a valid 'Authorization: Bearer <token>' header is required", None),
        (403, LONG, ("denied " + "y" * 5000)[:200]),
        (404, "not found", None),
        (405, "method not allowed", None),
        (409, "payload field 'attn_tp_size': 2 conflicts with 1 of the first registration", None),
    ],
)
def test_permanent_status_fails_after_one_attempt(h: Harness, status: int, body: str, excerpt: str | None) -> None:
    excerpt = excerpt if excerpt is not None else body
    with FaultServer(respond(status, body, {"WWW-Authenticate": "Bearer"} if status == 401 else None),
                     respond(200)) as server:
        snap = h.run(server.url)
        assert server.request_count == 1
    assert (snap.state, snap.reason, snap.attempt, snap.last_status) == (State.FAILED, "permanent", 1, status)
    assert snap.last_error is None
    assert h.failures() == []
    final = h.final()
    assert (final["reason"], final["status"], final["attempt"]) == ("permanent", status, 1)
    assert final["body"] == f"HTTP {status}: {excerpt}"
    message = h.records("registration.failed")[0].getMessage()
    assert f"status={status}" in message and excerpt[:40] in message
    assert h.clock.sleeps == [] and snap.elapsed_s == 0.0
    h.check_time(snap)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_not_followed(h: Harness, status: int) -> None:
    with FaultServer(respond(200)) as elsewhere, FaultServer(redirect(elsewhere.url, status)) as server:
        snap = h.run(server.url)
        assert server.request_count == 1
        assert (elsewhere.connection_count, elsewhere.request_count) == (0, 0)
    assert (snap.state, snap.reason, snap.attempt, snap.last_status) == (State.FAILED, "permanent", 1, status)
    final = h.final()
    assert (final["reason"], final["status"]) == ("permanent", status)
    assert f"status={status}" in h.records("registration.failed")[0].getMessage()
    assert h.clock.sleeps == []
    h.check_time(snap)


def test_redirect_answer_is_read_like_any_other(h: Harness) -> None:
    n = 24 * MB
    big = oversized_body(n, 307, {"Location": "http://127.0.0.1:1/route"}, fill=b"r")
    with FaultServer(big) as server:
        snap = h.run(server.url)
    assert big.bytes_sent < n  # reading stopped at the cap and the connection was dropped
    assert h.final().get("body") == "HTTP 307: " + "r" * 200  # README: status and body excerpt logged
    assert server.request_count == 1
    assert (snap.state, snap.reason, snap.attempt, snap.last_status) == (State.FAILED, "permanent", 1, 307)


# -- the connection breaks -----------------------------------------------------------------


@pytest.mark.parametrize(
    "fault, error_types",
    [
        pytest.param(close_without_answer, {"RemoteDisconnected"}, id="close-without-answer"),
        pytest.param(reset_mid_response, {"ConnectionResetError"}, id="reset-in-headers"),
        pytest.param(
            lambda: reset_mid_response(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nOK, regis"),
            {"ConnectionResetError"},
            id="reset-in-body-of-a-200",  # a broken answer is a failed attempt; the PUT is idempotent
        ),
        # The RST may hit the client's send (ignored by urllib3, then EOF) or its read.
        pytest.param(reset_on_accept, {"ConnectionResetError", "RemoteDisconnected"}, id="reset-on-accept"),
    ],
)
def test_broken_connection_is_retried(h: Harness, fault: Callable[[], Any], error_types: set[str]) -> None:
    with FaultServer(fault(), fault(), respond(200)) as server:
        snap = h.run(server.url)
        assert server.connection_count == 3
        assert server.request_count == (1 if fault is reset_on_accept else 3)
    assert (snap.state, snap.reason, snap.attempt) == (State.REGISTERED, "registered", 3)
    failures = h.failures()
    assert len(failures) == 2
    assert all(f["error_type"] in error_types and f["lane"] == "trouble" and "status" not in f for f in failures)
    if "RemoteDisconnected" in error_types and len(error_types) == 1:
        assert failures[0]["error"] == "Remote end closed connection without response"
    for n, sleep in enumerate(h.clock.sleeps, start=1):
        low, high = bounds("trouble", n)
        assert low <= sleep <= high
    h.check_attempt_durations()
    h.check_time(snap)


# -- slow servers: the attempt timeout and the deadline hold -------------------------------


def test_hanging_server_attempt_timeout_and_deadline(h: Harness) -> None:
    policy = RetryPolicy(attempt_timeout_s=TIMEOUT_S, deadline_s=3.0, jitter=0.0, refused=Backoff(0.1, 0.5))
    with FaultServer(hang()) as server:
        snap = h.run(server.url, policy=policy)
        assert server.request_count == 3
    assert h.transport is not None
    # The last attempt gets what is left of the budget: the 50 ms kept for it.
    assert h.transport.timeouts == pytest.approx([TIMEOUT_S, TIMEOUT_S, 0.05])
    assert all(t - 0.02 <= d <= t + MARGIN_S for t, d in zip(h.transport.timeouts, h.transport.durations)), \
        h.transport.durations
    # Trouble lane without jitter: 1.0, then 2.0 clamped to 3.0 - 1.0 - 0.05 = 1.95; then no room.
    assert h.clock.sleeps == pytest.approx([1.0, 1.95])
    assert (snap.state, snap.reason, snap.attempt) == (State.FAILED, "deadline", 3)
    assert [f["error_type"] for f in h.failures()] == ["TimeoutError"] * 2
    assert (h.final()["reason"], h.final()["error_type"]) == ("deadline", "TimeoutError")
    assert snap.elapsed_s == pytest.approx(2.95)
    h.check_time(snap)


def test_trickling_headers_cannot_stretch_the_attempt(h: Harness) -> None:
    slow = trickle_headers(interval=0.05)  # each byte well within the 0.3 s per-read timeout
    with FaultServer(slow, respond(200)) as server:
        snap = h.run(server.url)
        assert server.request_count == 2
    assert h.transport is not None
    first = h.transport.durations[0]
    assert TIMEOUT_S - 0.02 <= first <= TIMEOUT_S + MARGIN_S
    assert 0 < slow.bytes_sent < action_attr(slow, "total_bytes")
    assert (snap.state, snap.attempt) == (State.REGISTERED, 2)
    [failure] = h.failures()
    assert (failure["error_type"], failure["error"]) == ("TimeoutError", f"no complete answer within {TIMEOUT_S} s")
    h.check_time(snap)


@pytest.mark.parametrize(
    "keep_alive",
    [
        pytest.param(True, id="keep-alive"),
        pytest.param(
            False,
            id="connection-close",
        ),
    ],
)
def test_trickling_body_cannot_stretch_the_attempt(h: Harness, keep_alive: bool) -> None:
    slow = trickle_body(interval=0.05, n=30, keep_alive=keep_alive)  # 1.5 s if read to the end
    with FaultServer(slow, respond(200)) as server:
        snap = h.run(server.url)
    assert h.transport is not None
    assert h.transport.durations[0] <= TIMEOUT_S + MARGIN_S, h.transport.durations
    assert action_attr(slow, "body_bytes_sent") < 30
    assert server.request_count == 2
    # An answer not complete in time is a timed-out attempt, retried (the PUT is idempotent).
    assert (snap.state, snap.attempt) == (State.REGISTERED, 2)
    [failure] = h.failures()
    assert failure["error_type"] == "TimeoutError"
    h.check_time(snap)


# -- odd bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, headers",
    [
        pytest.param(b'{"status": "error", "registered": false}', {"Content-Type": "application/json"}, id="json"),
        pytest.param(b"<html><body>Welcome to nginx!</body></html>", {"Content-Type": "text/html"}, id="html"),
        pytest.param(b"", None, id="empty"),
        pytest.param(b"\xff\xfe\x00\x01garbage", {"Content-Type": "application/octet-stream"}, id="binary"),
    ],
)
def test_200_with_unexpected_body_is_registered(h: Harness, body: bytes, headers: dict[str, str] | None) -> None:
    with FaultServer(respond(200, body, headers), respond(500)) as server:
        snap = h.run(server.url)
        assert server.request_count == 1
    assert (snap.state, snap.reason, snap.attempt, snap.last_status) == (State.REGISTERED, "registered", 1, 200)
    assert h.failures() == []
    assert (h.final()["event"], h.final()["status"]) == ("registration.registered", 200)
    assert h.clock.sleeps == []
    h.check_time(snap)


BOMB = gzip.compress(b"\0" * (64 * MB), compresslevel=9)


@pytest.mark.parametrize(
    "script, state, reason, attempts, failed_bodies",
    [
        pytest.param(lambda: [oversized_body(24 * MB, 200)], State.REGISTERED, "registered", 1, [], id="200-24MB"),
        pytest.param(lambda: [oversized_body(None, 200)], State.REGISTERED, "registered", 1, [], id="200-endless"),
        pytest.param(lambda: [oversized_body(payload=BOMB, headers={"Content-Encoding": "gzip"})],
                     State.REGISTERED, "registered", 1, [], id="200-gzip-bomb"),
        pytest.param(lambda: [oversized_body(24 * MB, 503), respond(200)], State.REGISTERED, "registered", 2,
                     ["HTTP 503: " + "x" * 200], id="503-24MB-then-200"),
        pytest.param(lambda: [oversized_body(None, 503), respond(200)], State.REGISTERED, "registered", 2,
                     ["HTTP 503: " + "x" * 200], id="503-endless-then-200"),
        pytest.param(lambda: [oversized_body(24 * MB, 404)], State.FAILED, "permanent", 1,
                     ["HTTP 404: " + "x" * 200], id="404-24MB"),
    ],
)
def test_oversized_body_is_capped(
    h: Harness, script: Callable[[], list[Any]], state: State, reason: str, attempts: int, failed_bodies: list[str]
) -> None:
    actions = script()
    with FaultServer(*actions) as server:
        snap = h.run(server.url)
        assert server.request_count == attempts
    assert (snap.state, snap.reason, snap.attempt) == (state, reason, attempts)
    assert h.transport is not None
    assert all(d < 1.0 for d in h.transport.durations), h.transport.durations  # capped, not read through
    big = actions[0]
    if big.n is not None:
        assert big.bytes_sent < big.n  # the client hung up after 64 KiB (plus socket buffers)
    bodies = [f["body"] for f in h.failures()]
    if state is State.FAILED:
        bodies.append(h.final()["body"])
    assert bodies == failed_bodies
    h.check_time(snap)


# -- name resolution ------------------------------------------------------------------------


def test_unknown_host_is_a_dns_failure(h: Harness) -> None:
    snap = h.run(
        "http://nonexistent.invalid:8998/route",
        policy=RetryPolicy(attempt_timeout_s=TIMEOUT_S, max_attempts=2),
    )
    assert (snap.state, snap.reason, snap.attempt) == (State.FAILED, "exhausted", 2)
    assert snap.last_error is not None and snap.last_error.type == "gaierror"
    [failure] = h.failures()
    assert (failure["error_type"], failure["lane"]) == ("gaierror", "trouble")
    assert (h.final()["error_type"], h.final()["reason"]) == ("gaierror", "exhausted")
    [sleep] = h.clock.sleeps
    low, high = bounds("trouble", 1)
    assert low <= sleep <= high
    h.check_time(snap)


def test_slow_dns_ends_the_attempt_as_soon_as_resolution_returns(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # Documented limit: getaddrinfo cannot be interrupted, so name resolution is bounded by the
    # system resolver's own timeouts; once it returns past the attempt limit, the attempt ends
    # at once as a timeout (no connect, no further wait).
    real = socket.getaddrinfo
    done = threading.Event()

    def slow_getaddrinfo(host: Any, *args: Any, **kw: Any) -> Any:
        if host == "slow-dns.invalid":
            done.wait(1.2)  # a resolver retrying an unreachable name server
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    snap = h.run("http://slow-dns.invalid:8998/route", policy=RetryPolicy(attempt_timeout_s=TIMEOUT_S, max_attempts=1))
    assert (snap.state, snap.reason, snap.attempt) == (State.FAILED, "exhausted", 1)
    assert h.final()["error_type"] == "TimeoutError"
    h.check_attempt_durations(at_most=1.2 + MARGIN_S)


# -- addresses and environment ---------------------------------------------------------------


def test_ipv6_loopback(h: Harness) -> None:
    if not ipv6_available():
        pytest.skip("no IPv6 loopback on this host")
    with FaultServer(respond(503, "warming up"), respond(200), host="::1") as server:
        assert server.url == f"http://[::1]:{server.port}/route"
        snap = h.run(server.url)
        assert server.request_count == 2
        assert server.requests[0].header("Host") == f"[::1]:{server.port}"
    assert (snap.state, snap.attempt, snap.url) == (State.REGISTERED, 2, server.url)
    assert [f["status"] for f in h.failures()] == [503]
    h.check_time(snap)


@pytest.mark.parametrize("proxy", ["dead-port", "live-decoy"])
def test_proxy_environment_is_ignored(h: Harness, monkeypatch: pytest.MonkeyPatch, proxy: str) -> None:
    with FaultServer(respond(502, "via proxy")) as decoy, FaultServer(respond(200)) as server:
        proxy_url = f"http://127.0.0.1:{free_port() if proxy == 'dead-port' else decoy.port}"
        for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
            monkeypatch.setenv(var, proxy_url)
        for var in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(var, raising=False)
        snap = h.run(server.url, timed=False)  # the default transport, as an application builds it
        assert server.request_count == 1
        assert server.requests[0].target == "/route"  # origin form: not a proxied absolute URI
        assert decoy.connection_count == 0
    assert (snap.state, snap.attempt, snap.last_status) == (State.REGISTERED, 1, 200)
    assert h.failures() == [] and h.final()["event"] == "registration.registered"
    h.check_time(snap)


# -- the real bootstrap server ---------------------------------------------------------------


def test_bootstrap_server_restarts_between_attempts(h: Harness) -> None:
    with contextlib.ExitStack() as stack:
        old = stack.enter_context(FaultServer(respond(503, "shutting down", keep_alive=True)))
        port = old.port
        new: list[BootstrapServer] = []

        def restart(snap: Snapshot) -> None:
            if snap.state is not State.BACKOFF:
                return
            if snap.attempt == 1:
                old.close()  # the old process goes away, its keep-alive connection with it
            elif snap.attempt == 2 and not new:
                new.append(stack.enter_context(BootstrapServer(port=port)))

        snap = h.run(old.url, listener=restart)
        assert (old.connection_count, old.request_count) == (1, 1)
        [server] = new
        assert (server.put_count, server.registered_count, server.is_ready) == (1, 1, True)
    assert (snap.state, snap.reason, snap.attempt) == (State.REGISTERED, "registered", 3)
    failures = h.failures()
    assert [(f.get("status"), f.get("error_type"), f["lane"]) for f in failures] == [
        (503, None, "trouble"),
        (None, "ConnectionRefusedError", "refused"),
    ]
    # Each lane counts its own failures: both sleeps are each lane's first.
    assert bounds("trouble", 1)[0] <= h.clock.sleeps[0] <= bounds("trouble", 1)[1]
    assert bounds("refused", 1)[0] <= h.clock.sleeps[1] <= bounds("refused", 1)[1]
    h.check_time(snap)


def test_put_repeated_after_a_lost_response_counts_once(h: Harness) -> None:
    with BootstrapServer() as bootstrap:
        host, port = "127.0.0.1", bootstrap.port
        lost = forward(host, port, drop_answer=True)
        with FaultServer(lost, forward(host, port)) as proxy:
            snap = h.run(proxy.url, payload=example_payload(rank=0, tp_size=2))
            assert proxy.request_count == 2
        assert action_attr(lost, "upstream_statuses") == [200]  # the first PUT did register; its answer was lost
        assert (bootstrap.put_count, bootstrap.registered_count, bootstrap.expected_count) == (2, 1, 2)
        assert not bootstrap.is_ready  # upstream would count 2 PUTs as 2 ranks: ready too early
        assert get_route_all(host, port) == (
            503, "Prefill server not fully registered yet (1 of 2 workers registered).")

        assert (snap.state, snap.attempt) == (State.REGISTERED, 2)
        [failure] = h.failures()
        assert (failure["error_type"], failure["lane"]) == ("RemoteDisconnected", "trouble")
        h.check_time(snap)

        rank1 = Registration(bootstrap.url, example_payload(rank=1, tp_size=2), policy=FAST,
                             clock=FakeClock(), on_exhausted="return").run()
        assert (rank1.state, rank1.attempt) == (State.REGISTERED, 1)
        assert (bootstrap.put_count, bootstrap.registered_count, bootstrap.is_ready) == (3, 2, True)
        status, _ = get_route_all(host, port)
        assert status == 200
