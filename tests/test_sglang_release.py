"""SGLang 0.5.23's released code (from the wheel, see coordinator.testing._sglang_release) at work:
its plugin loader, its bootstrap server, and the registration/lookup loops of prefill and decode."""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Iterator

import pytest

from coordinator.testing import free_port
from coordinator.testing import _sglang_release as sr

pytest.importorskip("aiohttp", reason="aiohttp (SGLang's bootstrap server needs it) is not installed")
try:
    sr.wheel_source()
except sr.SglangReleaseUnavailable as e:
    pytest.skip(f"SGLang wheel not available: {e}", allow_module_level=True)

ROUTE_ALL = "/route?prefill_dp_rank=-1&prefill_cp_rank=-1&target_tp_rank=-1&target_pp_rank=-1"
PAYLOAD = {"attn_tp_size": 2, "attn_tp_rank": 0, "attn_cp_size": 1, "attn_cp_rank": 0, "attn_dp_size": 1,
           "attn_dp_rank": 0, "pp_size": 1, "pp_rank": 0, "system_dp_size": 1, "system_dp_rank": 0,
           "rank_ip": "127.0.0.1", "rank_port": 17000, "page_size": 1, "kv_cache_dtype": "auto"}
PLUGIN = '''
from sglang.srt.plugins.hook_registry import HookRegistry, HookType

SEEN = []

def _register_topology_row(self, url, payload):
    SEEN.append((url, payload))

def plugin():
    HookRegistry.register(
        "sglang.srt.disaggregation.common.conn.CommonKVManager._register_topology_row",
        _register_topology_row, HookType.REPLACE)
'''


@pytest.fixture
def framework(monkeypatch: pytest.MonkeyPatch) -> Iterator[sr.PluginFramework]:
    fw = sr.plugin_framework()
    fw.reset()
    # Only the test's plugin: this package's own entry point (prefill_startup) is installed
    # too, and is tested in test_sglang_plugin.py.
    monkeypatch.setenv("SGLANG_PLUGINS", "fakeplug")
    monkeypatch.delenv("SGLANG_PLATFORM", raising=False)
    yield fw
    fw.reset()
    sys.modules.pop("fakeplug_mod", None)


