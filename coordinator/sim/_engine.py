"""The event loop: real drivers on FakeClocks, stepped in simulated-time order.

The loop keeps a heap of ``(time, rank)``: it sets the earliest rank's clock to that
time and polls it until it is settled or waits in BACKOFF, then pushes its
``next_attempt_at``. All clocks read the same simulated time, so upstream's jitter,
which reads the clock, is as correlated across ranks as on a host whose processes
share one monotonic clock.

Work is spread over worker processes by trial and, when ranks cannot affect one
another (no server capacity), by shards of ranks; every shard returns plain counts,
merged in trial and rank order, so the figures for a seed do not depend on the
number of workers.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

from coordinator.clock import FakeClock, seeded_rng
from coordinator.discovery import Discovery
from coordinator.policy import Policy
from coordinator.protocol import example_payload
from coordinator.registration import Registration
from coordinator.sim._model import (
    BOOTSTRAP,
    URL,
    LookupServer,
    PrefillServer,
    Scenario,
    SimLookupTransport,
    SimTransport,
    Trial,
)
from coordinator.snapshot import Snapshot
from states import State

J = TypeVar("J")
R = TypeVar("R")

# (state, reason, taken_at) of each rank at its end: all a figure needs, and cheap to pickle.
Final = tuple[str, "str | None", float]


class _Stepped(Protocol):
    """What the loop needs of a driver: a Registration or a Discovery."""

    def poll(self) -> Snapshot: ...

    def snapshot(self) -> Snapshot: ...


def _settle(driver: _Stepped, clock: FakeClock) -> Snapshot:
    """Poll until settled or waiting in BACKOFF for a later time."""
    while True:
        snap = driver.poll()
        if snap.settled:
            return snap
        if snap.state is State.BACKOFF:
            assert snap.next_attempt_at is not None
            if snap.next_attempt_at > clock.now():
                return snap


def run_drivers(drivers: Sequence[_Stepped], clocks: Sequence[FakeClock], starts: Sequence[float]) -> list[Final]:
    """Step every driver in simulated-time order until each is settled."""
    # Ties go to the lower rank: the order, hence the figures, depend on the seed alone.
    heap = [(start, i) for i, start in enumerate(starts)]
    heapq.heapify(heap)
    while heap:
        t, i = heapq.heappop(heap)
        clocks[i].set(t)
        snap = _settle(drivers[i], clocks[i])
        if not snap.settled:
            assert snap.next_attempt_at is not None
            heapq.heappush(heap, (snap.next_attempt_at, i))
    return [(d.snapshot().state.value, d.snapshot().reason, d.snapshot().taken_at) for d in drivers]


@dataclass(frozen=True)
class PrefillShard:
    """Ranks ``[first, stop)`` of one trial, and what the server saw of them."""

    trial: int
    ready_at: float
    finals: tuple[Final, ...]
    refused: int = 0
    timeouts: int = 0
    statuses: tuple[tuple[int, int], ...] = ()
    buckets: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class PrefillJob:
    scenario: Scenario
    policy: Policy
    trial: Trial
    seed: int
    first: int
    stop: int


def prefill_shard(job: PrefillJob) -> PrefillShard:
    server = PrefillServer(job.scenario, job.trial.up_at)
    total = len(job.trial.starts)
    ranks = range(job.first, job.stop)
    clocks = [FakeClock(job.trial.starts[i]) for i in ranks]
    regs = [
        Registration(
            URL,
            example_payload(i, total),
            policy=job.policy,
            clock=clock,
            rng=seeded_rng(f"{job.seed}/{job.trial.index}/{i}"),
            transport=SimTransport(server, clock),
            hooks=(),  # a simulated fleet's log lines and metrics would cost more than the fleet
            on_exhausted="return",
        )
        for i, clock in zip(ranks, clocks)
    ]
    finals = run_drivers(regs, clocks, [job.trial.starts[i] for i in ranks])
    return PrefillShard(job.trial.index, server.ready_at, tuple(finals), server.refused, server.timeouts,
                        tuple(server.statuses.items()), tuple(server.buckets.items()))


@dataclass(frozen=True)
class DecodeJob:
    policy: Policy
    trial: int
    seed: int
    up_at: float
    complete_at: float | None
    prefill_ranks: int
    latency_s: float
    starts: tuple[float, ...]
    first: int
    stop: int


@dataclass(frozen=True)
class DecodeShard:
    trial: int
    complete_at: float | None
    finals: tuple[Final, ...]
    refused: int
    answered: int


def decode_shard(job: DecodeJob) -> DecodeShard:
    server = LookupServer(job.up_at, job.complete_at, job.prefill_ranks, job.latency_s)
    ranks = range(job.first, job.stop)
    clocks = [FakeClock(job.starts[i]) for i in ranks]
    drivers = [
        Discovery(BOOTSTRAP, policy=job.policy, clock=clock, rng=seeded_rng(f"{job.seed}/{job.trial}/decode/{i}"),
                  transport=SimLookupTransport(server, clock), hooks=(), on_exhausted="return")
        for i, clock in zip(ranks, clocks)
    ]
    finals = run_drivers(drivers, clocks, [job.starts[i] for i in ranks])
    return DecodeShard(job.trial, job.complete_at, tuple(finals), server.refused, server.answered)


def shards(count: int, workers: int) -> list[tuple[int, int]]:
    """``[first, stop)`` ranges splitting ``count`` ranks in ``workers`` contiguous parts."""
    parts = max(1, min(workers, count))
    bounds = [count * k // parts for k in range(parts + 1)]
    return list(zip(bounds, bounds[1:]))


def run_jobs(fn: Callable[[J], R], jobs: Iterable[J], workers: int) -> list[R]:
    """``fn`` over ``jobs``, in order; in ``workers`` processes when more than one."""
    if workers <= 1:
        return [fn(job) for job in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(fn, jobs))


def merge_counts(pairs: Iterable[tuple[tuple[int, int], ...]]) -> Counter[int]:
    total: Counter[int] = Counter()
    for items in pairs:
        total.update(dict(items))
    return total
