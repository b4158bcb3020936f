"""The plugin inside SGLang 0.5.23's released code: its real plugin loader finds our entry
point through importlib.metadata, its real HookRegistry applies our hooks to the real
bodies of the methods we hook, against its real bootstrap server.

Real (from the wheel, see coordinator.testing._sglang_release): load_plugins, HookRegistry,
CommonKVBootstrapServer, register_to_bootstrap, _register_topology_row,
try_ensure_parallel_info (with its sanity checks and PrefillServerInfo), _ensure_prefill_info,
_handle_node_failure. Stood in: the heavy imports of conn.py/decode.py (STAND_INS there) and
the managers' __init__ (their attributes from make_kv_manager / make_prealloc_queue); the
decode scheduler loop is a loop in the test calling the real, hooked method.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import requests

from coordinator import FakeClock, RegistrationFailed
from coordinator.sglang import _install
from coordinator.sglang import _targets as targets
from coordinator.testing import FaultServer, free_port
from coordinator.testing import _sglang_release as sr
from coordinator.testing.faultserver import hang

pytest.importorskip("aiohttp", reason="aiohttp (SGLang's bootstrap server needs it) is not installed")
try:
    sr.wheel_source()
except sr.SglangReleaseUnavailable as e:
    pytest.skip(f"SGLang wheel not available: {e}", allow_module_level=True)

HOOKED = (targets.REGISTER_ROW, targets.TRY_ENSURE, targets.ENSURE_INFO, targets.HANDLE_FAILURE)


@pytest.fixture
def sglang(conn: ModuleType, decode: ModuleType, monkeypatch: pytest.MonkeyPatch,
           tmp_path: Path) -> Iterator[sr.PluginFramework]:
    """SGLang's real plugin framework, reset; whatever the hooks patch is put back after."""
    fw = sr.plugin_framework()
    fw.reset()
    for env in ("SGLANG_PLUGINS", "SGLANG_PLATFORM"):
        monkeypatch.delenv(env, raising=False)
    for var in ("DEADLINE", "ATTEMPT_TIMEOUT", "MAX_ATTEMPTS", "ON_FAILURE", "WATCH"):
        monkeypatch.delenv(f"PREFILL_STARTUP_{var}", raising=False)
    monkeypatch.setenv("PREFILL_STARTUP_STATE_DIR", str(tmp_path / "state"))
    for target in HOOKED:
        owner, name = target.rsplit(".", 1)
        cls = conn.CommonKVManager if owner.endswith("CommonKVManager") else decode.DecodePreallocQueue
        monkeypatch.setattr(cls, name, getattr(cls, name))  # monkeypatch restores it after the hook
    monkeypatch.setattr(conn, "requests", conn.requests)
    yield fw
    _install.shutdown()  # the Discoveries the hooks started
    fw.reset()


def hooked(fw: sr.PluginFramework) -> set[str]:
    return {t for t, hooks in fw.HookRegistry._hooks.items() if any(s and s.plugin_name == "prefill_startup"
                                                                   for _, _, s in hooks)}


def test_load_plugins_finds_the_entry_point_and_hooks_every_target(sglang: sr.PluginFramework,
                                                                   conn: ModuleType) -> None:
    original = conn.CommonKVManager._register_topology_row
    sglang.load_plugins()
    assert hooked(sglang) == set(HOOKED)
    assert set(HOOKED) <= sglang.HookRegistry._patched
    assert conn.CommonKVManager._register_topology_row.__wrapped__ is original


