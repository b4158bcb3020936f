"""BootstrapServer against SGLang's /route protocol, over real loopback HTTP."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
from typing import Any, Iterator

import pytest
import requests

from coordinator.protocol import PayloadError, validate_payload
from coordinator.server import MAX_BODY_BYTES, BootstrapServer
from coordinator.testing import example_payload
from coordinator.testing.faultserver import ipv6_available

TOKEN = "s3cret-t0ken"
TOPOLOGY_QUERY = (-1, -1, -1, -1)


@pytest.fixture
def server() -> Iterator[BootstrapServer]:
    srv = BootstrapServer().start()
    yield srv
    srv.close()
    assert server_threads() == []


@pytest.fixture
def auth_server() -> Iterator[BootstrapServer]:
    srv = BootstrapServer(token=TOKEN).start()
    yield srv
    srv.close()
    assert server_threads() == []


def put(srv: BootstrapServer, payload: Any, **kwargs: Any) -> requests.Response:
    # Exactly how SGLang's prefill scheduler registers.
    return requests.put(srv.url, json=payload, timeout=5, **kwargs)


def get_route(srv: BootstrapServer, dp: int, cp: int, tp: int, pp: int) -> requests.Response:
    params = {"prefill_dp_rank": dp, "prefill_cp_rank": cp, "target_tp_rank": tp, "target_pp_rank": pp}
    return requests.get(srv.url, params=params, timeout=5)


def raw(
    srv: BootstrapServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly the headers given: no Content-Length unless listed."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def payload_error(payload: Any) -> str:
    with pytest.raises(PayloadError) as info:
        validate_payload(payload)
    return str(info.value)


def server_threads() -> list[threading.Thread]:
    # The serving thread is "bootstrap-server", connection threads "bootstrap-server-conn".
    return [t for t in threading.enumerate() if t.name.startswith("bootstrap-server")]


# --- PUT /route ---------------------------------------------------------------------------


def test_put_registers_rank(server: BootstrapServer) -> None:
    resp = put(server, example_payload(0))
    assert (resp.status_code, resp.text) == (200, "OK")
    assert resp.headers["Content-Length"] == "2"
    assert server.ranks() == {(0, 0, 0, 0): {"rank_ip": "127.0.0.1", "rank_port": 17000}}
    assert (server.registered_count, server.expected_count, server.put_count) == (1, 1, 1)
    assert server.is_ready


def test_repeated_put_overwrites_rank(server: BootstrapServer) -> None:
    assert put(server, example_payload(0)).status_code == 200
    assert put(server, example_payload(0, rank_port=18000)).status_code == 200
    assert server.ranks() == {(0, 0, 0, 0): {"rank_ip": "127.0.0.1", "rank_port": 18000}}
    assert get_route(server, 0, 0, 0, 0).json() == {"rank_ip": "127.0.0.1", "rank_port": 18000}


def test_missing_field_is_400_naming_it(server: BootstrapServer) -> None:
    payload = example_payload(0)
    del payload["rank_port"]
    resp = put(server, payload)
    assert (resp.status_code, resp.text) == (400, payload_error(payload))
    assert "'rank_port'" in resp.text
    assert server.registered_count == 0 and server.expected_count is None


def test_mistyped_field_is_400_naming_it(server: BootstrapServer) -> None:
    payload = {**example_payload(0), "attn_tp_rank": "0"}
    resp = put(server, payload)
    assert (resp.status_code, resp.text) == (400, payload_error(payload))
    assert "'attn_tp_rank'" in resp.text


def test_rank_out_of_range_is_400(server: BootstrapServer) -> None:
    payload = example_payload(2, tp_size=2)
    resp = put(server, payload)
    assert (resp.status_code, resp.text) == (400, payload_error(payload))
    assert "'attn_tp_rank'" in resp.text


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe{", b"[" * 50_000])
def test_bad_json_is_400(server: BootstrapServer, body: bytes) -> None:
    status, _, text = raw(server, "PUT", "/route", body, {"Content-Length": str(len(body))})
    assert status == 400
    assert text.startswith(b"body is not valid JSON")
    assert server.put_count == 0


def test_json_not_an_object_is_400(server: BootstrapServer) -> None:
    status, _, text = raw(server, "PUT", "/route", b"[1]", {"Content-Length": "3"})
    assert (status, text.decode()) == (400, payload_error([1]))
    assert "must be a JSON object" in text.decode()


def test_missing_content_length_is_411(server: BootstrapServer) -> None:
    status, headers, text = raw(server, "PUT", "/route")
    assert (status, text) == (411, b"Content-Length is required")
    assert headers["Content-Length"] == str(len(text))


def test_bad_content_length_is_400(server: BootstrapServer) -> None:
    status, _, text = raw(server, "PUT", "/route", b"{}", {"Content-Length": "-2"})
    assert (status, text) == (400, b"Content-Length is not a non-negative integer")


@pytest.mark.parametrize("length", [str(MAX_BODY_BYTES + 1), "9" * 5000])
def test_oversized_body_is_413_without_reading_it(server: BootstrapServer, length: str) -> None:
    # Headers only: a server that waited for the announced body would time this client out.
    headers = {"Content-Length": length}
    status, headers_out, text = raw(server, "PUT", "/route", None, headers)
    assert (status, text) == (413, f"body exceeds {MAX_BODY_BYTES} bytes".encode())
    assert headers_out["Connection"] == "close"


def test_body_at_the_limit_is_accepted(server: BootstrapServer) -> None:
    body = json.dumps(example_payload(0)).encode()
    body += b" " * (MAX_BODY_BYTES - len(body))
    status, _, text = raw(server, "PUT", "/route", body, {"Content-Length": str(len(body))})
    assert (status, text) == (200, b"OK")


def test_dsv41_spec_layout_mismatch_is_400(server: BootstrapServer) -> None:
    assert put(server, {**example_payload(0, tp_size=2), "dsv41_spec_layout": {"block": 1}}).status_code == 200
    for layout in ({"block": 2}, None):
        payload = {**example_payload(1, tp_size=2), "dsv41_spec_layout": layout}
        resp = put(server, payload)
        assert resp.status_code == 400
        assert resp.text.startswith("DeepSeek-V4.1 DSpark PD layout differs across prefill ranks: "
                                    "payload field 'dsv41_spec_layout'")
    assert server.registered_count == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"attn_tp_size": 4}, "attn_tp_size"),
        ({"attn_cp_size": 2}, "attn_cp_size"),
        ({"pp_size": 2}, "pp_size"),
        ({"attn_dp_size": 2}, "attn_dp_size"),
        ({"system_dp_size": 2}, "system_dp_size"),
    ],
)
def test_topology_size_conflict_is_409_naming_field(
    server: BootstrapServer, change: dict[str, int], field: str
) -> None:
    assert put(server, example_payload(0, tp_size=2)).status_code == 200
    resp = put(server, {**example_payload(1, tp_size=2), **change})
    first = example_payload(0, tp_size=2)[field]
    expected = f"payload field {field!r}: {change[field]} conflicts with {first} of the first registration"
    assert (resp.status_code, resp.text) == (409, expected)
    assert (server.registered_count, server.put_count, server.expected_count) == (1, 1, 2)


def test_attn_dp_size_may_differ_when_system_dp_sizes_the_table(server: BootstrapServer) -> None:
    base = {**example_payload(0), "system_dp_size": 2}
    assert put(server, {**base, "system_dp_rank": 0}).status_code == 200
    resp = put(server, {**base, "system_dp_rank": 1, "attn_dp_size": 2, "attn_dp_rank": 1})
    assert (resp.status_code, resp.text) == (200, "OK")


def test_retried_put_does_not_make_topology_ready_early(server: BootstrapServer) -> None:
    # Upstream counts PUTs: two PUTs of rank 0 would make a tp=2 instance "ready".
    assert put(server, example_payload(0, tp_size=2)).status_code == 200
    assert put(server, example_payload(0, tp_size=2)).status_code == 200
    resp = get_route(server, *TOPOLOGY_QUERY)
    assert (resp.status_code, resp.text) == (
        503, "Prefill server not fully registered yet (1 of 2 workers registered).")
    assert (server.put_count, server.registered_count, server.is_ready) == (2, 1, False)

    assert put(server, example_payload(1, tp_size=2)).status_code == 200
    resp = get_route(server, *TOPOLOGY_QUERY)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {
        "attn_tp_size": 2,
        "attn_cp_size": 1,
        "dp_size": 1,
        "pp_size": 1,
        "page_size": 1,
        "kv_cache_dtype": "auto",
        "follow_bootstrap_room": True,
        "enable_dsa_cache_layer_split": False,
        "decode_allocation_policy": "early",
        "enable_kv_cache_sharding": False,
        "prefill_http_port": None,
        # SGLang's answer is asdict(PrefillServerInfo): the decode side's rank mapping, null here.
        "target_tp_rank": None,
        "target_tp_ranks": None,
        "target_cp_ranks": None,
        "target_pp_ranks": None,
        "required_dst_info_num": None,
        "required_prefill_response_num": None,
    }
    assert (server.put_count, server.registered_count, server.is_ready) == (3, 2, True)


def test_topology_takes_optional_fields_from_first_put(server: BootstrapServer) -> None:
    first = {
        **example_payload(0),
        "load_balance_method": "round_robin",
        "enable_dsa_cache_layer_split": True,
        "prefill_http_port": 30000,
        "page_size": 64,
        "kv_cache_dtype": "fp8_e5m2",
    }
    assert put(server, first).status_code == 200
    topology = get_route(server, *TOPOLOGY_QUERY).json()
    assert topology["follow_bootstrap_room"] is False
    assert topology["enable_dsa_cache_layer_split"] is True
    assert (topology["prefill_http_port"], topology["page_size"]) == (30000, 64)
    assert topology["kv_cache_dtype"] == "fp8_e5m2"


def test_dp_group_is_system_dp_rank_when_system_dp_size_above_one(server: BootstrapServer) -> None:
    payload = {**example_payload(0), "system_dp_size": 2, "system_dp_rank": 1}
    assert put(server, payload).status_code == 200
    assert list(server.ranks()) == [(1, 0, 0, 0)]
    assert server.expected_count == 2
    assert get_route(server, 1, 0, 0, 0).status_code == 503  # as SGLang: nothing until complete
    assert put(server, {**payload, "system_dp_rank": 0, "rank_port": 17001}).status_code == 200
    assert get_route(server, 1, 0, 0, 0).json() == {"rank_ip": "127.0.0.1", "rank_port": 17000}
    assert get_route(server, 0, 0, 0, 0).json() == {"rank_ip": "127.0.0.1", "rank_port": 17001}


def test_dp_group_is_attn_dp_rank_when_system_dp_size_is_one(server: BootstrapServer) -> None:
    payload = {**example_payload(0), "attn_dp_size": 2, "attn_dp_rank": 1}
    assert put(server, payload).status_code == 200
    assert list(server.ranks()) == [(1, 0, 0, 0)]
    assert server.expected_count == 2


# --- GET /route, /health, methods, paths ----------------------------------------------------


def test_topology_is_503_before_any_put(server: BootstrapServer) -> None:
    resp = get_route(server, *TOPOLOGY_QUERY)
    assert resp.status_code == 503
    assert resp.text == "Prefill server not fully registered yet (0 workers registered)."


def test_specific_rank_503_until_complete_then_200_and_404(server: BootstrapServer) -> None:
    assert put(server, example_payload(1, tp_size=2)).status_code == 200
    assert get_route(server, 0, 0, 1, 0).status_code == 503  # as SGLang: every GET until complete
    assert put(server, example_payload(0, tp_size=2)).status_code == 200
    resp = get_route(server, 0, 0, 1, 0)
    assert resp.status_code == 200
    assert resp.json() == {"rank_ip": "127.0.0.1", "rank_port": 17001}
    for rank in ((0, 0, 5, 0), (-1, 0, 1, 0)):
        resp = get_route(server, *rank)
        assert resp.status_code == 404
        assert resp.text == (f"Bootstrap info not found for dp_rank={rank[0]} cp_rank={rank[1]} "
                             f"tp_rank={rank[2]} pp_rank={rank[3]}")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("prefill_cp_rank=0&target_tp_rank=0&target_pp_rank=0", "'prefill_dp_rank' is required"),
        ("prefill_dp_rank=0&target_tp_rank=0&target_pp_rank=0", "'prefill_cp_rank' is required"),
        ("prefill_dp_rank=0&prefill_cp_rank=0&target_pp_rank=", "'target_tp_rank' is required"),
        ("prefill_dp_rank=0&prefill_cp_rank=0&target_tp_rank=0", "'target_pp_rank' is required"),
        (
            "prefill_dp_rank=0&prefill_cp_rank=x&target_tp_rank=0&target_pp_rank=0",
            "'prefill_cp_rank' must be an integer in ASCII digits, got 'x'",
        ),
        (
            "prefill_dp_rank=0&prefill_cp_rank=0&target_tp_rank=1.0&target_pp_rank=0",
            "'target_tp_rank' must be an integer in ASCII digits, got '1.0'",
        ),
    ],
)
def test_bad_query_is_400_naming_parameter(server: BootstrapServer, query: str, expected: str) -> None:
    status, _, text = raw(server, "GET", f"/route?{query}")
    assert (status, text.decode()) == (400, f"query parameter {expected}")


def test_health(server: BootstrapServer) -> None:
    resp = requests.get(f"{server.base_url}/health", timeout=5)
    assert (resp.status_code, resp.text) == (200, "OK")


@pytest.mark.parametrize("method", ["POST", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_on_route_are_405(server: BootstrapServer, method: str) -> None:
    resp = requests.request(method, server.url, timeout=5)
    assert (resp.status_code, resp.text) == (405, "method not allowed")
    assert resp.headers["Allow"] == "GET, PUT"


def test_head_route_is_405_without_body(server: BootstrapServer) -> None:
    status, headers, text = raw(server, "HEAD", "/route")
    assert (status, headers["Allow"], text) == (405, "GET, PUT", b"")


def test_put_health_is_405(server: BootstrapServer) -> None:
    resp = requests.put(f"{server.base_url}/health", timeout=5)
    assert resp.status_code == 405 and resp.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(("method", "path"), [("GET", "/"), ("GET", "/route/"), ("PUT", "/routes")])
def test_unknown_path_is_404(server: BootstrapServer, method: str, path: str) -> None:
    resp = requests.request(method, server.base_url + path, timeout=5)
    assert (resp.status_code, resp.text) == (404, "not found")


def test_connection_is_kept_alive(server: BootstrapServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        for payload in (example_payload(0, tp_size=2), example_payload(1, tp_size=2)):
            conn.request("PUT", "/route", json.dumps(payload).encode())
            resp = conn.getresponse()
            assert (resp.status, resp.read(), resp.getheader("Connection")) == (200, b"OK", None)
        conn.request("GET", "/health")
        assert conn.getresponse().read() == b"OK"
    finally:
        conn.close()
    assert server.registered_count == 2


def test_no_stderr_access_log(server: BootstrapServer, capsys: pytest.CaptureFixture[str]) -> None:
    requests.get(f"{server.base_url}/health", timeout=5)
    requests.get(f"{server.base_url}/nowhere", timeout=5)
    assert capsys.readouterr().err == ""


# --- token ----------------------------------------------------------------------------------


def test_token_missing_is_401(auth_server: BootstrapServer) -> None:
    resp = put(auth_server, example_payload(0))
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert TOKEN not in resp.text
    assert auth_server.put_count == 0


@pytest.mark.parametrize(
    "header", [f"Bearer {TOKEN}x", f"bearer {TOKEN}", TOKEN, f"Basic {TOKEN}", "Bearer "]
)
def test_token_wrong_is_401(auth_server: BootstrapServer, header: str) -> None:
    resp = put(auth_server, example_payload(0), headers={"Authorization": header})
    assert resp.status_code == 401
    assert auth_server.put_count == 0


def test_token_checked_before_body(auth_server: BootstrapServer) -> None:
    status, _, _ = raw(auth_server, "PUT", "/route", b"{bad", {"Content-Length": "4"})
    assert status == 401
    status, _, _ = raw(auth_server, "PUT", "/route", None, {"Content-Length": str(10 * MAX_BODY_BYTES)})
    assert status == 401


def test_token_right_is_200(auth_server: BootstrapServer) -> None:
    resp = put(auth_server, example_payload(0), headers={"Authorization": f"Bearer {TOKEN}"})
    assert (resp.status_code, resp.text) == (200, "OK")
    # Decode instances send no token upstream: GETs stay open.
    assert get_route(auth_server, *TOPOLOGY_QUERY).status_code == 200
    assert get_route(auth_server, 0, 0, 0, 0).status_code == 200
    assert requests.get(f"{auth_server.base_url}/health", timeout=5).status_code == 200


def test_token_never_in_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="coordinator.bootstrap_server")
    with BootstrapServer(token=TOKEN) as srv:
        assert TOKEN not in repr(srv) and TOKEN not in str(srv)
        put(srv, example_payload(0), headers={"Authorization": f"Bearer {TOKEN}"})
        put(srv, example_payload(0), headers={"Authorization": "Bearer wrong"})
    assert caplog.records  # requests are logged at DEBUG ...
    assert TOKEN not in caplog.text  # ... without the token


# --- constructor, lifecycle, IPv6 -------------------------------------------------------


@pytest.mark.parametrize("port", [-1, 65536, True, "8998", 1.5])
def test_bad_port_rejected(port: Any) -> None:
    with pytest.raises(ValueError, match="port"):
        BootstrapServer(port=port)


@pytest.mark.parametrize("token", ["", 123, b"tok"])
def test_bad_token_rejected(token: Any) -> None:
    with pytest.raises(ValueError, match="token"):
        BootstrapServer(token=token)


def test_urls(server: BootstrapServer) -> None:
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}/route"
    assert server.base_url == f"http://127.0.0.1:{server.port}"


def test_url_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        BootstrapServer().url


def test_close_stops_everything_and_is_idempotent() -> None:
    srv = BootstrapServer().start()
    assert [t.name for t in threading.enumerate()].count("bootstrap-server") == 1
    # An idle keep-alive connection must not hold close() up or leave a handler thread.
    idle = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        idle.request("GET", "/health")
        assert idle.getresponse().read() == b"OK"
        srv.close()
        srv.close()
    finally:
        idle.close()
    assert server_threads() == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()
    with pytest.raises(RuntimeError):
        srv.start()


def test_context_manager() -> None:
    with BootstrapServer() as srv:
        assert "running" in repr(srv)
        assert requests.get(f"{srv.base_url}/health", timeout=5).text == "OK"
    assert "closed" in repr(srv)
    assert server_threads() == []


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback on this machine")
def test_ipv6_loopback() -> None:
    with BootstrapServer(host="::1") as srv:
        assert srv.url == f"http://[::1]:{srv.port}/route"
        resp = put(srv, example_payload(0))
        assert (resp.status_code, resp.text) == (200, "OK")
        assert get_route(srv, 0, 0, 0, 0).json() == {"rank_ip": "127.0.0.1", "rank_port": 17000}
