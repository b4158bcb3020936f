"""Figures: a policy's results over all trials, and how they are shown (table, JSON, plot)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from coordinator.sim._engine import DecodeShard, PrefillShard, merge_counts
from coordinator.sim._model import BUCKET_S, Scenario, Trial
from states import State


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
class Tally:
    """Figures accumulated over trials, turned into a Result at the end."""

    lags: list[float] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    series: Counter[int] = field(default_factory=Counter)
    refused: int = 0
    timeouts: int = 0
    peak: int = 0
    group_lags: list[float | None] = field(default_factory=list)

    def add(self, trial: Sequence[PrefillShard]) -> None:
        """One trial, from its shards."""
        finals = [f for shard in trial for f in shard.finals]
        ready_at = trial[0].ready_at
        lags = [at - ready_at for state, _, at in finals if state == State.REGISTERED.value]
        self.lags.extend(lags)
        self.reasons.update(str(reason) for _, reason, _ in finals)
        self.statuses.update(merge_counts(shard.statuses for shard in trial))
        buckets = merge_counts(shard.buckets for shard in trial)
        self.series.update(buckets)
        self.refused += sum(shard.refused for shard in trial)
        self.timeouts += sum(shard.timeouts for shard in trial)
        self.peak = max(self.peak, max(buckets.values(), default=0))
        self.group_lags.append(max(lags) if len(lags) == len(finals) else None)


def prefill_result(name: str, tally: Tally, draws: Sequence[Trial], seed: int, wall: float) -> Result:
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


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile: a value that occurred, never an interpolation."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]




@dataclass(frozen=True)
class DecodeResult:
    """One decode policy's figures. Lags are seconds after the prefill instance was complete."""

    policy: str
    decode_ranks: int
    prefill_ranks: int
    trials: int
    seed: int
    got_topology: int
    reasons: Mapping[str, int]
    lag_p50_s: float | None
    lag_p99_s: float | None
    lag_max_s: float | None
    answered_per_rank: float
    refused_per_rank: float
    complete_trials: int  # trials whose prefill instance was complete at all
    wall_s: float

    @property
    def success_rate(self) -> float:
        return self.got_topology / (self.decode_ranks * self.trials)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reasons"] = dict(self.reasons)
        out["success_rate"] = self.success_rate
        return out


def decode_result(name: str, trials: Sequence[Sequence[DecodeShard]], *, decode_ranks: int, prefill_ranks: int,
                  seed: int, wall_s: float) -> DecodeResult:
    lags: list[float] = []
    reasons: Counter[str] = Counter()
    for trial in trials:
        complete_at = trial[0].complete_at
        for state, reason, at in (f for shard in trial for f in shard.finals):
            reasons[str(reason)] += 1
            if state == State.REGISTERED.value and complete_at is not None:
                lags.append(at - complete_at)
    lags.sort()
    total = decode_ranks * len(trials)
    return DecodeResult(
        policy=name, decode_ranks=decode_ranks, prefill_ranks=prefill_ranks, trials=len(trials), seed=seed,
        got_topology=len(lags), reasons=dict(sorted(reasons.items())),
        lag_p50_s=_quantile(lags, 0.50), lag_p99_s=_quantile(lags, 0.99), lag_max_s=lags[-1] if lags else None,
        answered_per_rank=sum(s.answered for t in trials for s in t) / total,
        refused_per_rank=sum(s.refused for t in trials for s in t) / total,
        complete_trials=sum(t[0].complete_at is not None for t in trials), wall_s=wall_s,
    )


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
    return _table(results, _ROWS)


def _table(results: Mapping[str, Any], spec: Sequence[tuple[str, Callable[[Any], str]]]) -> str:
    names = list(results)
    cells = [[label, *(fmt(results[n]) for n in names)] for label, fmt in spec]
    rows = [["", *names], *cells]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    )


def describe(scenario: Scenario, ranks: int, trials: int, seed: int) -> str:
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
    fig.suptitle(describe(scenario, first.ranks, first.trials, first.seed), fontsize=10)
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




_DECODE_ROWS: tuple[tuple[str, Callable[[DecodeResult], str]], ...] = (
    ("got the topology", lambda r: f"{r.success_rate:.1%}"),
    ("lag after complete p50 (s)", lambda r: _seconds(r.lag_p50_s)),
    ("lag after complete p99 (s)", lambda r: _seconds(r.lag_p99_s)),
    ("lag after complete max (s)", lambda r: _seconds(r.lag_max_s)),
    ("lookups answered / decode rank", lambda r: f"{r.answered_per_rank:.2f}"),
    ("refused / decode rank", lambda r: f"{r.refused_per_rank:.2f}"),
    ("ends", lambda r: " ".join(f"{k}:{v}" for k, v in r.reasons.items())),
    ("simulation wall time (s)", lambda r: f"{r.wall_s:.2f}"),
)


def format_decode_table(results: Mapping[str, DecodeResult]) -> str:
    return _table(results, _DECODE_ROWS)
