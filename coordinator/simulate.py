"""A discrete-event simulation of a prefill group registering with a late bootstrap server.

Every rank is a real :class:`~coordinator.registration.Registration` (its transitions
Machine, its :class:`~coordinator.policy.RetryPolicy`) on its own :class:`FakeClock`;
only the network is simulated. The event loop keeps a heap of ``(time, rank)``: it sets
the earliest rank's clock to that time and polls it until it is terminal or waits in
BACKOFF, then pushes its ``next_attempt_at``. All clocks read the same simulated time,
so upstream's jitter, which reads the clock, is as correlated across ranks as it is on
a host whose processes share one monotonic clock.

The server model (:class:`Scenario`): it refuses connections until it listens at ``R``,
then hangs (accepts, never answers) for ``hang_s``, then answers 503 for
``unavailable_s``, then 200; ``ready = R + hang_s + unavailable_s``. With ``capacity``
K, requests beyond K in one (absolute) second get a 503 in any answering phase.

One ``R`` per trial, shared by the whole group: the bootstrap server comes up once for
all ranks. A figure aggregates ``trials`` trials; trial ``k`` of ``T`` draws ``R``
uniformly from the k-th of ``T`` equal slices of ``late_start``, a stratified sample
of the uniform distribution (so 20 trials estimate a success rate to ~1/T, where
independent draws would be off by ~10 points). Policies compared by :func:`compare`
see identical draws: the same ``R`` and start offsets, and rank ``i`` of trial ``k``
gets ``seeded_rng(f"{seed}/{k}/{i}")`` whatever the policy.

Lag is measured from ``ready``, the first moment a PUT could get a 200; with neither
a hang nor a 503 phase that is ``R``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from coordinator.argtypes import count
from coordinator.validate import finite
from coordinator.clock import FakeClock, SystemClock, seeded_rng
from coordinator.outcome import Cause, Failure, Outcome
from coordinator.payload import example_payload
from coordinator.policy import RetryPolicy
from coordinator.registration import Registration
from coordinator.snapshot import Snapshot
from states import State

URL = "http://bootstrap.sim:8998/route"
BUCKET_S = 0.1  # the server's load is counted per 100 ms
DEFAULT_RANKS = 512
DEFAULT_TRIALS = 20
# example_payload gives rank i the port 17000 + i, which must stay a valid port.
MAX_RANKS = 65535 - 17000 + 1
EXIT_OK, EXIT_USAGE = 0, 2

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
        for name in ("unavailable_s", "hang_s", "start_window_s", "latency_s"):
            finite(f"Scenario.{name}", getattr(self, name), positive=False)
        if self.capacity is not None:
            if isinstance(self.capacity, bool) or not isinstance(self.capacity, int):
                raise TypeError(f"Scenario.capacity must be an int or None, got {type(self.capacity).__name__}")
            if self.capacity < 1:
                raise ValueError(f"Scenario.capacity must be >= 1, got {self.capacity}")

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
    _check_counts(ranks, trials)
    low, high = scenario.late_start
    out = []
    for k in range(trials):
        rng = seeded_rng(f"{seed}/{k}")
        up_at = low + (high - low) * (k + rng.random()) / trials
        starts = tuple(rng.random() * scenario.start_window_s for _ in range(ranks))
        out.append(Trial(k, up_at, starts))
    return out


def _check_counts(ranks: int, trials: int) -> None:
    for name, value, high in (("ranks", ranks, MAX_RANKS), ("trials", trials, None)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1 or (high is not None and value > high):
            raise ValueError(f"{name} must be in [1, {high or 'inf'}], got {value}")


class _Server:
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

    def __init__(self, server: _Server, clock: FakeClock) -> None:
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


@dataclass(frozen=True)
class Result:
    """One policy's figures over all trials. Lags are seconds after the server was ready."""

    policy: str
    ranks: int
    trials: int
    seed: int
    up_at: tuple[float, ...]  # R of each trial
    registered: int
    reasons: Mapping[str, int]  # terminal reason -> ranks
    lag_p50_s: float | None
    lag_p99_s: float | None
    lag_max_s: float | None
    refused_per_rank: float
    handled_per_rank: float  # any HTTP answer, 503 included
    timeouts_per_rank: float
    statuses: Mapping[int, int]
    peak_handled_per_100ms: int  # the busiest 100 ms of any trial
    group_lag_s: float | None  # worst trial: ready -> last rank registered; None if a rank never was
    complete_trials: int
    wall_s: float
    # For the figure, kept out of to_dict: sorted lags, and answers per 100 ms since R summed over trials.
    lags: tuple[float, ...] = field(repr=False)
    handled_series: tuple[int, ...] = field(repr=False)

    @property
    def success_rate(self) -> float:
        return self.registered / (self.ranks * self.trials)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("lags", "handled_series")}
        out["up_at"] = list(self.up_at)
        out["reasons"] = dict(self.reasons)
        out["statuses"] = {str(k): v for k, v in sorted(self.statuses.items())}
        out["success_rate"] = self.success_rate
        return out


