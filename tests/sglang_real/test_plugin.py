"""The plugin in this process, through SGLang 0.5.23's real loader, classes and bootstrap server.

SGLang's real ``load_plugins()`` finds our entry point and its real ``HookRegistry`` hooks the
real ``CommonKVManager`` and ``DecodePreallocQueue`` methods; the prefill ranks register
through the real ``register_to_bootstrap`` (SGLang's runtime context published from real
ServerArgs) with SGLang's real ``CommonKVBootstrapServer``. Stood in (tests/sglang_real/_sglang.py):
the managers' ``__init__`` and the requests' KV receivers; the decode scheduler loop is a loop
here calling the real, hooked method. This process is its instance's main process: the probe
port binds a free port (``PREFILL_STARTUP_HEALTH_PORT=0``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from sglang.srt.disaggregation import decode
from sglang.srt.disaggregation.common import conn
from sglang.srt.plugins.hook_registry import HookRegistry

from coordinator import BootstrapServer, FakeClock, RegistrationFailed
from coordinator.clock import REAL_TIME
from coordinator.instance import _channel
from coordinator.protocol import ROUTE_PATH, TOPOLOGY_KEY, route_query
from coordinator.sglang import _install
from coordinator.sglang import _targets as t
from coordinator.testing import FaultServer, free_port
from coordinator.testing.faultserver import hang
from tests.sglang_real._sglang import (
    DECODE_TARGETS,
    MANAGER_ATTRIBUTES,
    QUEUE_ATTRIBUTES,
    TARGETS,
    Plugins,
    bootstrap_server,
    decode_requests,
    kv_manager,
    prealloc_queue,
    prefill_ranks,
    register_over_http,
    start_bootstrap_server,
    stop_bootstrap_server,
    until,
)

HOOKED = (t.REGISTER_ROW, t.TRY_ENSURE, t.ENSURE_INFO, t.HANDLE_FAILURE)
RENAMED = Path(__file__).with_name("_renamed.py")


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("coordinator")]


def test_the_managers_built_by_hand_get_only_what_the_real_init_sets() -> None:
    # The stand-in for __init__ must not invent state: each attribute is one the real class assigns.
    assert t._unset(conn.CommonKVManager, tuple(MANAGER_ATTRIBUTES)) == []
    assert t._unset(decode.DecodePreallocQueue, tuple(QUEUE_ATTRIBUTES)) == []


# -- loading --------------------------------------------------------------------------------


def test_load_plugins_finds_the_entry_point_and_hooks_every_target(plugins: Plugins) -> None:
    original = conn.CommonKVManager._register_topology_row
    plugins.load()
    # This is the instance's main process: its targets are hooked too.
    assert plugins.hooked() == set(TARGETS) > set(HOOKED)
    assert set(TARGETS) <= HookRegistry._patched
    assert conn.CommonKVManager._register_topology_row.__wrapped__ is original


def test_sglang_plugins_naming_another_plugin_turns_it_off(plugins: Plugins, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGLANG_PLUGINS", "something_else")
    plugins.load()
    assert plugins.hooked() == set()
    assert not hasattr(conn.CommonKVManager._register_topology_row, "__wrapped__")


def test_a_bad_variable_is_one_error_and_no_hook(plugins: Plugins, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PREFILL_STARTUP_DEADLINE", "soon")
    with caplog.at_level(logging.INFO):
        plugins.load()
    assert plugins.hooked() == set()
    [error] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "PREFILL_STARTUP_DEADLINE='soon'" in error and "SGLang runs its own code" in error


def test_a_renamed_target_is_one_warning_and_upstream_code_runs_there(
        plugins: Plugins, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # As if a release had renamed it: the method is not where the plugin looks.
    monkeypatch.delattr(conn.CommonKVManager, "_handle_node_failure")
    with caplog.at_level(logging.WARNING):
        plugins.load()
    [warning] = warnings_of(caplog)
    assert t.HANDLE_FAILURE in warning and "SGLang's own code runs there" in warning
    assert plugins.hooked() == set(TARGETS) - {t.HANDLE_FAILURE}


def test_a_changed_signature_is_one_warning_and_that_hook_is_skipped(
        plugins: Plugins, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def _register_topology_row(self: Any, url: str, payload: Any, extra: int) -> None:
        raise AssertionError("not called in this test")

    monkeypatch.setattr(conn.CommonKVManager, "_register_topology_row", _register_topology_row)
    with caplog.at_level(logging.WARNING):
        plugins.load()
    [warning] = warnings_of(caplog)
    assert t.REGISTER_ROW in warning and "has parameters (self, url, payload, extra)" in warning
    assert conn.CommonKVManager._register_topology_row is _register_topology_row


@pytest.mark.parametrize("target,attribute", [(target, attribute) for target, attributes in t.ATTRIBUTES.items()
                                               for attribute in attributes])
def test_a_renamed_private_attribute_skips_its_hook_with_one_warning(target: str, attribute: str,
                                                                     tmp_path: Path) -> None:
    # A release that renamed it: SGLang's real source with every occurrence renamed, loaded under
    # the module's real name before load_plugins() (in a process of its own: SGLang imports once).
    module = target.rsplit(".", 2)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFILL_STARTUP_", "SGLANG_"))}
    env.update(SGLANG_PLUGINS="prefill_startup", PREFILL_STARTUP_HEALTH_PORT="0")
    done = subprocess.run([sys.executable, str(RENAMED), module, attribute, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    [warning] = seen["warnings"]  # exactly one, naming the target and the attribute
    assert f"target={target}:" in warning and f"no longer sets {attribute}" in warning
    assert seen["errors"] == []  # load_plugins() did not fail, nor did any hook's application
    # That hook is skipped (the decode side's hooks go together) and SGLang's own code runs
    # there; the other hooks apply.
    skipped = set(DECODE_TARGETS) if target in DECODE_TARGETS else {target}
    assert set(seen["hooked"]) == set(TARGETS) - skipped
    assert [name for name, own in seen["own"].items() if own] == sorted(skipped)


# -- prefill --------------------------------------------------------------------------------


class LateWorld:
    """Prefill ranks starting together, each on its own fake clock (one per thread), and
    SGLang's real bootstrap server listening from ``at`` seconds on: it starts once every
    rank's clock has reached ``at`` (a rank that gets there first waits for the others)."""

    def __init__(self, port: int, ranks: int, at: float = 20.0) -> None:
        self.port, self.ranks, self.at = port, ranks, at
        self._local = threading.local()
        self._lock = threading.Lock()
        self._arrived = 0
        self.up = threading.Event()
        self.server: Any = None
        self.ended_at: list[float] = []
        self.errors: list[BaseException] = []

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
                    self.server = start_bootstrap_server(self.port)
                    self.up.set()
            assert self.up.wait(30), "the other ranks never reached the server's start"

    def run_ranks(self, managers: list[Any]) -> None:
        """Each rank's registration, as its scheduler's init calls it."""

        def init(manager: Any) -> None:
            try:
                manager.register_to_bootstrap()
            except BaseException as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
                self.errors.append(exc)
            self.ended_at.append(self.now())

        threads = [threading.Thread(target=init, args=(m,)) for m in managers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

    def close(self) -> None:
        if self.server is not None:
            stop_bootstrap_server(self.server)


def test_eight_prefill_ranks_register_with_a_server_20_s_late_where_upstream_gives_up_at_13_s(
        plugins: Plugins, published: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Upstream, unhooked, on the same scenario (its time module on the same fake clocks).
    upstream = LateWorld(free_port(), 8)
    monkeypatch.setattr(conn, "time", SimpleNamespace(monotonic=upstream.now, sleep=upstream.sleep))
    try:
        upstream.run_ranks(prefill_ranks(upstream.port, 8))
        assert upstream.server is None  # every rank gave up before the server came
        assert not upstream.errors and len(upstream.ended_at) == 8
        assert all(11.0 <= t <= 15.0 for t in upstream.ended_at)
    finally:
        upstream.close()

    # Ours, hooked: the same ranks' registrations through the real register_to_bootstrap.
    ours = LateWorld(free_port(), 8)
    monkeypatch.setattr(_install, "clock_factory", lambda: ours)
    plugins.load()
    try:
        ours.run_ranks(prefill_ranks(ours.port, 8))  # a registration raises unless REGISTERED
        assert not ours.errors and len(ours.ended_at) == 8 and all(t >= 20.0 for t in ours.ended_at)
        assert ours.server is not None and ours.server._registered_count == 8 and ours.server._is_ready()
    finally:
        ours.close()


def test_a_rank_that_cannot_register_fails_its_init_or_carries_on_when_told(
        plugins: Plugins, published: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there, ever
    monkeypatch.setenv("PREFILL_STARTUP_DEADLINE", "3")
    monkeypatch.setattr(_install, "clock_factory", FakeClock)  # the 3 s pass in a moment
    plugins.load()
    [manager] = prefill_ranks(port, 1)
    with pytest.raises(RegistrationFailed, match="deadline.*ConnectionRefusedError"):
        manager.register_to_bootstrap()

    plugins.reset()
    monkeypatch.setenv("PREFILL_STARTUP_ON_FAILURE", "return")
    plugins.load()
    with caplog.at_level(logging.ERROR):
        assert manager.register_to_bootstrap() is None
    assert any("carrying on unregistered" in r.getMessage() for r in caplog.records)


# -- decode ---------------------------------------------------------------------------------


def test_a_decode_loop_ticking_every_ms_sees_the_prefill_instance_within_half_a_second(plugins: Plugins) -> None:
    plugins.load()
    port = free_port()
    addr = f"127.0.0.1:{port}"
    queue = prealloc_queue(kv_manager())
    aborted: list[str] = []
    reqs = decode_requests(aborted)
    ready_at: list[float] = []
    stop = threading.Event()
    ticks: list[float] = []

    def scheduler_loop() -> None:
        while not stop.is_set() and not ready_at:
            began = REAL_TIME.now()
            ready, remaining = queue._ensure_prefill_info({addr: reqs})
            ticks.append(REAL_TIME.now() - began)
            if ready:
                ready_at.append(REAL_TIME.now())
            elif remaining != reqs:
                aborted.append("dropped")
            stop.wait(0.001)  # a scheduler step

    loop = threading.Thread(target=scheduler_loop)
    server: Any = None
    hanging = FaultServer(hang(), port=port).start()  # accepts, never answers
    try:
        loop.start()
        # The lookup is stuck at the hung server while the loop keeps ticking.
        until(lambda: hanging.connection_count and len(ticks) >= 100, "ticks while the lookup hangs")
        assert not ready_at and not aborted
        hanging.close()
        server = start_bootstrap_server(port)
        for rank in range(7):
            register_over_http(port, rank, 8)
        # The lookup has seen the instance incomplete: it polls at the pace of "not yet".
        until(lambda: [m.last.last_status for m in plugins.board().members()] == [503], "a 503 seen")
        assert not ready_at  # an incomplete instance holds the requests
        register_over_http(port, 7, 8)
        last_registered = REAL_TIME.now()
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
            stop_bootstrap_server(server)


def resolved(manager: Any, addr: str) -> None:
    """Call the hooked lookup as the scheduler does until it answers True."""
    until(lambda: manager.try_ensure_parallel_info(addr), f"{addr} resolved")


def test_the_heartbeat_dropping_an_address_starts_a_new_lookup(plugins: Plugins) -> None:
    plugins.load()
    with bootstrap_server() as server:
        for rank in range(2):
            register_over_http(server.port, rank, 2)
        addr = f"127.0.0.1:{server.port}"
        manager = kv_manager()
        resolved(manager, addr)  # the first call starts the lookup
        first = manager.prefill_info_table[addr]
        manager._handle_node_failure(addr)  # upstream's own path: drops its cache; ours looks again
        assert addr not in manager.prefill_info_table
        resolved(manager, addr)
        assert manager.prefill_info_table[addr] is not first


def test_a_prefill_restart_drops_sglangs_cached_info_and_ports_through_its_own_path(plugins: Plugins) -> None:
    plugins.load()  # PREFILL_STARTUP_WATCH defaults to true
    port = free_port()
    addr = f"127.0.0.1:{port}"
    manager = kv_manager()
    first = BootstrapServer("127.0.0.1", port).start()
    try:
        for rank in range(2):
            register_over_http(port, rank, 2)
        resolved(manager, addr)
        # What upstream's receivers cache per address: the rank ports they connect to.
        manager.connection_pool[f"{addr}_0_0"] = [{"rank_ip": "127.0.0.1", "rank_port": 17000}]
        old_info = manager.prefill_info_table[addr]
    finally:
        first.close()  # the prefill instance goes down: its long-polls close at once
    second = BootstrapServer("127.0.0.1", port).start()  # back at the same address, a new generation
    try:
        assert second.generation != first.generation
        # Invalidated: SGLang's own _handle_node_failure dropped its cached info and ports.
        until(lambda: addr not in manager.prefill_info_table, "the cached info dropped")
        assert f"{addr}_0_0" not in manager.connection_pool
        assert manager.try_ensure_parallel_info(addr) is False  # incomplete: nothing stale handed out
        for rank in range(2):
            register_over_http(second.port, rank, 2)
        resolved(manager, addr)
        assert manager.prefill_info_table[addr] is not old_info
    finally:
        second.close()


def until_aborted(queue: Any, addr: str, reqs: list[Any]) -> int:
    """Tick the hooked ``_ensure_prefill_info`` until it drops the requests; how many ticks held them."""
    held = 0
    pause = threading.Event()
    while True:
        ready, remaining = queue._ensure_prefill_info({addr: reqs})
        assert not ready
        if remaining != reqs:
            return held
        assert queue._ensure_retry_count == {}  # held, not counted towards upstream's abort
        held += 1
        assert held < 10_000, "never aborted"
        pause.wait(0.001)  # a scheduler step


def test_requests_wait_while_the_lookup_runs_and_are_aborted_at_once_when_it_fails(
        plugins: Plugins, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PREFILL_STARTUP_DEADLINE", "3")
    monkeypatch.setattr(_install, "clock_factory", FakeClock)  # the Discovery's 3 s pass in a moment
    plugins.load()
    addr = f"127.0.0.1:{free_port()}"  # nothing listens: the Discovery ends FAILED at its deadline
    queue = prealloc_queue(kv_manager())
    aborted: list[str] = []
    reqs = decode_requests(aborted)
    with caplog.at_level(logging.ERROR):
        assert until_aborted(queue, addr, reqs) >= 1  # the lookup's first ticks hold them
    assert aborted == ["abort"]  # through upstream's own abort path, at the first call after FAILED
    assert queue._ensure_retry_count == {}  # upstream cleared its own bookkeeping
    [line] = [r.getMessage() for r in caplog.records if "prefill_startup.lookup_failed" in r.getMessage()]
    assert addr in line and "FAILED (deadline)" in line
    # A later request for the same address starts a new lookup rather than failing at once.
    _, remaining = queue._ensure_prefill_info({addr: reqs})
    assert remaining == reqs and aborted == ["abort"]


def test_the_abort_is_explained_before_upstreams_line_about_attempts(
        plugins: Plugins, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PREFILL_STARTUP_DEADLINE", "3")
    monkeypatch.setattr(_install, "clock_factory", FakeClock)
    plugins.load()
    addr = f"127.0.0.1:{free_port()}"
    queue = prealloc_queue(kv_manager())
    with caplog.at_level(logging.ERROR):
        until_aborted(queue, addr, decode_requests([]))
    lines = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR]
    ours = next(i for i, (_, m) in enumerate(lines) if m.startswith(f"prefill_startup.lookup_failed bootstrap={addr}"))
    upstream = next(i for i, (name, m) in enumerate(lines)
                    if name == decode.__name__ and m.startswith(f"Could not fetch prefill parallel info from {addr}"))
    assert ours < upstream  # the operator reads the cause first
    attempts = re.search(r"after (\d+) attempts", lines[upstream][1])
    assert attempts is not None
    # ... and is told that SGLang's line is this abort, with the count it will print.
    assert f'("Could not fetch prefill parallel info ... after {attempts[1]} attempts") is this abort' \
        in lines[ours][1]


def test_the_builder_survives_any_exception_and_that_address_falls_back_to_upstream(
        plugins: Plugins, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    plugins.load()
    with bootstrap_server() as one, bootstrap_server() as two:
        for server in (one, two):
            register_over_http(server.port, 0, 1)
        bad, good = f"127.0.0.1:{one.port}", f"127.0.0.1:{two.port}"
        attach = _channel.Local.attach

        def failing_attach(self: Any, driver: Any) -> Callable[[], None]:
            if driver.snapshot().name == bad:
                raise OSError(28, "No space left on device")  # not a TypeError or a ValueError
            return attach(self, driver)

        monkeypatch.setattr(_channel.Local, "attach", failing_attach)
        queue = prealloc_queue(kv_manager())
        ready: dict[str, Any] = {}

        def tick() -> bool:  # the bad address first: its build fails before the good one's
            ready.update(queue._ensure_prefill_info({bad: decode_requests([]), good: decode_requests([])})[0])
            return len(ready) == 2

        with caplog.at_level(logging.WARNING):
            until(tick, "both addresses ready")
            for _ in range(3):  # later ticks: no more lines
                tick()
    [warning] = warnings_of(caplog)
    assert warning.startswith(f"prefill_startup.upstream_lookup bootstrap={bad} reason=OSError")
    assert [m.last.name for m in plugins.board().members()] == [good]  # a Discovery for the good one only
    assert {bad, good} <= set(queue.kv_manager.prefill_info_table)  # the bad one by upstream's own lookup


def test_canned_requests_never_reach_the_network_on_the_scheduler_thread(
        plugins: Plugins, monkeypatch: pytest.MonkeyPatch) -> None:
    with bootstrap_server() as server, FaultServer(hang()) as elsewhere:
        register_over_http(server.port, 0, 1)
        addr = f"127.0.0.1:{server.port}"
        topology = f"http://{addr}{ROUTE_PATH}?{route_query(TOPOLOGY_KEY)}"
        others = [f"{elsewhere.base_url}{ROUTE_PATH}?{route_query(TOPOLOGY_KEY)}", f"http://{addr}/health"]
        asked: list[dict[str, tuple[str, float]]] = []

        def ask(url: str) -> tuple[str, float]:
            began = REAL_TIME.now()
            try:
                outcome = f"answered {conn.requests.get(url, timeout=5).status_code}"
            except requests.ConnectionError as exc:
                outcome = f"refused: {exc}"
            return outcome, REAL_TIME.now() - began

        original = conn.CommonKVManager.try_ensure_parallel_info

        @functools.wraps(original)
        def body(self: Any, bootstrap_addr: str) -> bool:
            # Upstream's body, then more GETs through its module's requests, as a later release might.
            found: bool = original(self, bootstrap_addr)
            asked.append({url: ask(url) for url in (topology, *others)})
            return found

        monkeypatch.setattr(conn.CommonKVManager, "try_ensure_parallel_info", body)
        plugins.load()
        manager = kv_manager()
        resolved(manager, addr)  # the Discovery complete: upstream's body had its canned answer
        assert manager.try_ensure_parallel_info(addr) is True  # cached: the body ran offline
        complete, cached = asked
        assert complete[topology][0] == "answered 200"  # the one URL expected, with no network I/O
        for url, (outcome, took) in [*((u, complete[u]) for u in others), *cached.items()]:
            assert outcome.startswith("refused: prefill-startup: no network I/O on the scheduler thread"), url
            assert took < 1.0, url  # at once: a real GET of the hung server would wait 5 s
        assert elsewhere.connection_count == 0  # no socket opened


# -- the probes of the main process ---------------------------------------------------------

CHILD = """
import os, sys
from coordinator import Registration, RetryPolicy
from coordinator.instance import join
from coordinator.testing import example_payload
reg = Registration(sys.argv[1], example_payload(), name=sys.argv[2], policy=RetryPolicy(deadline_s=None), hooks=(),
                   on_exhausted="return")
join(os.environ).publish.attach(reg)  # a descendant of the main process: it sends to the main process's channel
reg.start()
sys.stdin.read()  # stay until told
"""


def probe(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_probe_port_shows_drivers_of_two_other_processes_one_killed(
        plugins: Plugins, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        plugins.load()
    [probes] = [m[len("prefill_startup.probes url="):].split("/{")[0] for m in caplog.messages
                if m.startswith("prefill_startup.probes url=")]
    with BootstrapServer() as server:
        procs = [subprocess.Popen([sys.executable, "-c", CHILD, url, name], stdin=subprocess.PIPE, text=True)
                 for url, name in ((server.url, "rank0"), (f"http://127.0.0.1:{free_port()}/route", "rank1"))]
        try:
            until(lambda: "[+]registration rank0 ok\n[-]registration rank1 failed: BACKOFF"
                  in probe(f"{probes}/readyz?verbose")[1], "rank0 registered, rank1 backing off")
            assert probe(f"{probes}/readyz")[0] == 503
            assert probe(f"{probes}/livez")[0] == 200
            procs[1].kill()
            procs[1].wait(10)
            status, text = probe(f"{probes}/livez?verbose")
            assert status == 503
            assert "[-]registration rank1 failed: FAILED (gone)" in text and "ProcessGone" in text
            assert "[+]registration rank0 ok" in text
            status, body = probe(f"{probes}/status")
            assert [r["snapshot"]["state"] for r in json.loads(body)["registrations"]] == ["REGISTERED", "FAILED"]
        finally:
            for proc in procs:
                proc.kill()
                proc.communicate()
