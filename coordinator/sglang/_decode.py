"""The decode side: one background Discovery per prefill address; the scheduler thread only reads.

Upstream asks ``try_ensure_parallel_info`` at most once a second per address, each time
a blocking GET on the scheduler thread, and aborts the waiting requests after 15 tries.
Here the first call for an address asks a builder thread for a Discovery (building one
costs milliseconds: not on the scheduler thread) and every call only reads a snapshot.
Requests wait while the Discovery is within its deadline; once it is complete, upstream's
own code fills upstream's cache from its answer; once it has failed, upstream's own
abort path aborts them at once. An address the plugin cannot take (its Discovery could
not be built) is upstream's to serve, with one WARNING.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coordinator.discovery import Discovery
from coordinator.discovery import default_policy as discovery_policy
from coordinator.sglang._context import PluginContext
from coordinator.sglang._stand_in_requests import CannedRequests
from coordinator.snapshot import Snapshot
from states import SETTLED, State

log = logging.getLogger("coordinator.sglang")


@dataclass
class _Address:
    """One prefill address of this decode process. The scheduler thread reads it without a
    lock; each field is set whole, by one thread."""

    discovery: Discovery | None = None  # None while the builder makes it
    upstream: bool = False  # no Discovery could be made: upstream's code serves the address
    manager: Any = None  # the CommonKVManager that asked for it (its failure handler is upstream's)
    invalidations: int = 0  # of its Discovery, as acted on
    retire: Callable[[], None] | None = None  # takes the Discovery off the probes


def _cached(manager: Any, addr: str, found: Discovery | None) -> bool:
    """Upstream has the address's info cached, and our Discovery has not invalidated it since
    (its ``info`` turns None before the plugin drops upstream's cache: trust neither between)."""
    return addr in manager.prefill_info_table and (found is None or found.info is not None)


class DecodeSide:
    """The prefill addresses of one decode process (``host:port``), one record each."""

    def __init__(self, context: PluginContext, canned: CannedRequests) -> None:
        self._context = context
        self._canned = canned
        self._addresses: dict[str, _Address] = {}
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._builder: threading.Thread | None = None
        self._ours = threading.local()  # set while the plugin itself calls upstream's failure handler

    # -- the scheduler thread: reads only -------------------------------------

    def _address(self, addr: str, manager: Any = None) -> _Address:
        """The address's record; a new one asks the builder for its Discovery."""
        found = self._addresses.get(addr)
        if found is None:
            with self._lock:
                found = self._addresses.get(addr)
                if found is None:
                    found = self._addresses[addr] = _Address(manager=manager)
                    self._start_builder()
                    self._queue.put(addr)
        if found.manager is None and manager is not None:
            found.manager = manager
        return found

    # -- building, off the scheduler thread -----------------------------------

    def _start_builder(self) -> None:
        if self._builder is None:
            self._builder = threading.Thread(target=self._build_loop, name="prefill-startup-discoveries",
                                             daemon=True)
            self._builder.start()

    def _build_loop(self) -> None:
        while True:
            addr = self._queue.get()
            record = self._addresses.get(addr)
            if record is None:  # forgotten before it was built
                continue
            try:
                self._build(addr, record)
            except Exception as exc:  # noqa: BLE001 - whatever breaks, this thread must go on for the next address
                log.warning("prefill_startup.upstream_lookup bootstrap=%s reason=%s: %.200s; SGLang's own lookup "
                            "serves this address", addr, type(exc).__name__, str(exc))
                record.upstream = True
                continue
            if self._addresses.get(addr) is not record:  # forgotten while it was being built
                _stop(record, 0)

    def _build(self, addr: str, record: _Address) -> None:
        context = self._context
        discovery = Discovery(addr, policy=context.policy(discovery_policy()), clock=context.clock,
                              rng=context.rng(), name=addr, on_exhausted="return", watch=context.settings.watch)
        discovery.add_listener(lambda snapshot: self._on_change(record, addr, snapshot))
        record.retire = context.publish(discovery)
        discovery.start()
        record.discovery = discovery

    def _on_change(self, record: _Address, addr: str, snapshot: Snapshot) -> None:
        """On the Discovery's thread: an invalidation drops upstream's cached info and
        connections for the address through upstream's own path."""
        manager = record.manager
        if manager is None or snapshot.invalidations == record.invalidations:
            return
        record.invalidations = snapshot.invalidations
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
            records, self._addresses = list(self._addresses.values()), {}
        for record in records:
            _stop(record, timeout)

    def forget(self, addr: str) -> None:
        """Drop the address's Discovery (off the probes too): the next request for it starts a new one."""
        with self._lock:
            record = self._addresses.pop(addr, None)
        if record is not None:
            _stop(record, 0)

    # -- the hooks ------------------------------------------------------------

    def try_ensure(self, original: Callable[..., bool], manager: Any, addr: str) -> bool:
        """AROUND ``CommonKVManager.try_ensure_parallel_info(self, bootstrap_addr)``."""
        record = self._address(addr, manager)
        if record.upstream:
            return original(manager, addr)  # upstream's to serve
        found = record.discovery
        if _cached(manager, addr, found):
            with self._canned.offline():  # upstream's body answers from its cache: never a GET here
                return original(manager, addr)
        info = None if found is None else found.info
        if info is None:
            return False
        # Upstream's body parses, checks and caches it, as if it had fetched it itself.
        with self._canned.answering(addr, info.topology_json()):
            return original(manager, addr)

    def ensure(self, original: Callable[..., Any], queue_: Any, addr_to_reqs: dict[str, list[Any]]) -> Any:
        """AROUND ``DecodePreallocQueue._ensure_prefill_info(self, addr_to_reqs)``."""
        manager = queue_.kv_manager
        held: list[Any] = []
        passed: dict[str, list[Any]] = {}
        failed: list[str] = []
        for addr, reqs in addr_to_reqs.items():
            record = self._address(addr, manager)
            found = record.discovery
            if record.upstream or _cached(manager, addr, found):
                passed[addr] = reqs
                continue
            state = State.INIT if found is None else found.state
            if state not in SETTLED:
                held.extend(reqs)  # within its deadline: no retry counted, nothing aborted
                continue
            # Upstream decides now, not at its next once-a-second slot.
            queue_._ensure_last_attempt_time.pop(addr, None)
            if found is not None and state is State.FAILED:
                snap = found.snapshot()
                log.error("prefill_startup.lookup_failed bootstrap=%s requests=%d: %s; aborting its waiting "
                          "requests now. SGLang's own line that follows (\"Could not fetch prefill parallel info "
                          "... after %d attempts\") is this abort: the attempts and the cause are the ones here",
                          addr, len(reqs), snap.describe(snap.taken_at), queue_._max_ensure_retries)
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


def _stop(record: _Address, timeout: float) -> None:
    if record.discovery is not None:
        record.discovery.stop(timeout)
    if record.retire is not None:
        record.retire()