@dataclass
class _Tally:
    """Figures accumulated over trials, turned into a Result at the end."""

    lags: list[float] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    series: Counter[int] = field(default_factory=Counter)
    refused: int = 0
    timeouts: int = 0
    peak: int = 0
    group_lags: list[float | None] = field(default_factory=list)

    def add(self, server: _Server, finals: list[Snapshot]) -> None:
        lags = [s.taken_at - server.ready_at for s in finals if s.state is State.REGISTERED]
        self.lags.extend(lags)
        self.reasons.update(str(s.reason) for s in finals)
        self.statuses.update(server.statuses)
        self.series.update(server.buckets)
        self.refused += server.refused
        self.timeouts += server.timeouts
        self.peak = max(self.peak, max(server.buckets.values(), default=0))
        self.group_lags.append(max(lags) if len(lags) == len(finals) else None)


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile: a value that occurred, never an interpolation."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _settle(reg: Registration, clock: FakeClock) -> Snapshot:
    """Poll until terminal or waiting in BACKOFF for a later time."""
    while True:
        snap = reg.poll()
        if snap.terminal:
            return snap
        if snap.state is State.BACKOFF:
            assert snap.next_attempt_at is not None
            if snap.next_attempt_at > clock.now():
                return snap


def _run_trial(scenario: Scenario, policy: RetryPolicy, trial: Trial, seed: int) -> tuple[_Server, list[Snapshot]]:
    server = _Server(scenario, trial.up_at)
    ranks = len(trial.starts)
    clocks = [FakeClock(start) for start in trial.starts]
    regs = [
        Registration(
            URL,
            example_payload(i, ranks),
            policy=policy,
            clock=clock,
            rng=seeded_rng(f"{seed}/{trial.index}/{i}"),
            transport=SimTransport(server, clock),
            hooks=(),  # a simulated fleet's log lines and metrics would cost more than the fleet
            on_exhausted="return",
        )
        for i, clock in enumerate(clocks)
    ]
    # Ties go to the lower rank: the order, hence the figures, depend on the seed alone.
    heap = [(start, i) for i, start in enumerate(trial.starts)]
    heapq.heapify(heap)
    while heap:
        t, i = heapq.heappop(heap)
        clocks[i].set(t)
        snap = _settle(regs[i], clocks[i])
        if not snap.terminal:
            assert snap.next_attempt_at is not None
            heapq.heappush(heap, (snap.next_attempt_at, i))
    return server, [reg.snapshot() for reg in regs]


def _run_policy(name: str, scenario: Scenario, policy: RetryPolicy, draws: list[Trial], seed: int) -> Result:
    # The real clock measures only the simulator's own cost; simulated time is the FakeClocks'.
    wall_clock = SystemClock()
    began = wall_clock.now()
    tally = _Tally()
    for trial in draws:
        tally.add(*_run_trial(scenario, policy, trial, seed))
    wall = wall_clock.now() - began
    ranks, trials = len(draws[0].starts), len(draws)
    lags = tuple(sorted(tally.lags))
    span = max(tally.series, default=-1) + 1
    complete = [g for g in tally.group_lags if g is not None]
    total = ranks * trials
    return Result(
        policy=name,
        ranks=ranks,
        trials=trials,
        seed=seed,
        up_at=tuple(t.up_at for t in draws),
        registered=len(lags),
        reasons=dict(sorted(tally.reasons.items())),
        lag_p50_s=_quantile(lags, 0.50),
        lag_p99_s=_quantile(lags, 0.99),
        lag_max_s=lags[-1] if lags else None,
        refused_per_rank=tally.refused / total,
        handled_per_rank=sum(tally.statuses.values()) / total,
        timeouts_per_rank=tally.timeouts / total,
        statuses=dict(sorted(tally.statuses.items())),
        peak_handled_per_100ms=tally.peak,
        group_lag_s=max(complete) if len(complete) == trials else None,
        complete_trials=len(complete),
        wall_s=wall,
        lags=lags,
        handled_series=tuple(tally.series[b] for b in range(span)),
    )