@pytest.fixture
def fakeplug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, conn: ModuleType) -> None:
    """An installed distribution 'fakeplug' with an entry point in group sglang.srt.plugins."""
    info = tmp_path / "fakeplug-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[sglang.srt.plugins]\nfakeplug = fakeplug_mod:plugin\n")
    (tmp_path / "fakeplug_mod.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    # Re-set to itself so that monkeypatch puts the original back after a hook replaced it.
    cls = conn.CommonKVManager
    monkeypatch.setattr(cls, "_register_topology_row", cls._register_topology_row)


@pytest.fixture
def server(conn: ModuleType) -> Iterator[Any]:
    with sr.bootstrap_server(conn) as running:
        yield running
    assert not running.thread.is_alive()


def call(server: Any, method: str, path: str, body: object = None) -> tuple[int, str]:
    c = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        data = None if body is None else json.dumps(body)
        c.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = c.getresponse()
        return response.status, response.read().decode()
    finally:
        c.close()


def register(server: Any, rank: int) -> tuple[int, str]:
    return call(server, "PUT", "/route", {**PAYLOAD, "attn_tp_rank": rank, "rank_port": 17000 + rank})


def test_load_plugins_runs_the_entry_point_and_applies_its_hook(
        framework: sr.PluginFramework, fakeplug: None, conn: ModuleType) -> None:
    original = conn.CommonKVManager._register_topology_row
    framework.load_plugins()
    target = "sglang.srt.disaggregation.common.conn.CommonKVManager._register_topology_row"
    assert target in framework.HookRegistry._patched
    [(_, _, source)] = framework.HookRegistry._hooks[target]
    assert (source.plugin_name, source.dist_name) == ("fakeplug", "fakeplug")
    assert conn.CommonKVManager._register_topology_row.__wrapped__ is original

    # The real register_to_bootstrap builds its payload and calls the replaced method.
    sr.make_kv_manager(conn, bootstrap_port=18998, attn_tp_size=2, attn_tp_rank=1).register_to_bootstrap()
    [(url, payload)] = sys.modules["fakeplug_mod"].SEEN
    assert url == "http://127.0.0.1:18998/route"
    assert set(payload) == set(PAYLOAD) | {
        "kv_layout", "dsv41_spec_layout", "load_balance_method", "enable_dsa_cache_layer_split",
        "enable_kv_cache_sharding", "prefill_http_port", "decode_allocation_policy"}
    assert (payload["attn_tp_size"], payload["attn_tp_rank"], payload["page_size"]) == (2, 1, 1)


def test_sglang_plugins_filters_entry_points_by_name(
        framework: sr.PluginFramework, fakeplug: None, conn: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGLANG_PLUGINS", "other")
    framework.load_plugins()
    assert "fakeplug_mod" not in sys.modules
    assert not hasattr(conn.CommonKVManager._register_topology_row, "__wrapped__")

    framework.reset()
    monkeypatch.setenv("SGLANG_PLUGINS", "other, fakeplug")
    framework.load_plugins()
    assert hasattr(conn.CommonKVManager._register_topology_row, "__wrapped__")


def test_bootstrap_server_route_and_health(server: Any, conn: ModuleType) -> None:
    assert call(server, "GET", "/health") == (200, "OK")
    assert call(server, "GET", ROUTE_ALL) == (503, "Prefill server not fully registered yet (0 workers registered).")
    assert register(server, 0) == (200, "OK")
    assert call(server, "GET", ROUTE_ALL) == (503, "Prefill server not fully registered yet (1 workers registered).")
    incomplete = {k: v for k, v in PAYLOAD.items() if k != "rank_port"}
    assert call(server, "PUT", "/route", incomplete)[0] == 500  # KeyError in the handler
    assert register(server, 1) == (200, "OK")

    status, text = call(server, "GET", ROUTE_ALL)
    assert status == 200
    info = json.loads(text)
    fields = {f.name for f in dataclasses.fields(conn.PrefillServerInfo)}
    assert set(info) == fields - {"kv_layout", "dsv41_spec_layout"}
    assert info["attn_tp_size"] == 2 and info["dp_size"] == 1 and info["follow_bootstrap_room"] is True
    assert info["prefill_http_port"] is None and info["decode_allocation_policy"] == "early"
    status, text = call(server, "GET", "/route?prefill_dp_rank=0&prefill_cp_rank=0&target_tp_rank=1&target_pp_rank=0")
    assert (status, json.loads(text)) == (200, {"rank_ip": "127.0.0.1", "rank_port": 17001})


def test_register_topology_row_gives_up_after_five_attempts(conn: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    manager = sr.make_kv_manager(conn)
    fake_time = sr.FakeTime()
    monkeypatch.setattr(conn, "time", fake_time)
    puts: list[str] = []
    real_requests = conn.requests

    def put(url: str, **kwargs: Any) -> Any:
        puts.append(url)
        return real_requests.put(url, **kwargs)

    monkeypatch.setattr(conn, "requests", SimpleNamespace(put=put))
    url = f"http://127.0.0.1:{free_port()}/route"  # nothing listens there
    with caplog.at_level(logging.WARNING, logger=conn.__name__):
        manager._register_topology_row(url, PAYLOAD)
    assert puts == [url] * 5
    sleeps = fake_time.clock.sleeps
    assert len(sleeps) == 4 and all(0.75 * 2**i <= s < 2**i for i, s in enumerate(sleeps))
    assert caplog.messages[-1] == "Prefill instance failed to register to bootstrap server after 5 retries"


def test_try_ensure_parallel_info_against_the_real_server(server: Any, conn: ModuleType) -> None:
    addr = f"{server.host}:{server.port}"
    same_tp = sr.make_kv_manager(conn, attn_tp_size=2, kv_args=sr.make_kv_args(conn, engine_rank=1))
    smaller_tp = sr.make_kv_manager(conn)
    assert same_tp.try_ensure_parallel_info(addr) is False
    register(server, 0)
    assert same_tp.try_ensure_parallel_info(addr) is False
    assert same_tp.prefill_info_table == {}
    register(server, 1)
    assert same_tp.try_ensure_parallel_info(addr) is True
    info = same_tp.prefill_info_table[addr]
    assert isinstance(info, conn.PrefillServerInfo)
    assert (info.target_tp_rank, info.target_tp_ranks, info.target_cp_ranks, info.target_pp_ranks,
            info.required_dst_info_num, info.required_prefill_response_num) == (1, [1], [0], [0], 1, 1)
    assert smaller_tp.try_ensure_parallel_info(addr) is True  # decode TP 1 pulls from both prefill ranks
    info = smaller_tp.prefill_info_table[addr]
    assert (info.target_tp_ranks, info.required_prefill_response_num) == ([0, 1], 2)
    with pytest.raises(RuntimeError, match="Page size mismatch"):
        sr.make_kv_manager(conn, kv_args=sr.make_kv_args(conn, page_size=64)).try_ensure_parallel_info(addr)


def test_ensure_prefill_info_aborts_after_15_failed_cycles(
        server: Any, conn: ModuleType, decode: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_time = sr.FakeTime()
    monkeypatch.setattr(decode, "time", fake_time)
    addr = f"{server.host}:{server.port}"  # nothing registered: every lookup is a 503
    queue = sr.make_prealloc_queue(decode, sr.make_kv_manager(conn, attn_tp_size=2))
    aborted: list[object] = []
    receiver = SimpleNamespace(abort=lambda: aborted.append("abort"))
    reqs = [SimpleNamespace(kv_receiver=receiver), SimpleNamespace(kv_receiver=None)]
    for cycle in range(1, 15):
        fake_time.clock.advance(1.0)
        assert queue._ensure_prefill_info({addr: reqs}) == ({}, reqs)
        assert queue._ensure_prefill_info({addr: reqs}) == ({}, reqs)  # same instant: no new attempt
        assert queue._ensure_retry_count == {addr: cycle}
    fake_time.clock.advance(1.0)
    assert queue._ensure_prefill_info({addr: reqs}) == ({}, [])
    assert aborted == ["abort"]
    assert queue._ensure_retry_count == {} and queue._ensure_last_attempt_time == {}

    register(server, 0)
    register(server, 1)
    assert queue._ensure_prefill_info({addr: reqs}) == ({addr: reqs}, [])
