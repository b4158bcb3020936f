"""A prefill instance restarts at the same bootstrap address: how long a watching decode
instance hands out the dead rank ports, and how long after the new instance is complete it
has the new ones. Ours (a real watching :class:`~coordinator.Discovery`, polling or
long-polling) against upstream SGLang 0.5.23's heartbeat, on identical draws.

Trial ``k`` draws, from ``seeded_rng(f"{seed}/restart/{k}")`` whatever the model and ``D``:
the restart ``T ~ U[40, 80] s`` (generation A complete before it, its ports dead from it),
``R ~ U[0.05, 0.5] s`` (the new instance is complete R after its server listens again, at
``T + D``), the decode instance's start ``~ U[0, 1) s`` and the seed of its jitter (its check
phase), and upstream's heartbeat phase ``φ ~ U[0, 5) s``. The server refuses
connections during ``[T, T + D)``, then answers 503 (generation B) until complete, then
generation B's topology and ports. A request reaches the server half a round trip
(``latency_s``) after it is sent. The server keeps a connection open after each answer it
does not hold (as SGLang's aiohttp server and ours do), and when it dies at ``T`` the
client sees that connection close half a round trip later (the kernel closes a dead
process's sockets); a held long-poll is reset then.

Upstream's model (no driver): ``GET /health`` at ``φ + 5 k`` fails iff nothing listens at
that instant; after 2 consecutive failures the cached prefill info is dropped, and the next
requests re-fetch it once a second (assuming requests keep arriving) until it is complete.
``/health`` answers 200 as soon as the server listens, so a restart shorter than two
heartbeats is never noticed.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from coordinator import validate
from coordinator.clock import FakeClock, seeded_rng
from coordinator.discovery import DEFAULT_GRACE_S, DEFAULT_WATCH_INTERVAL_S, LONG_POLL_S, REFUSED_GRACE_S, Discovery
from coordinator.outcome import Cause, Failure, Outcome
from coordinator.protocol import (
    GENERATION_HEADER,
    LONG_POLL_HEADER,
    SEEN_PARAM,
    TOPOLOGY_KEY,
    WAIT_PARAM,
    PrefillInfo,
    route_query,
)
from coordinator.sim._model import _REFUSED, BOOTSTRAP, MAX_LATENCY_S, MAX_SPAN_S, MAX_TRIALS
from coordinator.sim._report import _quantile, _table
from coordinator.snapshot import Snapshot
from states import State

POLLING, LONG_POLL, HEARTBEAT = "ours, polling", "ours, long-poll", "upstream, heartbeat"
MODELS = (POLLING, LONG_POLL, HEARTBEAT)
RESTART_AT_S = (40.0, 80.0)  # T: late enough for a steady state (a few long-polls) before it
READY_AFTER_S = (0.05, 0.5)  # R: our ranks re-register within half a second of the server listening
HORIZON_S = 30.0  # after the new instance is complete, the simulation stops
HEARTBEAT_S = 5.0  # SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL
HEARTBEAT_FAILURES = 2  # SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE
LOOKUP_EVERY_S = 1.0  # _ensure_prefill_info: at most one lookup a second per address
WATCHERS = 1000
# The targets of issue 17: lag after the new instance is complete, p99.
LAG_TARGETS_S = {POLLING: 0.5, LONG_POLL: 0.02}
# Issue 20's: the stale window while the prefill instance is down and refusing, p99.
STALE_TARGET_S = 1.0

TARGET = (0, 0, 0, 0)  # the rank the decode instance resolves: its port changes with the restart
PORTS = {"A": 17000, "B": 18000}
_A, _DOWN, _PENDING, _B = "A", "down", "pending", "B"
_TOPOLOGY = json.dumps(PrefillInfo(attn_tp_size=1, attn_cp_size=1, dp_size=1, pp_size=1, page_size=1,
                                   kv_cache_dtype="auto").topology_json())
_TOPOLOGY_QUERY = route_query(TOPOLOGY_KEY)
_RESET = Outcome.of_failure(Failure.RESET, Cause("ConnectionResetError", "[Errno 104] Connection reset by peer"))
_HORIZON = Outcome.of_failure(Failure.CANCELLED, Cause("Cancelled", "the simulation's horizon"))


@dataclass(frozen=True)
class RestartScenario:
    """One restart (down ``down_s``), ``trials`` times; our watch's settings and the round trip."""

    down_s: float
    trials: int = 1000
    seed: int = 0
    watch_interval_s: float = DEFAULT_WATCH_INTERVAL_S
    grace_s: float = DEFAULT_GRACE_S
    long_poll_s: float = LONG_POLL_S
    latency_s: float = 0.001
    # The server keeps a connection open after an answer it does not hold (SGLang's aiohttp
    # server and ours do); False: a close after every answer (a proxy in between, say), so
    # only the checks' pace finds the server down.
    keep_alive: bool = True

    def __post_init__(self) -> None:
        for name, positive in (("down_s", False), ("watch_interval_s", True), ("grace_s", False),
                               ("long_poll_s", True), ("latency_s", False)):
            validate.finite(f"RestartScenario.{name}", getattr(self, name), positive=positive)
        for name, high in (("down_s", MAX_SPAN_S), ("watch_interval_s", MAX_SPAN_S), ("grace_s", MAX_SPAN_S),
                           ("long_poll_s", LONG_POLL_S), ("latency_s", MAX_LATENCY_S)):
            if getattr(self, name) > high:  # long_poll_s: the client caps its wait at LONG_POLL_S
                raise ValueError(f"RestartScenario.{name} must be <= {high:g} s, got {getattr(self, name)}")
        validate.int_in(self.trials, "RestartScenario.trials", low=1, high=MAX_TRIALS)
        validate.int_in(self.seed, "RestartScenario.seed", low=0)
        validate.flag(self.keep_alive, "RestartScenario.keep_alive")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "restart_at_s": list(RESTART_AT_S), "ready_after_s": list(READY_AFTER_S),
                "horizon_s": HORIZON_S, "heartbeat_s": HEARTBEAT_S, "heartbeat_failures": HEARTBEAT_FAILURES}


