"""Our bootstrap server's extensions (issue 17): a generation header on every answer, and
topology long-polls (``&wait=S[&seen=G]``) held by one parking thread, over real loopback."""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

from coordinator import BootstrapServer, Discovery
from coordinator.outcome import Outcome
from coordinator.protocol import GENERATION_HEADER, LONG_POLL_HEADER
from coordinator.server import _http as bootstrap_http
from coordinator.server._parking import Parking
from coordinator.testing import example_payload
from coordinator.testing import http_request as request
from coordinator.transport import HttpTransport

TOPOLOGY = "/route?prefill_dp_rank=-1&prefill_cp_rank=-1&target_tp_rank=-1&target_pp_rank=-1"
RANK = "/route?prefill_dp_rank=0&prefill_cp_rank=0&target_tp_rank=0&target_pp_rank=0"
WAIT_S = 5.0  # the most any wait on a real loopback server here may take
NOT_YET = b"Prefill server not fully registered yet (1 of 2 workers registered)."


def put(port: int, rank: int, total: int = 2, rank_port: int = 17000) -> int:
    payload = example_payload(rank, total, rank_port=rank_port)
    return request(port, "PUT", "/route", json.dumps(payload).encode())[0]


def send(port: int, path: str) -> socket.socket:
    """A GET sent on a fresh connection, its answer not read yet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
    return sock


def answer_of(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read the answer to :func:`send`'s request, then close the socket."""
    resp = http.client.HTTPResponse(sock)
    try:
        resp.begin()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        resp.close()
        sock.close()


def until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, "not within the bounded wait"
        time.sleep(0.005)


# The fixtures server and half are in conftest.py: test_edges_cli_server uses them too.


def long_poll(wait: float, seen: str | None = None) -> str:
    return f"{TOPOLOGY}&wait={wait:g}" + ("" if seen is None else f"&seen={seen}")


# --- the generation ------------------------------------------------------------------------------


def test_every_answer_carries_the_generation_and_the_long_poll_ceiling(
        server: BootstrapServer, monkeypatch: pytest.MonkeyPatch) -> None:
    port = server.port
    exchanges = [
        ("GET", TOPOLOGY, None), ("GET", RANK, None), ("GET", "/health", None), ("HEAD", "/health", None),
        ("GET", "/nowhere", None), ("POST", "/health", b""), ("HEAD", TOPOLOGY, None), ("PUT", "/route", b"{"),
        ("GET", "/route?prefill_dp_rank=x", None), ("GET", f"{TOPOLOGY}&wait=0", None), ("BREW", "/", None),
        ("PUT", "/route", json.dumps(example_payload()).encode()), ("GET", TOPOLOGY, None), ("GET", RANK, None),
        ("GET", long_poll(30), None),
    ]
    statuses = set()
    for method, path, body in exchanges:
        status, headers, data = request(port, method, path, body)
        statuses.add(status)
        assert headers[GENERATION_HEADER] == server.generation, (method, path)
        assert headers[LONG_POLL_HEADER] == "30", (method, path)
        assert server.generation.encode() not in data  # headers only: never in the JSON
    assert statuses == {200, 400, 404, 405, 501, 503}
    # The over-capacity 503, sent by the accepting thread, carries them too.
    monkeypatch.setattr(bootstrap_http._HTTPServer, "max_connections", 1)

    def served() -> bool:  # refused while the connections above are still closing
        held.request("GET", "/health")
        resp = held.getresponse()
        resp.read()
        return resp.status == 200

    held = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    try:
        until(served)  # kept alive: it holds the one slot
        status, headers, _ = request(port, "GET", "/health")
        assert (status, headers[GENERATION_HEADER], headers[LONG_POLL_HEADER]) == (503, server.generation, "30")
    finally:
        held.close()


def test_each_server_draws_its_own_generation() -> None:
    generations = {BootstrapServer().generation for _ in range(2)}
    assert len(generations) == 2
    assert all(re.fullmatch(r"[0-9a-f]{16}", g) for g in generations)


def test_the_topology_json_is_upstreams_with_or_without_a_long_poll(server: BootstrapServer) -> None:
    assert put(server.port, 0, total=1) == 200
    _, _, plain = request(server.port, "GET", TOPOLOGY)
    _, _, polled = request(server.port, "GET", long_poll(1))
    assert polled == plain


# --- bad long-poll parameters ---------------------------------------------------------------------


@pytest.mark.parametrize("query", ["wait=", "wait=0", "wait=-1", "wait=abc", "wait=nan", "wait=inf", "wait=30.5",
                                   "wait=1e9", "wait=%2B1"])
def test_a_bad_wait_is_400_naming_it(half: BootstrapServer, query: str) -> None:
    status, _, body = request(half.port, "GET", f"{TOPOLOGY}&{query}")
    assert status == 400 and body.startswith(b"query parameter 'wait' must "), body