def test_sglang_plugins_naming_another_plugin_turns_it_off(sglang: sr.PluginFramework, conn: ModuleType,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGLANG_PLUGINS", "something_else")
    sglang.load_plugins()
    assert hooked(sglang) == set()
    assert not hasattr(conn.CommonKVManager._register_topology_row, "__wrapped__")


def test_a_bad_variable_is_one_error_and_no_hook(sglang: sr.PluginFramework, conn: ModuleType,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PREFILL_STARTUP_DEADLINE", "soon")
    with caplog.at_level(logging.INFO):
        sglang.load_plugins()
    assert hooked(sglang) == set()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "PREFILL_STARTUP_DEADLINE='soon'" in errors[0].getMessage()
    assert "SGLang runs its own code" in errors[0].getMessage()


def test_a_renamed_target_is_one_warning_and_upstream_code_runs_there(
        sglang: sr.PluginFramework, conn: ModuleType, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # As if a release had renamed it: the method is not where the plugin looks.
    monkeypatch.delattr(conn.CommonKVManager, "_handle_node_failure")
    with caplog.at_level(logging.WARNING):
        sglang.load_plugins()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and targets.HANDLE_FAILURE in warnings[0]
    assert "SGLang's own code runs there" in warnings[0]
    assert hooked(sglang) == set(HOOKED) - {targets.HANDLE_FAILURE}


def test_a_changed_signature_is_one_warning_and_that_hook_is_skipped(
        sglang: sr.PluginFramework, conn: ModuleType, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def _register_topology_row(self: Any, url: str, payload: Any, extra: int) -> None:
        raise AssertionError("not called in this test")

    monkeypatch.setattr(conn.CommonKVManager, "_register_topology_row", _register_topology_row)
    with caplog.at_level(logging.WARNING):
        sglang.load_plugins()
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert targets.REGISTER_ROW in warning and "has parameters (self, url, payload, extra)" in warning
    assert conn.CommonKVManager._register_topology_row is _register_topology_row


class LateWorld:
    """Prefill ranks starting together, each on its own fake clock (one per thread), and
    SGLang's real bootstrap server listening from ``at`` seconds on: it starts once every
    rank's clock has reached ``at`` (a rank that gets there first waits for the others)."""

    def __init__(self, conn: ModuleType, port: int, ranks: int, at: float = 20.0) -> None:
        self.conn, self.port, self.ranks, self.at = conn, port, ranks, at
        self._local = threading.local()
        self._lock = threading.Lock()
        self._arrived = 0
        self.up = threading.Event()
        self.server: Any = None
        self.ended_at: list[float] = []

    def _clock(self) -> FakeClock:
        clock: FakeClock | None = getattr(self._local, "clock", None)
        if clock is None:
            clock = self._local.clock = FakeClock()
        return clock

    def now(self) -> float:
        return self._clock().now()

    def sleep(self, seconds: float, interrupt: threading.Event | None = None) -> None:
        clock = self._clock()
        before = clock.now()
        clock.sleep(seconds)
        if before < self.at <= clock.now():
            with self._lock:
                self._arrived += 1
                if self._arrived == self.ranks:
                    self.server = sr.start_bootstrap_server(self.conn, port=self.port)
                    self.up.set()
            assert self.up.wait(30), "the other ranks never reached the server's start"

    def run_ranks(self, managers: list[Any]) -> None:
        def init(manager: Any) -> None:
            manager.register_to_bootstrap()
            self.ended_at.append(self.now())

        threads = [threading.Thread(target=init, args=(m,)) for m in managers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    def close(self) -> None:
        if self.server is not None:
            sr.stop_bootstrap_server(self.server)


def prefill_ranks(conn: ModuleType, port: int, n: int = 8) -> list[Any]:
    return [sr.make_kv_manager(conn, bootstrap_port=port, attn_tp_size=n, attn_tp_rank=r, rank_port=17000 + r)
            for r in range(n)]


def test_eight_prefill_ranks_register_with_a_server_20_s_late_where_upstream_gives_up_at_13_s(
        sglang: sr.PluginFramework, conn: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # Upstream, unhooked, on the same scenario (its time module on the same fake clocks).
    upstream = LateWorld(conn, free_port(), 8)
    monkeypatch.setattr(conn, "time", SimpleNamespace(monotonic=upstream.now, sleep=upstream.sleep))
    try:
        upstream.run_ranks(prefill_ranks(conn, upstream.port))
        assert upstream.server is None  # every rank gave up before the server came
        assert len(upstream.ended_at) == 8 and all(11.0 <= t <= 15.0 for t in upstream.ended_at)
    finally:
        upstream.close()

    # Ours, hooked: the same ranks' inits through the real register_to_bootstrap.
    ours = LateWorld(conn, free_port(), 8)
    monkeypatch.setattr(_install, "clock_factory", lambda: ours)
    sglang.load_plugins()
    try:
        ours.run_ranks(prefill_ranks(conn, ours.port))  # an init raises unless REGISTERED
        assert len(ours.ended_at) == 8 and all(t >= 20.0 for t in ours.ended_at)
        assert ours.server is not None and ours.server._registered_count == 8 and ours.server._is_ready()
    finally:
        ours.close()


def test_a_rank_that_cannot_register_fails_its_init_or_carries_on_when_told(
        sglang: sr.PluginFramework, conn: ModuleType, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there, ever
    monkeypatch.setenv("PREFILL_STARTUP_DEADLINE", "3")
    monkeypatch.setattr(_install, "clock_factory", FakeClock)
    sglang.load_plugins()
    [manager] = prefill_ranks(conn, port, 1)
    with pytest.raises(RegistrationFailed, match="deadline.*ConnectionRefusedError"):
        manager.register_to_bootstrap()

    sglang.reset()
    monkeypatch.setenv("PREFILL_STARTUP_ON_FAILURE", "return")
    sglang.load_plugins()
    with caplog.at_level(logging.ERROR):
        assert manager.register_to_bootstrap() is None
    assert any("carrying on unregistered" in r.getMessage() for r in caplog.records)


def register_over_http(port: int, rank: int, n: int) -> None:
    payload: dict[str, Any] = {"attn_tp_size": n, "attn_tp_rank": rank, "attn_cp_size": 1, "attn_cp_rank": 0, "attn_dp_size": 1,
               "attn_dp_rank": 0, "pp_size": 1, "pp_rank": 0, "system_dp_size": 1, "system_dp_rank": 0,
               "rank_ip": "127.0.0.1", "rank_port": 17000 + rank, "page_size": 1, "kv_cache_dtype": "auto"}
    assert requests.put(f"http://127.0.0.1:{port}/route", json=payload, timeout=5).status_code == 200


def test_a_decode_loop_ticking_every_ms_sees_the_prefill_instance_within_half_a_second(
        sglang: sr.PluginFramework, conn: ModuleType, decode: ModuleType) -> None:
    sglang.load_plugins()
    port = free_port()
    addr = f"127.0.0.1:{port}"
    queue = sr.make_prealloc_queue(decode, sr.make_kv_manager(conn))
    aborted: list[str] = []
    reqs = [SimpleNamespace(kv_receiver=SimpleNamespace(abort=lambda: aborted.append("abort")))]
    ready_at: list[float] = []
    stop = threading.Event()
    ticks: list[float] = []

    def scheduler_loop() -> None:
        while not stop.is_set() and not ready_at:
            began = time.perf_counter()
            ready, remaining = queue._ensure_prefill_info({addr: reqs})
            ticks.append(time.perf_counter() - began)
            if ready:
                ready_at.append(time.monotonic())
            elif remaining != reqs:
                aborted.append("dropped")
            time.sleep(0.001)

    loop = threading.Thread(target=scheduler_loop)
    server: Any = None
    hanging = FaultServer(hang(), port=port).start()  # accepts, never answers
    try:
        loop.start()
        time.sleep(1.0)  # the loop ticks while the bootstrap server hangs
        assert not ready_at and not aborted
        hanging.close()
        server = sr.start_bootstrap_server(conn, port=port)
        for rank in range(8):
            register_over_http(port, rank, 8)
            time.sleep(0.2)
        last_registered = time.monotonic()
        loop.join(10)
        assert ready_at, "never saw the prefill instance complete"
        assert ready_at[0] - last_registered <= 0.5
        assert not aborted
        assert addr in queue.kv_manager.prefill_info_table  # filled by upstream's own code
        assert sorted(ticks)[len(ticks) // 2] < 0.005  # the median tick: no network I/O on this thread
    finally:
        stop.set()
        loop.join(10)
        hanging.close()
        if server is not None:
            sr.stop_bootstrap_server(server)


def test_the_heartbeat_dropping_an_address_starts_a_new_lookup(
        sglang: sr.PluginFramework, conn: ModuleType, decode: ModuleType) -> None:
    sglang.load_plugins()
    with sr.bootstrap_server(conn) as server:
        for rank in range(2):
            register_over_http(server.port, rank, 2)
        addr = f"127.0.0.1:{server.port}"
        manager = sr.make_kv_manager(conn)
        deadline = time.monotonic() + 10
        while not manager.try_ensure_parallel_info(addr):  # the first call starts the lookup
            assert time.monotonic() < deadline
            time.sleep(0.01)
        first = manager.prefill_info_table[addr]
        manager._handle_node_failure(addr)  # upstream's own path: drops its cache; ours looks again
        assert addr not in manager.prefill_info_table
        while not manager.try_ensure_parallel_info(addr):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert manager.prefill_info_table[addr] is not first


PUBLISHER = """
import sys, time
from coordinator import Registration, RetryPolicy
from coordinator.state import Publisher
from coordinator.testing import example_payload
url, state_dir, name = sys.argv[1], sys.argv[2], sys.argv[3]
reg = Registration(url, example_payload(), name=name, policy=RetryPolicy(deadline_s=None), hooks=(),
                   on_exhausted="return")
Publisher(state_dir).attach(reg)
reg.start()
print("started", flush=True)
time.sleep(60)
"""


def asgi_get(app: Any, path: str, query: str = "") -> tuple[int, str]:
    import asyncio

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "query_string": query.encode(), "root_path": ""}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], sent[1]["body"].decode()


def test_probes_in_one_process_show_drivers_of_two_others_one_killed(tmp_path: Path) -> None:
    import subprocess
    import sys

    from coordinator import BootstrapServer
    from coordinator.sglang._probes import app

    state_dir = tmp_path / "state"
    with BootstrapServer() as server:
        procs = [subprocess.Popen([sys.executable, "-c", PUBLISHER, url, str(state_dir), name],
                                  stdout=subprocess.PIPE, text=True)
                 for url, name in ((server.url, "rank0"), (f"http://127.0.0.1:{free_port()}/route", "rank1"))]
        try:
            for p in procs:
                assert p.stdout is not None and p.stdout.readline().strip() == "started"
            probes = app(str(state_dir))
            deadline = time.monotonic() + 10
            status, text = asgi_get(probes, "/readyz", "verbose")
            while not ("[+]registration rank0 ok" in text and "[-]registration rank1 failed: BACKOFF" in text):
                assert time.monotonic() < deadline, text
                time.sleep(0.05)
                status, text = asgi_get(probes, "/readyz", "verbose")
            assert status == 503
            assert asgi_get(probes, "/livez")[0] == 200
            procs[1].kill()
            procs[1].wait(10)
            status, text = asgi_get(probes, "/livez", "verbose")
            assert status == 503
            assert "[-]registration rank1 failed: FAILED (gone)" in text and "ProcessGone" in text
            assert "[+]registration rank0 ok" in text
            status, body = asgi_get(probes, "/status")
            assert [d["state"] for d in json.loads(body)["registrations"]] == ["REGISTERED", "FAILED"]
        finally:
            for p in procs:
                p.kill()
                p.wait(10)
                if p.stdout is not None:
                    p.stdout.close()


def test_a_prefill_restart_drops_sglangs_cached_info_and_ports_through_its_own_path(
        sglang: sr.PluginFramework, conn: ModuleType) -> None:
    from coordinator import BootstrapServer

    sglang.load_plugins()  # PREFILL_STARTUP_WATCH defaults to true
    port = free_port()
    addr = f"127.0.0.1:{port}"
    manager = sr.make_kv_manager(conn)

    def until(ready: Any) -> None:
        deadline = time.monotonic() + 10
        while not ready():
            assert time.monotonic() < deadline
            time.sleep(0.005)

    first = BootstrapServer("127.0.0.1", port).start()
    try:
        for rank in range(2):
            register_over_http(port, rank, 2)
        until(lambda: manager.try_ensure_parallel_info(addr))
        # What upstream's receivers cache per address: the rank ports they connect to.
        manager.connection_pool[f"{addr}_0_0"] = [{"rank_ip": "127.0.0.1", "rank_port": 17000}]
        old_info = manager.prefill_info_table[addr]
    finally:
        first.close()  # the prefill instance goes down: its long-polls close at once
    second = BootstrapServer("127.0.0.1", port).start()  # back at the same address, a new generation
    try:
        assert second.generation != first.generation
        # Invalidated: SGLang's own _handle_node_failure dropped its cached info and ports.
        until(lambda: addr not in manager.prefill_info_table)
        assert f"{addr}_0_0" not in manager.connection_pool
        assert manager.try_ensure_parallel_info(addr) is False  # incomplete: nothing stale handed out
        for rank in range(2):
            register_over_http(second.port, rank, 2)
        until(lambda: manager.try_ensure_parallel_info(addr))
        assert manager.prefill_info_table[addr] is not old_info
    finally:
        second.close()


def test_requests_wait_while_the_lookup_runs_and_are_aborted_at_once_when_it_fails(
        sglang: sr.PluginFramework, conn: ModuleType, decode: ModuleType, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PREFILL_STARTUP_DEADLINE", "3")
    monkeypatch.setattr(_install, "clock_factory", FakeClock)  # the Discovery's 3 s pass in a moment
    sglang.load_plugins()
    addr = f"127.0.0.1:{free_port()}"  # nothing listens: the Discovery ends FAILED at its deadline
    queue = sr.make_prealloc_queue(decode, sr.make_kv_manager(conn))
    aborted: list[str] = []
    reqs = [SimpleNamespace(kv_receiver=SimpleNamespace(abort=lambda: aborted.append("abort")))]
    held = 0
    deadline = time.monotonic() + 10
    with caplog.at_level(logging.ERROR):
        while True:
            ready, remaining = queue._ensure_prefill_info({addr: reqs})
            assert not ready
            if remaining != reqs:
                break
            held += 1
            assert time.monotonic() < deadline
            time.sleep(0.001)
    assert aborted == ["abort"]  # through upstream's own abort path, at the first call after FAILED
    assert queue._ensure_retry_count == {}  # upstream cleared its own bookkeeping
    [line] = [r.getMessage() for r in caplog.records if "prefill_startup.lookup_failed" in r.getMessage()]
    assert addr in line and "FAILED (deadline)" in line
    # A later request for the same address starts a new lookup rather than failing at once.
    _, remaining = queue._ensure_prefill_info({addr: reqs})
    assert remaining == reqs and aborted == ["abort"]