@dataclass(frozen=True)
class RestartTrial:
    """The draws of one trial, shared by every model (and every ``D``)."""

    index: int
    restart_at: float  # T: the server goes down, generation A's ports die
    down_s: float  # D
    ready_after_s: float  # R
    start_at: float  # the decode instance resolves generation A then: its check phase
    heartbeat_phase_s: float  # upstream's φ
    rng_seed: int  # our decode instance's jitter

    @property
    def back_at(self) -> float:
        return self.restart_at + self.down_s

    @property
    def complete_at(self) -> float:
        return self.back_at + self.ready_after_s

    @property
    def horizon(self) -> float:
        return self.complete_at + HORIZON_S

    def phase(self, t: float) -> str:
        if t < self.restart_at:
            return _A
        if t < self.back_at:
            return _DOWN
        return _PENDING if t < self.complete_at else _B


def draw_restart_trials(scenario: RestartScenario) -> list[RestartTrial]:
    out = []
    for k in range(scenario.trials):
        rng = seeded_rng(f"{scenario.seed}/restart/{k}")
        restart_at = RESTART_AT_S[0] + (RESTART_AT_S[1] - RESTART_AT_S[0]) * rng.random()
        ready_after = READY_AFTER_S[0] + (READY_AFTER_S[1] - READY_AFTER_S[0]) * rng.random()
        start_at = rng.random()
        phase = rng.random() * HEARTBEAT_S
        out.append(RestartTrial(k, restart_at, scenario.down_s, ready_after, start_at, phase, rng.getrandbits(63)))
    return out


