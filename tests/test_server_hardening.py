"""The bootstrap server (and the probe server, on the same base) under bad input (issue 15):
bounded payload values, rank_ip an address, one Content-Length, HEAD like GET where
upstream allows it, a request's total time bounded, and a bounded number of connections."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import pytest

from coordinator import BootstrapServer, FakeClock, PayloadError, Registration, health
from coordinator.health import _server as health_server
from coordinator.protocol import AnswerError, parse_rank, validate_payload
from coordinator.server import _http as bootstrap_http
from coordinator.server._base import Server
from coordinator.testing import ScriptedTransport, example_payload
from coordinator.testing import http_request as request

TOPOLOGY_PATH = "/route?prefill_dp_rank=-1&prefill_cp_rank=-1&target_tp_rank=-1&target_pp_rank=-1"
WAIT_S = 5.0  # the most any wait on a real loopback server here may take


def put(port: int, payload: Any) -> tuple[int, str]:
    status, _, body = request(port, "PUT", "/route", json.dumps(payload).encode(),
                              {"Content-Type": "application/json"})
    return status, body.decode()


@pytest.fixture
def server() -> Iterator[BootstrapServer]:
    with BootstrapServer() as srv:
        yield srv


# --- payload values: bounded, and rank_ip an address -----------------------------------------

HUGE = 10**2999


@pytest.mark.parametrize("field,value", [
    ("attn_tp_size", HUGE), ("attn_cp_size", 10**2000), ("pp_size", 65_537), ("system_dp_size", 2**63),
    ("attn_dp_size", 65_537), ("attn_tp_rank", HUGE), ("page_size", 1_048_577), ("page_size", HUGE),
    ("rank_port", 0), ("rank_port", 65_536), ("prefill_http_port", 65_536),
], ids=lambda v: v if isinstance(v, str) else str(v)[:12])
def test_out_of_range_value_is_400_naming_it_and_the_server_still_answers(
        server: BootstrapServer, field: str, value: int) -> None:
    status, text = put(server.port, {**example_payload(), field: value})
    assert status == 400 and text.startswith(f"payload field {field!r}: ")
    assert len(text) < 300  # the value is not echoed whole
    status, _, body = request(server.port, "GET", TOPOLOGY_PATH)
    assert (status, body) == (503, b"Prefill server not fully registered yet (0 workers registered).")


def test_largest_sizes_and_page_are_accepted() -> None:
    top = {**example_payload(), "attn_tp_size": 65_536, "attn_tp_rank": 65_535, "page_size": 1_048_576}
    assert validate_payload(top) == top


@pytest.mark.parametrize("rank_ip", ["not an ip", "10.0.0.1\x00", "10.0.0.1\r\nX-Evil: 1", "a" * 50_000,
                                     "", "10.0.0.1:17000", "http://10.0.0.1", 17, None], ids=lambda v: repr(v)[:20])
def test_rank_ip_not_an_address_is_400_naming_it(server: BootstrapServer, rank_ip: object) -> None:
    status, text = put(server.port, {**example_payload(), "rank_ip": rank_ip})
    assert status == 400 and text.startswith("payload field 'rank_ip': ")
    assert len(text) < 300
    assert server.registered_count == 0


@pytest.mark.parametrize("rank_ip", ["10.0.0.1", "::1", "fe80::1", "node-7.cluster.local", "gpu17"])
def test_rank_ip_an_address_or_a_host_name_is_accepted(server: BootstrapServer, rank_ip: str) -> None:
    assert put(server.port, {**example_payload(), "rank_ip": rank_ip}) == (200, "OK")
    status, _, body = request(server.port, "GET", "/route?prefill_dp_rank=0&prefill_cp_rank=0"
                                                  "&target_tp_rank=0&target_pp_rank=0")
    assert (status, json.loads(body)) == (200, {"rank_ip": rank_ip, "rank_port": 17000})
    assert parse_rank(body.decode()) == (rank_ip, 17000)


def test_bad_payload_fails_in_the_client_before_any_network_call() -> None:
    for field, value in (("attn_cp_size", 10**2000), ("rank_ip", "not an ip"), ("page_size", 1_048_577)):
        with pytest.raises(PayloadError) as info:
            Registration("http://h:1/route", {**example_payload(), field: value}, transport=ScriptedTransport([]),
                         clock=FakeClock())
        assert info.value.field == field


@pytest.mark.parametrize("rank_ip", ["not an ip", "10.0.0.1\r\n", "a" * 50_000, ""], ids=lambda v: repr(v)[:20])
def test_a_rank_answer_with_a_bad_rank_ip_is_an_answer_error(rank_ip: str) -> None:
    with pytest.raises(AnswerError) as info:
        parse_rank(json.dumps({"rank_ip": rank_ip, "rank_port": 17000}))
    assert info.value.field == "rank_ip" and len(str(info.value)) < 300


# --- one Content-Length, on both servers -------------------------------------------------------


def probe_server() -> Any:
    reg = Registration("http://127.0.0.1:1/route", example_payload(), transport=ScriptedTransport([]),
                       clock=FakeClock(), hooks=())
    return health.serve(reg)


SERVERS: dict[str, tuple[Callable[[], Any], type[Server], str]] = {
    "bootstrap": (lambda: BootstrapServer().start(), bootstrap_http._HTTPServer, "/health"),
    "probes": (probe_server, health_server._Server, "/livez"),
}


@pytest.fixture(params=sorted(SERVERS))
def any_server(request: pytest.FixtureRequest,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str, type[Server]]]:
    start, cls, path = SERVERS[request.param]
    monkeypatch.setattr(cls, "request_timeout", 0.5)
    srv = start()
    try:
        yield srv, path, cls
    finally:
        srv.close()


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, read until the server closes (or WAIT_S passes)."""
    with closing(socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_duplicate_content_length_is_400_and_closes(any_server: tuple[Any, str, type[Server]]) -> None:
    srv, path, _ = any_server
    # With the first one believed, "GET /x" would be read as a second request on the connection.
    smuggled = (f"PUT {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 16\r\n\r\n"
                "GET /x HTTP/1.1\r\n").encode()
    answer = raw_exchange(srv.port, smuggled)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.count(b"HTTP/1.1") == 1 and b"\r\nConnection: close\r\n" in answer
    assert answer.endswith(b"duplicate Content-Length header")


def test_duplicate_content_length_put_route_is_400(server: BootstrapServer) -> None:
    body = json.dumps(example_payload()).encode()
    n = str(len(body)).encode()
    answer = raw_exchange(server.port, b"PUT /route HTTP/1.1\r\nHost: h\r\nContent-Length: " + n
                          + b"\r\nContent-Length: " + n + b"\r\n\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 400 ") and server.put_count == 0


# --- HEAD -----------------------------------------------------------------------------------------


def test_head_health_is_get_without_a_body(server: BootstrapServer) -> None:
    status, headers, body = request(server.port, "HEAD", "/health")
    assert (status, headers["Content-Length"], body) == (200, "2", b"")


def test_head_route_stays_405_as_upstream(server: BootstrapServer) -> None:
    # SGLang's /route is an aiohttp "*" route whose handler 405s every method but GET and PUT.
    status, headers, body = request(server.port, "HEAD", TOPOLOGY_PATH)
    assert (status, headers["Allow"], body) == (405, "GET, PUT", b"")


def test_other_methods_on_health_are_405_allowing_get_and_head(server: BootstrapServer) -> None:
    status, headers, _ = request(server.port, "POST", "/health", b"")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")


# --- a request's total time ---------------------------------------------------------------------


def dribble(sock: socket.socket, data: bytes, every_s: float) -> tuple[float, bytes]:
    """Send ``data`` a byte every ``every_s``; return how long until the server closed the
    connection, and what it sent (b"" when it closed without answering). At most WAIT_S."""
    began = time.monotonic()
    sock.settimeout(every_s)
    for i in range(len(data)):
        if time.monotonic() - began > WAIT_S:
            break
        try:
            sock.sendall(data[i:i + 1])
            return time.monotonic() - began, sock.recv(65536)
        except TimeoutError:
            continue  # still open: the next byte
        except OSError:  # reset: closed
            return time.monotonic() - began, b""
    raise AssertionError(f"the server still reads after {time.monotonic() - began:.1f} s")


def test_a_request_dribbled_byte_by_byte_is_cut_off_by_the_total_bound(
        any_server: tuple[Any, str, type[Server]]) -> None:
    srv, path, _ = any_server
    data = f"GET {path} HTTP/1.1\r\nHost: h\r\nX-Filler: {'a' * 200}\r\n\r\n".encode()  # 11 s of bytes
    with closing(socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT_S)) as sock:
        took, got = dribble(sock, data, every_s=0.05)
    assert got == b"" and 0.4 < took < 2.5, (took, got)