def simulate(
    scenario: Scenario,
    policy: RetryPolicy,
    *,
    ranks: int = DEFAULT_RANKS,
    seed: int = 0,
    trials: int = DEFAULT_TRIALS,
    name: str = "policy",
) -> Result:
    """Run ``trials`` trials of ``ranks`` real Registrations under ``policy``."""
    return _run_policy(name, scenario, policy, draw_trials(scenario, ranks=ranks, trials=trials, seed=seed), seed)


def default_policies() -> dict[str, RetryPolicy]:
    return {"ours": RetryPolicy(), "upstream": RetryPolicy.sglang_pr25125()}


def compare(
    scenario: Scenario,
    policies: Mapping[str, RetryPolicy] | None = None,
    *,
    ranks: int = DEFAULT_RANKS,
    seed: int = 0,
    trials: int = DEFAULT_TRIALS,
) -> dict[str, Result]:
    """Each policy on the same draws; by default "ours" (RetryPolicy()) and "upstream"."""
    draws = draw_trials(scenario, ranks=ranks, trials=trials, seed=seed)
    chosen = default_policies() if policies is None else policies
    return {name: _run_policy(name, scenario, p, draws, seed) for name, p in chosen.items()}


# -- presentation -------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


_ROWS: tuple[tuple[str, Callable[[Result], str]], ...] = (
    ("registered", lambda r: f"{r.success_rate:.1%}"),
    ("lag after ready p50 (s)", lambda r: _seconds(r.lag_p50_s)),
    ("lag after ready p99 (s)", lambda r: _seconds(r.lag_p99_s)),
    ("lag after ready max (s)", lambda r: _seconds(r.lag_max_s)),
    ("whole group registered (s)", lambda r: _seconds(r.group_lag_s)),
    ("trials all registered", lambda r: f"{r.complete_trials}/{r.trials}"),
    ("refused probes / rank", lambda r: f"{r.refused_per_rank:.2f}"),
    ("answered requests / rank", lambda r: f"{r.handled_per_rank:.3f}"),
    ("timed-out requests / rank", lambda r: f"{r.timeouts_per_rank:.2f}"),
    ("peak answered / 100 ms", lambda r: str(r.peak_handled_per_100ms)),
    ("answers by status", lambda r: " ".join(f"{k}:{v}" for k, v in r.statuses.items()) or "-"),
    ("ends", lambda r: " ".join(f"{k}:{v}" for k, v in r.reasons.items())),
    ("simulation wall time (s)", lambda r: f"{r.wall_s:.2f}"),
)


def format_table(results: Mapping[str, Result]) -> str:
    """A plain-text table, one column per policy."""
    names = list(results)
    cells = [[label, *(fmt(results[n]) for n in names)] for label, fmt in _ROWS]
    rows = [["", *names], *cells]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    )


def _describe(scenario: Scenario, ranks: int, trials: int, seed: int) -> str:
    low, high = scenario.late_start
    listens = f"R = {low:g} s" if low == high else f"R ~ U[{low:g}, {high:g}] s"
    parts = [f"{ranks} ranks x {trials} trials (seed {seed}), server listens at {listens}"]
    if scenario.hang_s:
        parts.append(f"then hangs {scenario.hang_s:g} s")
    if scenario.unavailable_s:
        parts.append(f"then answers 503 for {scenario.unavailable_s:g} s")
    if scenario.capacity is not None:
        parts.append(f"capacity {scenario.capacity}/s")
    return ", ".join(parts)