class RestartTransport:
    """The LookupTransport of one simulated decode instance: the trial's bootstrap server, by
    phase, on the decode instance's clock. With ``long_poll_s``, it answers as our server
    does: it advertises long-polls and holds a ``&wait=S`` GET while its answer is the one the
    client waits to see change (``&seen=G``: complete with generation G; without: not complete)
    until it changes (the instance completes, or the server dies: the held connection is reset
    at ``T``) or ``S`` passes."""

    def __init__(self, trial: RestartTrial, clock: FakeClock, latency_s: float, long_poll_s: float = 0.0,
                 keep_alive: bool = True) -> None:
        self._trial, self._clock, self._half, self._keep_alive = trial, clock, latency_s / 2, keep_alive
        self.checks: list[float] = []  # when each topology GET reached the server
        self._kept_at: float | None = None  # when the server answered on the connection kept open
        self.on_horizon: Callable[[], object] = lambda: None
        self._answers: dict[tuple[str, bool], Outcome] = {}
        for generation in (_A, _B):
            headers = {GENERATION_HEADER.lower(): generation}
            if long_poll_s:
                headers[LONG_POLL_HEADER.lower()] = f"{long_poll_s:g}"
            rank = json.dumps({"rank_ip": "10.0.0.5", "rank_port": PORTS[generation]})
            self._answers[generation, True] = Outcome.of_status(200, _TOPOLOGY, headers=headers)
            self._answers[generation, False] = Outcome.of_status(200, rank, headers=headers)
            if generation == _B:
                pending = Outcome.of_status(503, "prefill ranks still registering", headers=headers)
                self._answers[_PENDING, True] = self._answers[_PENDING, False] = pending

    def get(self, url: str, timeout: float) -> Outcome:
        trial, now = self._trial, self._clock.now()
        if now >= trial.horizon:
            self.on_horizon()
            return _HORIZON
        query = urlsplit(url).query
        topology = query.startswith(_TOPOLOGY_QUERY)
        params = parse_qs(query)
        waits, seen = params.get(WAIT_PARAM), params.get(SEEN_PARAM)
        arrive = now + self._half
        if topology:
            self.checks.append(arrive)
        phase = trial.phase(arrive)
        answered = arrive
        self._kept_at = None
        if waits and phase == (seen[0] if seen else _PENDING):
            change = trial.restart_at if phase == _A else trial.complete_at if phase == _PENDING else math.inf
            answered = min(arrive + float(waits[0]), change)
            phase = trial.phase(answered)
            if phase == _DOWN:
                self._clock.set(answered + self._half)
                return _RESET
        self._clock.set(answered + self._half)
        if phase == _DOWN:
            return _REFUSED
        if self._keep_alive and not waits:  # a held answer comes with Connection: close
            self._kept_at = answered
        return self._answers[phase, topology]

    def peer_closed(self) -> bool:
        """The kept connection's close reaches the client half a round trip after the server
        died (T): its process exits, the kernel closes its sockets."""
        trial = self._trial
        return self._kept_at is not None and self._kept_at < trial.restart_at <= self._clock.now() - self._half

    def abort(self) -> None:
        return None  # nothing is ever in flight in wall time

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class TrialOutcome:
    """One model on one trial. ``inf``: not within the horizon (upstream: never)."""

    lag_s: float  # new instance complete -> the decode side holds generation B's ports
    stale_s: float  # T -> the decode side stops handing out generation A's ports
    cause: str  # what made it drop generation A's ports
    steady_gaps: tuple[float, ...]  # between two watch requests before T


def _cause_of(snapshot: Snapshot) -> str:
    message = snapshot.last_error.message if snapshot.last_error is not None else ""
    for key, cause in (("generation", "new generation"), ("HTTP 503", "503"), ("refuses", "refused"),
                       ("gone", "gone for grace_s")):
        if key in message:
            return cause
    return "other"


def _ours(trial: RestartTrial, scenario: RestartScenario, long_poll: bool) -> TrialOutcome:
    clock = FakeClock(trial.start_at)
    transport = RestartTransport(trial, clock, scenario.latency_s, scenario.long_poll_s if long_poll else 0.0,
                                 scenario.keep_alive)
    d = Discovery(BOOTSTRAP, clock=clock, rng=seeded_rng(trial.rng_seed), transport=transport, hooks=(),
                  targets=[TARGET], on_exhausted="return", watch=True, watch_interval_s=scenario.watch_interval_s,
                  grace_s=scenario.grace_s)
    transport.on_horizon = d.stop
    seen: dict[str, Snapshot] = {}

    def listen(snapshot: Snapshot) -> None:
        if snapshot.invalidations == 0:
            if snapshot.state is State.REGISTERED:
                seen["resolved"] = snapshot
        elif "invalidated" not in seen:
            seen["invalidated"] = snapshot
        elif snapshot.state is State.REGISTERED:
            seen["updated"] = snapshot
            d.stop()

    d.add_listener(listen)
    d.run(watch=True)
    resolved, invalidated, updated = seen["resolved"], seen.get("invalidated"), seen.get("updated")
    port = updated.info.ranks[TARGET][1] if updated is not None and updated.info is not None else None
    steady = [t for t in transport.checks if resolved.taken_at < t < trial.restart_at]
    return TrialOutcome(
        lag_s=updated.taken_at - trial.complete_at if updated is not None and port == PORTS[_B] else math.inf,
        stale_s=invalidated.taken_at - trial.restart_at if invalidated is not None else math.inf,
        cause=_cause_of(invalidated) if invalidated is not None else "never",
        steady_gaps=tuple(b - a for a, b in zip(steady, steady[1:])),
    )