def test_a_body_dribbled_byte_by_byte_is_cut_off_by_the_total_bound(server: BootstrapServer,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bootstrap_http._HTTPServer, "request_timeout", 0.5)  # read at each connection
    with closing(socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)) as sock:
        sock.sendall(b"PUT /route HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n")
        took, got = dribble(sock, b"x" * 1000, every_s=0.05)
    assert got == b"" and 0.4 < took < 2.5, (took, got)
    assert server.put_count == 0


def test_the_bound_is_per_request_on_a_kept_alive_connection(any_server: tuple[Any, str, type[Server]]) -> None:
    srv, path, _ = any_server
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=WAIT_S)
    try:
        began = time.monotonic()
        while time.monotonic() - began < 1.2:  # well past the 0.5 s bound, over several requests
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
            time.sleep(0.1)
    finally:
        conn.close()


def test_an_idle_connection_is_bounded_by_the_idle_timeout_not_the_request_bound(
        any_server: tuple[Any, str, type[Server]]) -> None:
    srv, path, _ = any_server
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=WAIT_S)
    try:
        conn.connect()
        time.sleep(0.8)  # longer than the request bound, with no request begun
        conn.request("GET", path)
        assert conn.getresponse().status == 200
    finally:
        conn.close()


# --- the number of connections -------------------------------------------------------------------


