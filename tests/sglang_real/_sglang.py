"""Helpers for the in-process tests of the real-SGLang tier: SGLang 0.5.23 imported for real.

Real: ``sglang.srt.plugins`` (``load_plugins``, its entry-point discovery and
``SGLANG_PLUGINS`` filter), ``HookRegistry``, the classes ``CommonKVManager``,
``DecodePreallocQueue``, ``DecodeRequest``, ``KVArgs``, ``PrefillServerInfo`` and
``CommonKVBootstrapServer``, ``ServerArgs`` and the runtime context that
``register_to_bootstrap`` reads (published as a scheduler process publishes it: conftest's
``published``).

Stood in: the managers' ``__init__`` (see :func:`kv_manager`, :func:`prealloc_queue`) and
the requests' KV receivers (:class:`KVReceiver`).
"""

from __future__ import annotations

import contextlib
import pkgutil
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import requests
from sglang.srt import plugins as sglang_plugins
from sglang.srt.disaggregation import decode
from sglang.srt.disaggregation.common import conn
from sglang.srt.plugins.hook_registry import HookRegistry

from coordinator.clock import REAL_TIME
from coordinator.instance import Board
from coordinator.sglang import _install
from coordinator.sglang import _targets as t
from coordinator.testing import example_payload, free_port

# Every target the plugin may hook in this process (a test process is its instance's main
# process: the main process's targets too).
TARGETS = (*t.PARAMETERS, t.LAUNCH)
DECODE_TARGETS = (t.TRY_ENSURE, t.ENSURE_INFO, t.HANDLE_FAILURE)  # hooked together, or none of them


