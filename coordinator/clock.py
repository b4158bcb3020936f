"""The only place that reads time, sleeps, or seeds randomness."""

from __future__ import annotations

import random
import threading
import time
from typing import Protocol


class Rng(Protocol):
    """What the policy draws jitter from: a ``random.Random`` in practice."""

    def random(self) -> float: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale; only differences mean anything."""

    def sleep(self, seconds: float, interrupt: threading.Event | None = None) -> None:
        """Wait ``seconds``; return early once ``interrupt`` is set."""


class SystemClock:
    """Real monotonic time; sleeping waits on an event so ``stop()`` can cut it short."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, interrupt: threading.Event | None = None) -> None:
        if seconds <= 0:
            return
        if interrupt is None:
            time.sleep(seconds)
        else:
            interrupt.wait(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """Virtual time for tests and simulation: ``sleep`` advances at once and is recorded."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float, interrupt: threading.Event | None = None) -> None:
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        with self._lock:
            self._now += seconds

    def set(self, now: float) -> None:
        """Jump to an absolute time (the simulator's event loop); never backwards."""
        with self._lock:
            if now < self._now:
                raise ValueError(f"time cannot go backwards: {now} < {self._now}")
            self._now = now

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now})"


# Sockets' deadlines and servers' time limits are real time, whatever clock a driver runs on
# (tests drive drivers on a FakeClock, never the kernel's socket timeouts).
REAL_TIME = SystemClock()


def entropy_rng() -> random.Random:
    """A generator seeded from OS entropy: ranks that fail together must not draw together."""
    return random.Random()


def seeded_rng(seed: int | str) -> random.Random:
    """A reproducible generator (simulation, tests)."""
    return random.Random(seed)