def status_or_zero(port: int, path: str) -> int:
    try:
        return request(port, "GET", path)[0]
    except OSError:  # a refusal whose socket could not linger: closed, maybe reset
        return 0


def test_connections_beyond_the_cap_get_503_and_close(any_server: tuple[Any, str, type[Server]],
                                                      caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    srv, path, cls = any_server
    monkeypatch.setattr(cls, "max_connections", 2)  # read at each accept
    held = [http.client.HTTPConnection("127.0.0.1", srv.port, timeout=WAIT_S) for _ in range(2)]
    try:
        for conn in held:  # served, then kept alive: each holds a slot
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
        with caplog.at_level(logging.WARNING, logger="coordinator.server"):
            for method, content in (("GET", None), ("PUT", b"x" * 3000)):  # a body, sent after the 503
                status, headers, body = request(srv.port, method, path, content)
                assert (status, headers["Connection"], headers["Retry-After"]) == (503, "close", "1")
                assert body == b"too many connections, retry later"
        warnings = [r for r in caplog.records if r.name == "coordinator.server" and r.levelno >= logging.WARNING]
        assert len(warnings) == 1  # once per episode, not once per refusal
        held.pop().close()
        deadline = time.monotonic() + WAIT_S
        while (status := status_or_zero(srv.port, path)) != 200 and time.monotonic() < deadline:
            time.sleep(0.02)  # the server frees the slot once it has seen the close
        assert status == 200
    finally:
        for conn in held:
            conn.close()