def _heartbeat(trial: RestartTrial, scenario: RestartScenario) -> TrialOutcome:
    first = trial.restart_at + (trial.heartbeat_phase_s - trial.restart_at) % HEARTBEAT_S  # first beat >= T
    dropped = first + HEARTBEAT_S * (HEARTBEAT_FAILURES - 1)
    if dropped >= trial.back_at:  # fewer failed beats in a row than it takes: never noticed
        return TrialOutcome(math.inf, math.inf, "never", (HEARTBEAT_S,))
    half = scenario.latency_s / 2
    # Lookups at dropped + k s; the first to reach a complete server gets generation B.
    k = max(0, math.ceil((trial.complete_at - half - dropped) / LOOKUP_EVERY_S))
    updated = dropped + k * LOOKUP_EVERY_S + scenario.latency_s
    return TrialOutcome(updated - trial.complete_at, dropped - trial.restart_at,
                        f"{HEARTBEAT_FAILURES} failed heartbeats", (HEARTBEAT_S,))


def run_restart_trial(model: str, trial: RestartTrial, scenario: RestartScenario) -> TrialOutcome:
    """One of :data:`MODELS` on one trial."""
    if model == HEARTBEAT:
        return _heartbeat(trial, scenario)
    if model not in (POLLING, LONG_POLL):
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    return _ours(trial, scenario, long_poll=model == LONG_POLL)


@dataclass(frozen=True)
class RestartResult:
    """One model's figures over every trial of a scenario; ``None`` for a quantile: not within
    the horizon (``HORIZON_S`` after the new instance is complete; upstream: never)."""

    model: str
    down_s: float
    trials: int
    seed: int
    updated: int  # trials whose decode side holds generation B's ports by the horizon
    lag_p50_s: float | None
    lag_p99_s: float | None
    stale_p50_s: float | None
    stale_p99_s: float | None
    dropped_by: Mapping[str, int]  # what ended the stale window, by trial
    interval_s: float | None  # mean time between two watch requests at steady state
    lag_target_s: float | None
    stale_target_s: float | None
    # Per trial, in trial order (inf: never), and the draws: kept out of to_dict.
    lags: tuple[float, ...] = field(repr=False)
    stale: tuple[float, ...] = field(repr=False)
    draws: tuple[RestartTrial, ...] = field(repr=False)

    @property
    def requests_per_s(self) -> float | None:
        """Per watching decode instance, at steady state."""
        return None if not self.interval_s else 1 / self.interval_s

    def lag_met(self) -> bool | None:
        return None if self.lag_target_s is None else _within(self.lag_p99_s, self.lag_target_s)

    def stale_met(self) -> bool | None:
        return None if self.stale_target_s is None else _within(self.stale_p99_s, self.stale_target_s)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("lags", "stale", "draws")}
        out["dropped_by"] = dict(self.dropped_by)
        rate = self.requests_per_s
        out.update(requests_per_s=rate, requests_per_s_per_1000_watchers=None if rate is None else rate * WATCHERS,
                   lag_met=self.lag_met(), stale_met=self.stale_met())
        return out

    def cells(self) -> list[tuple[str, str]]:
        """The table's rows for this model: (label, text)."""
        return [(label, fmt(self)) for label, fmt in _ROWS]


def _within(value: float | None, target: float) -> bool:
    return value is not None and value <= target


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else value