def until(done: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Wait for another thread or process (real I/O at its own pace) until ``done()`` is truthy."""
    deadline, pause = REAL_TIME.now() + timeout, threading.Event()
    while not (found := done()):
        if REAL_TIME.now() > deadline:
            raise AssertionError(f"never: {what}")
        pause.wait(0.005)
    return found


class Plugins:
    """SGLang's real plugin framework in this process; :meth:`reset` puts SGLang back as found
    (``load_plugins()`` runs once per process, and the hooks patch SGLang's classes)."""

    def __init__(self) -> None:
        self._originals: list[tuple[Any, str, Any]] = []
        for target in TARGETS:
            owner_path, name = target.rsplit(".", 1)
            owner = pkgutil.resolve_name(owner_path)
            self._originals.append((owner, name, owner.__dict__[name]))  # raw: a classmethod stays one
        self._requests = conn.requests  # the plugin stands its CannedRequests in for it

    def load(self) -> None:
        sglang_plugins.load_plugins()

    @staticmethod
    def hooked() -> set[str]:
        """The targets with a hook of ours registered."""
        return {target for target, hooks in HookRegistry._hooks.items()
                if any(source is not None and source.plugin_name == "prefill_startup" for _, _, source in hooks)}

    @staticmethod
    def board() -> Board:
        """What the probes of this process (the instance's main process) read."""
        board = _install._installed[-1].context.instance.board
        assert board is not None
        return board

    def reset(self) -> None:
        _install.shutdown()  # the Discoveries, the probe port and the channel of the plugin's installs
        HookRegistry.reset()
        sglang_plugins._plugins_loaded = False
        for owner, name, raw in self._originals:
            setattr(owner, name, raw)
        conn.requests = self._requests


# The fixtures plugins (a Plugins, reset after the test) and published (the runtime context)
# are in conftest.py.


# -- the managers, without their __init__ ----------------------------------------------------

# What the real CommonKVManager.__init__ sets for decode rank 0 of a one-GPU engine (from its
# KVArgs and the runtime context) and, for a decode manager, its bookkeeping.
MANAGER_ATTRIBUTES: dict[str, Callable[[], Any]] = {
    "kv_cache_dtype_str": lambda: "auto", "kv_layout": lambda: None, "dsv41_spec_layout": lambda: None,
    "is_mla_backend": lambda: False, "is_hybrid_mla_backend": lambda: False,
    "bootstrap_host": lambda: "127.0.0.1", "bootstrap_port": lambda: 8998, "dist_init_addr": lambda: None,
    "attn_tp_size": lambda: 1, "attn_tp_rank": lambda: 0, "attn_cp_size": lambda: 1, "attn_cp_rank": lambda: 0,
    "dcp_size": lambda: 1, "dcp_rank": lambda: 0, "attn_dp_size": lambda: 1, "attn_dp_rank": lambda: 0,
    "system_dp_size": lambda: 1, "system_dp_rank": lambda: 0, "pp_size": lambda: 1, "pp_rank": lambda: 0,
    "local_ip": lambda: "127.0.0.1", "rank_port": lambda: 0,  # the real one: its zmq PULL socket's port
    "enable_all_cp_ranks_for_transfer": lambda: False,
    "request_status": dict, "failure_records": dict, "failure_lock": threading.Lock,
    "connection_pool": dict, "connection_lock": threading.Lock, "prefill_info_table": dict,
    "heartbeat_failures": dict, "addr_to_rooms_tracker": lambda: defaultdict(set),
}
# What the real DecodePreallocQueue.__init__ sets for _ensure_prefill_info (its values in 0.5.23).
QUEUE_ATTRIBUTES: dict[str, Callable[[], Any]] = {
    "_ensure_retry_count": dict, "_max_ensure_retries": lambda: 15, "_ensure_last_attempt_time": dict,
    "_ensure_retry_interval": lambda: 1.0,
}


def kv_args(**attrs: Any) -> Any:
    """A real KVArgs (its fields are bare annotations) with what the hooked methods read."""
    args = conn.KVArgs()
    for name, value in {"engine_rank": 0, "page_size": 1, "kv_cache_dtype_str": "auto", "state_types": [],
                        "system_dp_rank": 0, "pp_rank": 0, "rust_http_port": None, "is_hybrid_mla_backend": False,
                        **attrs}.items():
        setattr(args, name, value)
    return args


def kv_manager(**attrs: Any) -> Any:
    """A real CommonKVManager made with ``object.__new__``. Its ``__init__`` reads its rank from
    the runtime context, one per process (the tests run several ranks in one), binds a zmq
    socket, wants the KV pool's buffers in its KVArgs and, for a prefill rank, registers at once
    (the call under test). Set by hand instead: :data:`MANAGER_ATTRIBUTES`, ``kv_args``, then ``attrs``."""
    manager = object.__new__(conn.CommonKVManager)
    for name, make in MANAGER_ATTRIBUTES.items():
        setattr(manager, name, make())
    manager.kv_args = kv_args()
    for name, value in attrs.items():
        setattr(manager, name, value)
    return manager


def prefill_ranks(port: int, n: int) -> list[Any]:
    """``n`` tensor-parallel prefill ranks of one instance whose bootstrap server is at ``port``."""
    return [kv_manager(bootstrap_port=port, attn_tp_size=n, attn_tp_rank=r, rank_port=17000 + r) for r in range(n)]


def prealloc_queue(manager: Any) -> Any:
    """A real DecodePreallocQueue made with ``object.__new__`` (its ``__init__`` needs the
    scheduler, the KV pools and a process group): :data:`QUEUE_ATTRIBUTES` and ``kv_manager``."""
    queue = object.__new__(decode.DecodePreallocQueue)
    for name, make in QUEUE_ATTRIBUTES.items():
        setattr(queue, name, make())
    queue.kv_manager = manager
    return queue


class KVReceiver:
    """A request's KV receiver as ``_ensure_prefill_info`` uses it: aborting is recorded."""

    def __init__(self, aborted: list[str]) -> None:
        self._aborted = aborted

    def abort(self) -> None:
        self._aborted.append("abort")


def decode_requests(aborted: list[str]) -> list[Any]:
    """One real DecodeRequest waiting for its prefill instance."""
    return [decode.DecodeRequest(req=None, kv_receiver=KVReceiver(aborted))]


# -- SGLang's bootstrap server ---------------------------------------------------------------


def start_bootstrap_server(port: int | None = None) -> Any:
    """The real CommonKVBootstrapServer (its own aiohttp thread), once it answers."""
    server = conn.CommonKVBootstrapServer("127.0.0.1", free_port() if port is None else port)

    def answering() -> bool:
        if not server.thread.is_alive():  # _run_server logged why (a port taken meanwhile)
            raise OSError(f"CommonKVBootstrapServer could not listen on port {server.port}")
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"http://127.0.0.1:{server.port}/health", timeout=1).status_code == 200
        return False

    until(answering, f"CommonKVBootstrapServer answering on port {server.port}")
    return server


def stop_bootstrap_server(server: Any) -> None:
    """Its real ``close()``, its cleanup task cancelled first (else the closed loop drops it pending)."""

    def cancel() -> None:
        for task in list(server._background_tasks):
            task.cancel()

    server._loop.call_soon_threadsafe(cancel)
    server.close()
    server.thread.join(10)
    assert not server.thread.is_alive(), "CommonKVBootstrapServer's thread did not stop"


@contextlib.contextmanager
def bootstrap_server(port: int | None = None) -> Iterator[Any]:
    server = start_bootstrap_server(port)
    try:
        yield server
    finally:
        stop_bootstrap_server(server)


def register_over_http(port: int, rank: int, n: int) -> None:
    """Register prefill rank ``rank`` of ``n`` as a prefill scheduler would."""
    assert requests.put(f"http://127.0.0.1:{port}/route", json=example_payload(rank, n), timeout=5).status_code == 200