def test_wait_on_a_rank_lookup_is_400_naming_it(half: BootstrapServer) -> None:
    status, _, body = request(half.port, "GET", f"{RANK}&wait=1")
    assert status == 400 and body.startswith(b"query parameter 'wait' is only for the topology lookup"), body


@pytest.mark.parametrize("seen", ["", "%01", "a%20b"])
def test_a_bad_seen_is_400_naming_it(half: BootstrapServer, seen: str) -> None:
    status, _, body = request(half.port, "GET", f"{long_poll(1)}&seen={seen}")
    assert status == 400 and body.startswith(b"query parameter 'seen' "), body


def test_the_rank_values_are_checked_first_as_upstream(half: BootstrapServer) -> None:
    status, _, body = request(half.port, "GET", "/route?prefill_dp_rank=-1&wait=abc")
    assert (status, body) == (400, b"query parameter 'prefill_cp_rank' is required")


# --- answered at once ------------------------------------------------------------------------------


def test_a_long_poll_is_answered_at_once_when_complete(server: BootstrapServer) -> None:
    assert put(server.port, 0, total=1) == 200
    began = time.monotonic()
    status, _, body = request(server.port, "GET", long_poll(30))
    assert status == 200 and json.loads(body)["attn_tp_size"] == 1
    assert time.monotonic() - began < 0.5


@pytest.mark.parametrize("complete", [False, True])
def test_another_generation_seen_is_answered_at_once(server: BootstrapServer, complete: bool) -> None:
    assert put(server.port, 0, total=1 if complete else 2) == 200
    began = time.monotonic()
    status, headers, _ = request(server.port, "GET", long_poll(30, seen="0123456789abcdef"))
    assert status == (200 if complete else 503) and headers[GENERATION_HEADER] == server.generation
    assert time.monotonic() - began < 0.5


def test_seen_without_wait_is_ignored_as_upstream_ignores_unknown_parameters(half: BootstrapServer) -> None:
    assert request(half.port, "GET", f"{TOPOLOGY}&seen=%01")[:3:2] == (503, NOT_YET)


# --- held ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ours_seen", [False, True])
def test_a_long_poll_held_while_incomplete_is_answered_when_the_last_rank_registers(
        half: BootstrapServer, ours_seen: bool) -> None:
    sock = send(half.port, long_poll(10, seen=half.generation if ours_seen else None))
    until(lambda: half.parked == 1)
    began = time.monotonic()
    assert put(half.port, 1) == 200
    status, headers, body = answer_of(sock)
    took = time.monotonic() - began
    assert status == 200 and json.loads(body)["attn_tp_size"] == 2 and headers["Connection"] == "close"
    assert headers[GENERATION_HEADER] == half.generation
    # ~0.5 s: a check at the gone pace (0.25 s jittered by half), then one lookup round.
    assert took < 0.75, took
    until(lambda: half.parked == 0)


def test_a_long_poll_held_while_incomplete_times_out_with_the_503(half: BootstrapServer) -> None:
    began = time.monotonic()
    status, headers, body = answer_of(send(half.port, long_poll(0.3)))
    took = time.monotonic() - began
    assert (status, body, headers[GENERATION_HEADER]) == (503, NOT_YET, half.generation)
    assert 0.25 < took < 2.0, took
    until(lambda: half.parked == 0)


def test_our_generation_seen_is_held_until_wait_then_answered_200(server: BootstrapServer) -> None:
    assert put(server.port, 0, total=1) == 200
    began = time.monotonic()
    status, _, body = answer_of(send(server.port, long_poll(0.3, seen=server.generation)))
    took = time.monotonic() - began
    assert status == 200 and json.loads(body)["attn_tp_size"] == 1
    assert 0.25 < took < 2.0, took


