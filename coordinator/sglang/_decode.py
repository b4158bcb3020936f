"""The decode side: one background Discovery per prefill address; the scheduler thread only reads.

Upstream asks ``try_ensure_parallel_info`` at most once a second per address, each time
a blocking GET on the scheduler thread, and aborts the waiting requests after 15 tries.
Here the first call for an address asks a builder thread for a Discovery (building one
costs milliseconds: not on the scheduler thread) and every call only reads a snapshot.
Requests wait while the Discovery is within its deadline; once it is complete, upstream's
own code fills upstream's cache from its answer; once it has failed, upstream's own
abort path aborts them at once.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from coordinator.discovery import Discovery
from coordinator.discovery import default_policy as discovery_policy
from coordinator.sglang._canned import CannedRequests
from coordinator.sglang._runtime import Runtime
from coordinator.snapshot import Snapshot
from states import State

log = logging.getLogger("coordinator.sglang")


def _cached(manager: Any, addr: str, found: Discovery | None) -> bool:
    """Upstream has the address's info cached, and our Discovery has not invalidated it since
    (its ``info`` turns None before the plugin drops upstream's cache: trust neither between)."""
    return addr in manager.prefill_info_table and (found is None or found.info is not None)


class DecodeSide:
    """The Discoveries of one decode process, by bootstrap address (``host:port``)."""

    def __init__(self, runtime: Runtime, canned: CannedRequests | None) -> None:
        self._runtime = runtime
        self._canned = canned
        self._discoveries: dict[str, Discovery] = {}  # read by the scheduler thread without a lock
        self._upstream: set[str] = set()  # addresses a Discovery cannot take: upstream's code serves them
        self._asked: set[str] = set()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._builder: threading.Thread | None = None
        self._ours = threading.local()  # set while the plugin itself calls upstream's failure handler
        self._managers: dict[str, Any] = {}  # the CommonKVManager that asked for each address
        self._invalidations: dict[str, int] = {}  # of each address's Discovery, as acted on

    # -- the scheduler thread: reads only -------------------------------------

    def discovery(self, addr: str) -> Discovery | None:
        """The address's Discovery, or None while it is being built (asked for here)."""
        found = self._discoveries.get(addr)
        if found is None and addr not in self._asked:
            self._ask(addr)
        return found

    # -- building, off the scheduler thread -----------------------------------

    def _ask(self, addr: str) -> None:
        with self._lock:
            if addr in self._asked:
                return
            self._asked.add(addr)
            if self._builder is None:
                self._builder = threading.Thread(target=self._build_loop, name="prefill-startup-discoveries",
                                                 daemon=True)
                self._builder.start()
        self._queue.put(addr)

    def _build_loop(self) -> None:
        while True:
            addr = self._queue.get()
            try:
                found = self._build(addr)
            except (TypeError, ValueError) as exc:
                log.warning("prefill_startup.upstream_lookup bootstrap=%s reason=%r: SGLang's own lookup "
                            "serves this address", addr, str(exc))
                self._upstream.add(addr)
                continue
            self._discoveries[addr] = found
            found.start()

    def _build(self, addr: str) -> Discovery:
        runtime = self._runtime
        discovery = Discovery(addr, policy=runtime.policy(discovery_policy()), clock=runtime.clock,
                              rng=runtime.rng(), name=addr, on_exhausted="return", watch=runtime.settings.watch)
        runtime.publish(discovery)
        discovery.add_listener(lambda snapshot: self._on_change(addr, snapshot))
        return discovery

    def _on_change(self, addr: str, snapshot: Snapshot) -> None:
        """On the Discovery's thread: an invalidation drops upstream's cached info and
        connections for the address through upstream's own path."""
        manager = self._managers.get(addr)
        if manager is None or snapshot.invalidations == self._invalidations.get(addr, 0):
            return
        self._invalidations[addr] = snapshot.invalidations
        why = snapshot.last_error.message if snapshot.last_error is not None else "invalidated"
        log.warning("prefill_startup.invalidated bootstrap=%s: %s; dropping SGLang's cached prefill info", addr, why)
        self._ours.active = True
        try:
            manager._handle_node_failure(addr)
        finally:
            self._ours.active = False

    def close(self, timeout: float = 5.0) -> None:
        """Stop every Discovery and wait for its thread (their sockets closed)."""
        with self._lock:
            found, self._discoveries = list(self._discoveries.values()), {}
            self._asked.clear()
        for discovery in found:
            discovery.stop(timeout)

    def forget(self, addr: str) -> None:
        """Drop the address's Discovery: the next request for it starts a new one."""
        with self._lock:
            found = self._discoveries.pop(addr, None)
            self._asked.discard(addr)
            self._invalidations.pop(addr, None)
        if found is not None:
            found.stop(timeout=0)

    # -- the hooks ------------------------------------------------------------

    def try_ensure(self, original: Callable[..., bool], manager: Any, addr: str) -> bool:
        """AROUND ``CommonKVManager.try_ensure_parallel_info(self, bootstrap_addr)``."""
        if addr in self._upstream or self._canned is None:
            return original(manager, addr)  # upstream's to serve
        self._managers.setdefault(addr, manager)
        found = self.discovery(addr)
        if _cached(manager, addr, found):
            return original(manager, addr)  # no I/O
        if found is None:
            return False
        info = found.info
        if info is None:
            return False
        # Upstream's body parses, checks and caches it, as if it had fetched it itself.
        with self._canned.answering(f"http://{addr}/route?", info.topology_json()):
            return original(manager, addr)

    def ensure(self, original: Callable[..., Any], queue_: Any, addr_to_reqs: dict[str, list[Any]]) -> Any:
        """AROUND ``DecodePreallocQueue._ensure_prefill_info(self, addr_to_reqs)``."""
        manager = queue_.kv_manager
        held: list[Any] = []
        passed: dict[str, list[Any]] = {}
        failed: list[str] = []
        for addr, reqs in addr_to_reqs.items():
            if addr in self._upstream:
                passed[addr] = reqs
                continue
            found = self.discovery(addr)
            if _cached(manager, addr, found):
                passed[addr] = reqs
                continue
            state = State.INIT if found is None else found.state
            if state not in (State.REGISTERED, State.FAILED):
                held.extend(reqs)  # within its deadline: no retry counted, nothing aborted
                continue
            # Upstream decides now, not at its next once-a-second slot.
            queue_._ensure_last_attempt_time.pop(addr, None)
            if state is State.FAILED:
                assert found is not None
                snap = found.snapshot()
                log.error("prefill_startup.lookup_failed bootstrap=%s requests=%d: %s; aborting its waiting "
                          "requests", addr, len(reqs), snap.describe(snap.taken_at))
                queue_._ensure_retry_count[addr] = queue_._max_ensure_retries - 1  # this failure aborts them
                failed.append(addr)
            passed[addr] = reqs
        ready, remaining = original(queue_, passed)
        for addr in failed:
            self.forget(addr)  # a later request for it starts a new lookup
        return ready, [*remaining, *held]

    def node_failed(self, result: Any, manager: Any, addr: str) -> None:
        """AFTER ``CommonKVManager._handle_node_failure(self, failed_bootstrap_addr)``:
        upstream dropped its cache for the address; look it up anew."""
        if getattr(self._ours, "active", False):
            return
        self.forget(addr)
