"""What an instance's main process knows of its drivers: in memory, bounded, read by the probes.

Each member is one driver of one process of the instance, as that process last sent it.
A member whose process has exited reads as FAILED, reason ``gone`` (never as healthy);
a retired driver (stopped, superseded) is removed. Readers get frozen views and never
touch a file or a socket: the probes may read the board from an event loop.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from coordinator.clock import REAL_TIME, Clock
from coordinator.health._probe import Expected
from coordinator.outcome import Cause, Reason
from coordinator.snapshot import Snapshot
from states import State

# A process runs one driver per rank or per prefill address; these bound what a buggy or
# hostile sender can make the main process hold.
MAX_PER_PROCESS = 256
MAX_MEMBERS = 4096


class _Process:
    """A sender's liveness: a pidfd where the kernel has them (it cannot be fooled by a reused
    pid, and polling it reads no file), else a signal 0."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None
        try:
            self._fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._fd = None

    def alive(self) -> bool:
        if self._fd is not None:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            return not poller.poll(0)  # readable once the process has exited
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class Member:
    """One driver of the instance, as the probes take it (``clock`` and ``snapshot()``)."""

    pid: int
    driver: int
    last: Snapshot  # as its process sent it
    alive: bool
    clock: Clock = REAL_TIME  # the senders' clock: monotonic time is one per host

    def snapshot(self) -> Snapshot:
        s = self.last
        if self.alive or (s.state is State.FAILED and s.reason is not None):
            return s
        gone = Cause("ProcessGone", f"process {self.pid} exited; its last state was {s.state.value}")
        return replace(s, state=State.FAILED, reason=Reason.GONE, last_error=gone, next_attempt_at=None)


class Full(Exception):
    """The board holds as many members as it may (for that process, or in all)."""


class Board:
    """The instance's drivers by process and driver number, and what readiness waits for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: dict[int, dict[int, Snapshot]] = {}  # pid -> driver number -> latest
        self._processes: dict[int, _Process] = {}
        self._count = 0
        self._expected: Expected | None = None
        self._roster: Callable[[], Expected | None] | None = None

    def put(self, pid: int, driver: int, snapshot: Snapshot | None) -> None:
        """A driver's latest snapshot (an older one than held is ignored: datagrams may be
        reordered), or None: the driver retired. Raises :class:`Full` past the bounds."""
        with self._lock:
            drivers = self._members.get(pid, {})
            if snapshot is None:
                if drivers.pop(driver, None) is not None:
                    self._count -= 1
                if not drivers and pid in self._members:
                    del self._members[pid]
                    self._processes.pop(pid).close()
                return
            held = drivers.get(driver)
            if held is not None:
                if snapshot.seq >= held.seq:
                    drivers[driver] = snapshot
                return
            if self._count >= MAX_MEMBERS or len(drivers) >= MAX_PER_PROCESS:
                raise Full(f"{self._count} drivers held, {len(drivers)} of process {pid}")
            if pid not in self._members:
                self._members[pid] = drivers
                self._processes[pid] = _Process(pid)
            drivers[driver] = snapshot
            self._count += 1

    def members(self) -> list[Member]:
        """Every driver, by process then driver number: frozen views."""
        with self._lock:
            alive = {pid: process.alive() for pid, process in self._processes.items()}
            return [Member(pid, n, s, alive[pid])
                    for pid, drivers in sorted(self._members.items()) for n, s in sorted(drivers.items())]

    def expect(self, expected: Expected | None) -> None:
        """What readiness waits for from now on (learned from SGLang's server arguments)."""
        self._expected = expected

    def follow(self, roster: Callable[[], Expected | None]) -> None:
        """Where the whole instance's registrations can be read (the node hosting its
        bootstrap server): once it knows them, readiness waits for every rank of the instance."""
        self._roster = roster

    def expected(self) -> Expected | None:
        instance = None if self._roster is None else self._roster()
        return self._expected if instance is None else instance

    def close(self) -> None:
        with self._lock:
            self._members.clear()
            self._count = 0
            for process in self._processes.values():
                process.close()
            self._processes.clear()

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"Board({self._count} members, expected={self._expected!r})"