def _result(model: str, scenario: RestartScenario, draws: Sequence[RestartTrial],
            outcomes: Sequence[TrialOutcome]) -> RestartResult:
    lags = sorted(o.lag_s for o in outcomes)
    stale = sorted(o.stale_s for o in outcomes)
    gaps = [g for o in outcomes for g in o.steady_gaps]
    return RestartResult(
        model=model, down_s=scenario.down_s, trials=scenario.trials, seed=scenario.seed,
        updated=sum(math.isfinite(x) for x in lags),
        lag_p50_s=_finite(_quantile(lags, 0.50)), lag_p99_s=_finite(_quantile(lags, 0.99)),
        stale_p50_s=_finite(_quantile(stale, 0.50)), stale_p99_s=_finite(_quantile(stale, 0.99)),
        dropped_by=dict(sorted(Counter(o.cause for o in outcomes).items())),
        interval_s=sum(gaps) / len(gaps) if gaps else None,
        lag_target_s=LAG_TARGETS_S.get(model),
        stale_target_s=None if model == HEARTBEAT else STALE_TARGET_S,
        lags=tuple(o.lag_s for o in outcomes), stale=tuple(o.stale_s for o in outcomes), draws=tuple(draws),
    )


def compare_restart(scenario: RestartScenario, models: Sequence[str] = MODELS) -> dict[str, RestartResult]:
    """Each of ``models`` (every model of :data:`MODELS` by default) on the same draws."""
    draws = draw_restart_trials(scenario)
    return {model: _result(model, scenario, draws, [run_restart_trial(model, t, scenario) for t in draws])
            for model in models}


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.3f}"


def _target(met: bool | None, target: float | None) -> str:
    if met is None or target is None:
        return "-"
    return f"<= {target:g} s: {'met' if met else 'missed'}"


def _rate(r: RestartResult, watchers: int) -> str:
    rate = r.requests_per_s
    return "-" if rate is None else f"{rate * watchers:,.0f}" if watchers > 1 else f"{rate:.3f}"


_ROWS: tuple[tuple[str, Callable[[RestartResult], str]], ...] = (
    ("new ports by the horizon", lambda r: f"{r.updated}/{r.trials}"),
    ("lag after new instance complete p50 (s)", lambda r: _seconds(r.lag_p50_s)),
    ("lag after new instance complete p99 (s)", lambda r: _seconds(r.lag_p99_s)),
    ("lag p99 target", lambda r: _target(r.lag_met(), r.lag_target_s)),
    ("stale window after restart p50 (s)", lambda r: _seconds(r.stale_p50_s)),
    ("stale window after restart p99 (s)", lambda r: _seconds(r.stale_p99_s)),
    ("stale p99 target", lambda r: _target(r.stale_met(), r.stale_target_s)),
    ("stale ports dropped by", lambda r: " ".join(f"{k}:{v}" for k, v in r.dropped_by.items())),
    ("requests/s per watcher, steady", lambda r: _rate(r, 1)),
    (f"requests/s, {WATCHERS:,} watchers", lambda r: _rate(r, WATCHERS)),
)


def format_restart_table(results: Mapping[str, RestartResult]) -> str:
    """A plain-text table, one column per model."""
    return _table(results, _ROWS)


def describe_restart(scenario: RestartScenario) -> str:
    closes = " or at once when the kept connection closes" if scenario.keep_alive else " (no kept connection)"
    return (f"prefill instance restarts at T ~ U[{RESTART_AT_S[0]:g}, {RESTART_AT_S[1]:g}] s, down "
            f"D = {scenario.down_s:g} s, complete R ~ U[{READY_AFTER_S[0]:g}, {READY_AFTER_S[1]:g}] s after it "
            f"listens again, new ports; {scenario.trials} trials (seed {scenario.seed}); ours: a check every "
            f"{scenario.watch_interval_s:g} s x U[0.5, 1.5]{closes}, grace {scenario.grace_s:g} s "
            f"({REFUSED_GRACE_S:g} s refused), long-poll {scenario.long_poll_s:g} s; upstream: /health every "
            f"{HEARTBEAT_S:g} s, {HEARTBEAT_FAILURES} failures; round trip {scenario.latency_s * 1e3:g} ms")