def test_held_long_polls_hold_no_thread_each_and_are_all_answered_at_completion(half: BootstrapServer) -> None:
    before = threading.active_count()
    socks = []
    try:
        for _ in range(200):
            socks.append(send(half.port, long_poll(10)))
        until(lambda: half.parked == 200)
        until(lambda: threading.active_count() - before < 10)  # the handler threads have ended
        assert put(half.port, 1) == 200
        answers = [answer_of(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert [status for status, _, _ in answers] == [200] * 200
    assert all(json.loads(body)["attn_tp_size"] == 2 for _, _, body in answers)
    until(lambda: half.parked == 0)


def test_a_client_that_abandons_its_long_poll_is_dropped(half: BootstrapServer) -> None:
    sock = send(half.port, long_poll(30))
    until(lambda: half.parked == 1)
    # A reset: a FIN alone may be a half-close, whose client still reads (test_edges_cli_server.py).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    until(lambda: half.parked == 0)


def test_a_request_pipelined_behind_a_held_one_answers_the_held_one_now(half: BootstrapServer) -> None:
    sock = send(half.port, long_poll(30))
    until(lambda: half.parked == 1)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n")
    status, headers, body = answer_of(sock)
    assert (status, body, headers["Connection"]) == (503, NOT_YET, "close")
    until(lambda: half.parked == 0)


def test_held_long_polls_do_not_count_against_the_connection_cap(half: BootstrapServer,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    socks = [send(half.port, long_poll(10)) for _ in range(3)]
    try:
        until(lambda: half.parked == 3)
        monkeypatch.setattr(bootstrap_http._HTTPServer, "max_connections", 2)  # read at each accept
        # Until the fixture's connections have closed; counted, the 3 held would refuse it for ever.
        until(lambda: request(half.port, "GET", "/health")[0] == 200)
    finally:
        for sock in socks:
            sock.close()


def test_beyond_the_parked_cap_a_long_poll_is_answered_at_once(half: BootstrapServer, caplog: pytest.LogCaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bootstrap_http._HTTPServer, "max_parked", 1)
    sock = send(half.port, long_poll(10))
    try:
        until(lambda: half.parked == 1)
        began = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="coordinator.server"):
            for _ in range(2):
                assert request(half.port, "GET", long_poll(10))[:3:2] == (503, NOT_YET)
        assert time.monotonic() - began < 1.0
    finally:
        sock.close()
    warnings = [r for r in caplog.records if r.name == "coordinator.server" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1  # once per episode, not once per refusal


def test_closing_the_server_closes_held_long_polls_and_joins_every_thread() -> None:
    before = {t.ident for t in threading.enumerate()}
    server = BootstrapServer().start()
    assert put(server.port, 0) == 200
    socks = [send(server.port, long_poll(30)) for _ in range(5)]
    try:
        until(lambda: server.parked == 5)
        began = time.monotonic()
        server.close()
        for sock in socks:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            assert data == b""  # closed unanswered
        assert time.monotonic() - began < 1.0
    finally:
        for sock in socks:
            sock.close()
    assert server.parked == 0
    assert {t.ident for t in threading.enumerate()} - before == set()


def test_a_close_signalled_while_the_parking_thread_drains_its_wake_ups_is_not_lost() -> None:
    # The interleaving that once left close() waiting for the next deadline: the close is
    # signalled while the thread handles an earlier wake-up. Forced here: the thread's first
    # read of its wake-up socket first lets close() set its flag and send its byte.
    parking = Parking("test-parking", 8)
    real = parking._wake_r
    closer = threading.Thread(target=parking.close, daemon=True)
    signalled = threading.Event()

    class Interleaved:
        def recv(self, size: int) -> bytes:
            if not signalled.is_set():
                closer.start()
                until(lambda: parking._closing)
                with parking._lock:  # close() signals under it: its byte is sent now
                    pass
                signalled.set()
            return real.recv(size)

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    setattr(parking, "_wake_r", Interleaved())  # setattr: a stand-in of another type
    parking.wake()
    assert signalled.wait(WAIT_S)
    closer.join(timeout=WAIT_S)
    assert not closer.is_alive(), "close() waited past the wake-up it signalled"


# --- a real watcher against it ------------------------------------------------------------------------


class _Counting(HttpTransport):
    """An HttpTransport that counts its GETs."""

    gets = 0

    def get(self, url: str, timeout: float) -> Outcome:
        self.gets += 1
        return super().get(url, timeout)


def test_a_long_polling_watcher_makes_few_requests_and_sees_a_restart_at_once() -> None:
    first = BootstrapServer().start()
    port, target = first.port, (0, 0, 0, 0)
    transport = _Counting()
    watcher = Discovery(f"127.0.0.1:{port}", watch=True, hooks=(), transport=transport, targets=[target])

    def resolved(rank_port: int) -> bool:
        info = watcher.info
        return info is not None and info.ranks[target] == ("127.0.0.1", rank_port)

    try:
        assert put(port, 0, total=1) == 200
        watcher.start()
        until(lambda: resolved(17000))
        until(lambda: first.parked == 1)  # its check waits at the server
        before = transport.gets
        time.sleep(0.5)  # bounded: a watcher polling every second makes ~1 GET here, one spinning dozens
        assert transport.gets - before <= 2
        first.close()
        with BootstrapServer(port=port) as second:  # the prefill instance back, with new rank ports
            began = time.monotonic()
            assert put(second.port, 0, total=1, rank_port=17100) == 200
            until(lambda: resolved(17100))
            took = time.monotonic() - began
    finally:
        watcher.stop(WAIT_S)
        first.close()
        transport.close()
    # ~0.5 s: a check at the gone pace (0.25 s jittered by half), then one lookup round.
    assert took < 0.75, took
