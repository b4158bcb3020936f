"""The simulated world: the scenario, its draws, and model bootstrap servers.

Only the network is simulated: every rank is a real driver on its own FakeClock.
The prefill server (:class:`PrefillServer`) refuses connections until it listens at
``R``, then hangs (accepts, never answers) for ``hang_s``, then answers 503 for
``unavailable_s``, then 200; ``ready = R + hang_s + unavailable_s``. With
``capacity`` K, requests beyond K in one (absolute) second get a 503 in any answering
phase. The decode side's lookups meet a :class:`LookupServer`: refused until ``R``,
503 until the prefill instance is complete, then the topology.

One ``R`` per trial, shared by the whole group: the bootstrap server comes up once
for all ranks. Trial ``k`` of ``T`` draws ``R`` uniformly from the k-th of ``T``
equal slices of ``late_start``, a stratified sample of the uniform distribution.
Policies see identical draws: the same ``R`` and start offsets, and rank ``i`` of
trial ``k`` gets ``seeded_rng(f"{seed}/{k}/{i}")`` whatever the policy.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from coordinator.clock import FakeClock, seeded_rng
from coordinator.outcome import Cause, Failure, Outcome
from coordinator.validate import finite, int_in

URL = "http://bootstrap.sim:8998/route"
BOOTSTRAP = "bootstrap.sim:8998"
BUCKET_S = 0.1  # the server's load is counted per 100 ms
# example_payload gives rank i the port 17000 + i, which must stay a valid port.
MAX_RANKS = 65535 - 17000 + 1
# The simulator's time and memory grow with the simulated span: an hour bounds each phase.
MAX_SPAN_S = 3600.0
# An attempt's round trip: the simulated span (and the per-100 ms series) grows with it. A second
# is already far beyond any loopback or LAN round trip the figures are about.
MAX_LATENCY_S = 1.0
# A restart trial is one driver (1,000 take about 5 s): 100,000 about 10 min.
MAX_TRIALS = 100_000
# In the fleet, every rank of every trial is a real driver, and its lag is kept: time and memory
# grow with ranks x trials. 100x the defaults (512 x 20, 15-30 s on 2 cores): 25-50 min.
MAX_RANK_RUNS = 1_000_000

_REFUSED = Outcome.of_failure(Failure.REFUSED, Cause("ConnectionRefusedError", "[Errno 111] Connection refused"))
_HUNG = Outcome.of_failure(Failure.TIMEOUT, Cause("TimeoutError", "no answer (simulated hang)"))
_OK = Outcome.of_status(200, "OK")
_NOT_READY = Outcome.of_status(503, "bootstrap server not ready")
_OVERLOADED = Outcome.of_status(503, "over capacity")


@dataclass(frozen=True)
class Scenario:
    """The simulated bootstrap server and the ranks' start; see the module docstring."""

    late_start: tuple[float, float] = (0.0, 60.0)  # R ~ U[min, max] s, one draw per trial
    unavailable_s: float = 0.0  # 503 phase, after the hang phase
    hang_s: float = 0.0  # accepts and never answers: attempts time out
    capacity: int | None = None  # answers per second; beyond, 503
    start_window_s: float = 0.05  # ranks start uniformly in [0, this)
    latency_s: float = 0.001  # of a refused or answered attempt

    def __post_init__(self) -> None:
        if not isinstance(self.late_start, tuple) or len(self.late_start) != 2:
            raise TypeError("Scenario.late_start must be a (min, max) tuple")
        low, high = (finite("Scenario.late_start", v, positive=False) for v in self.late_start)
        if low > high:
            raise ValueError(f"Scenario.late_start min ({low}) must be <= max ({high})")
        if high > MAX_SPAN_S:
            raise ValueError(f"Scenario.late_start max must be <= {MAX_SPAN_S:g} s, got {high}")
        for name, high in (("unavailable_s", MAX_SPAN_S), ("hang_s", MAX_SPAN_S), ("start_window_s", MAX_SPAN_S),
                           ("latency_s", MAX_LATENCY_S)):
            value = finite(f"Scenario.{name}", getattr(self, name), positive=False)
            if value > high:
                raise ValueError(f"Scenario.{name} must be <= {high:g} s, got {value}")
        if self.capacity is not None:
            int_in(self.capacity, "Scenario.capacity", low=1)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["late_start"] = list(self.late_start)
        return out


@dataclass(frozen=True)
class Trial:
    """The draws of one trial, shared by every policy: when the server listens, when ranks start."""

    index: int
    up_at: float
    starts: tuple[float, ...]