def write_plot(results: Mapping[str, Result], scenario: Scenario, path: str) -> None:
    """Answered requests per second over time and the registration-lag CDF, policies overlaid."""
    # Lazy, and without pyplot: plotting is an optional extra and must not touch global state.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    rate_ax, cdf_ax = fig.subplots(1, 2)
    first = next(iter(results.values()))
    fig.suptitle(_describe(scenario, first.ranks, first.trials, first.seed), fontsize=10)
    for name, r in results.items():
        times = [b * BUCKET_S for b in range(len(r.handled_series) + 1)]
        rates = [c / BUCKET_S / r.trials for c in r.handled_series]
        rate_ax.stairs(rates, times, label=f"{name} (peak {r.peak_handled_per_100ms} per 100 ms)")
        cdf = [(k + 1) / (r.ranks * r.trials) for k in range(len(r.lags))]
        cdf_ax.step(r.lags, cdf, where="post", label=f"{name}: {r.success_rate:.1%} registered")
    ready = scenario.hang_s + scenario.unavailable_s
    if ready:
        rate_ax.axvline(ready, color="grey", linestyle=":", label="server ready")
    rate_ax.set(xlabel="seconds since the server began listening (R)",
                ylabel="requests answered per second (mean per trial, 100 ms bins)",
                title="load on the bootstrap server")
    cdf_ax.set(xscale="log", ylim=(0, 1.02), xlabel="seconds after the server was ready",
               ylabel="fraction of ranks registered", title="registration lag (CDF)")
    for ax in (rate_ax, cdf_ax):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.savefig(path, dpi=110)


# -- command line ---------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options, on ``parser`` (``prefill-startup simulate`` or ``-m``)."""
    parser.add_argument("--ranks", type=count, default=DEFAULT_RANKS, help=f"ranks per trial (default {DEFAULT_RANKS})")
    parser.add_argument("--trials", type=count, default=DEFAULT_TRIALS,
                        help=f"trials, each with its own R; figures aggregate them (default {DEFAULT_TRIALS}; "
                             "each costs seconds: the defaults take over a minute)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same figures (default 0)")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--late-start", type=float, nargs=2, metavar=("MIN", "MAX"), default=(0.0, 60.0),
                      help="the server listens at R ~ U[MIN, MAX] s, one R per trial (default 0 60)")
    when.add_argument("--server-up-at", type=float, metavar="S", help="the server listens at exactly S s")
    parser.add_argument("--unavailable", type=float, default=0.0, metavar="S", help="then answers 503 for S s")
    parser.add_argument("--hang", type=float, default=0.0, metavar="S",
                        help="after R, accepts but never answers for S s (before any 503 phase)")
    parser.add_argument("--capacity", type=count, metavar="K", help="answers at most K requests per second; beyond, 503")
    parser.add_argument("--start-window", type=float, default=0.05, metavar="S",
                        help="ranks start uniformly within S s (default 0.05)")
    parser.add_argument("--latency", type=float, default=0.001, metavar="S",
                        help="duration of a refused or answered attempt (default 0.001)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG (needs prefill-startup[plot])")


def scenario_from(args: argparse.Namespace) -> Scenario:
    late = (args.server_up_at, args.server_up_at) if args.server_up_at is not None else tuple(args.late_start)
    return Scenario(
        late_start=late,
        unavailable_s=args.unavailable,
        hang_s=args.hang,
        capacity=args.capacity,
        start_window_s=args.start_window,
        latency_s=args.latency,
    )


def run(args: argparse.Namespace) -> int:
    """Compare ours and upstream; print the table (or JSON); optionally write the PNG."""
    try:
        scenario = scenario_from(args)
        _check_counts(args.ranks, args.trials)
    except (TypeError, ValueError) as exc:
        print(f"simulate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.plot:
        try:  # before the simulation: a missing extra should not cost its run time
            import matplotlib  # noqa: F401
        except ImportError:
            print("simulate: --plot needs matplotlib: pip install 'prefill-startup[plot]'", file=sys.stderr)
            return EXIT_USAGE
    results = compare(scenario, ranks=args.ranks, seed=args.seed, trials=args.trials)
    if args.json:
        print(json.dumps({
            "scenario": scenario.to_dict(),
            "ranks": args.ranks,
            "trials": args.trials,
            "seed": args.seed,
            "results": {name: r.to_dict() for name, r in results.items()},
        }, indent=2))
    else:
        print(_describe(scenario, args.ranks, args.trials, args.seed))
        print(format_table(results))
    if args.plot:
        write_plot(results, scenario, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coordinator.simulate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