def draw_trials(scenario: Scenario, *, ranks: int, trials: int, seed: int) -> list[Trial]:
    check_counts(ranks, trials)
    low, high = scenario.late_start
    out = []
    for k in range(trials):
        rng = seeded_rng(f"{seed}/{k}")
        up_at = low + (high - low) * (k + rng.random()) / trials
        starts = tuple(rng.random() * scenario.start_window_s for _ in range(ranks))
        out.append(Trial(k, up_at, starts))
    return out


def check_counts(ranks: int, trials: int, names: tuple[str, str] = ("ranks", "trials")) -> None:
    """``ranks`` and ``trials`` within their bounds and within MAX_RANK_RUNS together; ``names``
    for the messages (the CLI's flags)."""
    int_in(ranks, names[0], low=1, high=MAX_RANKS)
    int_in(trials, names[1], low=1, high=MAX_TRIALS)
    if ranks * trials > MAX_RANK_RUNS:
        raise ValueError(f"{names[0]} x {names[1]} must be <= {MAX_RANK_RUNS:,} (the time and memory grow with it), "
                         f"got {ranks} x {trials}")


class PrefillServer:
    """One trial's bootstrap server: answers by phase, and counts what reaches it."""

    def __init__(self, scenario: Scenario, up_at: float) -> None:
        self.up_at = up_at
        self.hang_until = up_at + scenario.hang_s
        self.ready_at = self.hang_until + scenario.unavailable_s
        self.capacity = scenario.capacity
        self.latency = scenario.latency_s
        self.refused = 0
        self.timeouts = 0
        self.statuses: Counter[int] = Counter()
        self.buckets: Counter[int] = Counter()  # answers per 100 ms since up_at
        self._per_second: Counter[int] = Counter()

    def answer(self, t: float, timeout: float) -> tuple[Outcome, float]:
        """The outcome of a PUT arriving at ``t``, and how long the attempt takes."""
        if t < self.up_at:
            self.refused += 1
            return _REFUSED, self.latency
        if t < self.hang_until:
            self.timeouts += 1
            return _HUNG, timeout
        outcome = _OK if t >= self.ready_at else _NOT_READY
        if self.capacity is not None:
            second = math.floor(t)
            self._per_second[second] += 1
            if self._per_second[second] > self.capacity:
                outcome = _OVERLOADED
        assert outcome.status is not None  # every outcome past the hang phase is an answer
        self.statuses[outcome.status] += 1
        self.buckets[int((t - self.up_at) / BUCKET_S)] += 1
        return outcome, self.latency


class SimTransport:
    """The Transport a simulated rank talks through: the shared server, on the rank's clock."""

    def __init__(self, server: PrefillServer, clock: FakeClock) -> None:
        self._server = server
        self._clock = clock

    def attempt(self, url: str, body: bytes, timeout: float) -> Outcome:
        outcome, took = self._server.answer(self._clock.now(), timeout)
        self._clock.advance(took)
        return outcome

    def abort(self) -> None:
        return None  # an attempt takes no wall time: nothing is ever in flight to cut

    def close(self) -> None:
        return None




class LookupServer:
    """The decode side's view of one trial: refused until R, 503 until complete, then the topology."""

    def __init__(self, up_at: float, complete_at: float | None, prefill_ranks: int, latency: float) -> None:
        self.up_at, self.complete_at, self.latency = up_at, complete_at, latency
        self.refused = 0
        self.answered = 0
        self._topology = Outcome.of_status(200, json.dumps({
            "attn_tp_size": prefill_ranks, "attn_cp_size": 1, "dp_size": 1, "pp_size": 1, "page_size": 1,
            "kv_cache_dtype": "auto", "follow_bootstrap_room": True, "enable_dsa_cache_layer_split": False,
            "prefill_http_port": None,
        }))
        self._pending = Outcome.of_status(503, "prefill ranks still registering")

    def answer(self, t: float) -> Outcome:
        if t < self.up_at:
            self.refused += 1
            return _REFUSED
        self.answered += 1
        complete = self.complete_at is not None and t >= self.complete_at
        return self._topology if complete else self._pending


class SimLookupTransport:
    """The LookupTransport a simulated decode rank talks through."""

    def __init__(self, server: LookupServer, clock: FakeClock) -> None:
        self._server = server
        self._clock = clock

    def get(self, url: str, timeout: float) -> Outcome:
        outcome = self._server.answer(self._clock.now())
        self._clock.advance(self._server.latency)
        return outcome

    def abort(self) -> None:
        return None

    def close(self) -> None:
        return None
