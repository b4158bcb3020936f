"""The restart scenario's figures (the model: :mod:`coordinator.sim._restart_model`; the run:
:mod:`coordinator.sim._restart_run`): one model's trials summed up, and how they are shown."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coordinator.sim._report import _quantile, _table
from coordinator.sim._restart_model import (
    HEARTBEAT_FAILURES,
    HEARTBEAT_S,
    READY_AFTER_S,
    RESTART_AT_S,
    RestartModel,
    RestartScenario,
    RestartTrial,
)
from coordinator.sim._restart_run import TrialOutcome
from coordinator.watch import REFUSED_GRACE_S

WATCHERS = 1000
# The targets of issue 17: lag after the new instance is complete, p99.
LAG_TARGETS_S = {RestartModel.POLLING: 0.5, RestartModel.LONG_POLL: 0.02}
# Issue 20's: the stale window while the prefill instance is down and refusing, p99.
STALE_TARGET_S = 1.0


@dataclass(frozen=True)
class RestartResult:
    """One model on every trial of a scenario, in trial order; its figures are worked out from
    them. ``None`` for a quantile: not within the horizon (``HORIZON_S`` after the new instance
    is complete; upstream: never)."""

    model: RestartModel
    scenario: RestartScenario
    draws: tuple[RestartTrial, ...] = field(repr=False)
    outcomes: tuple[TrialOutcome, ...] = field(repr=False)

    @property
    def down_s(self) -> float:
        return self.scenario.down_s

    @property
    def trials(self) -> int:
        return self.scenario.trials

    @property
    def seed(self) -> int:
        return self.scenario.seed

    @property
    def lags(self) -> tuple[float, ...]:
        """Per trial (inf: never)."""
        return tuple(o.lag_s for o in self.outcomes)

    @property
    def stale(self) -> tuple[float, ...]:
        """Per trial (inf: never)."""
        return tuple(o.stale_s for o in self.outcomes)

    @property
    def updated(self) -> int:
        """Trials whose decode side holds generation B's ports by the horizon."""
        return sum(math.isfinite(x) for x in self.lags)

    @property
    def lag_p50_s(self) -> float | None:
        return _finite_quantile(self.lags, 0.50)

    @property
    def lag_p99_s(self) -> float | None:
        return _finite_quantile(self.lags, 0.99)

    @property
    def stale_p50_s(self) -> float | None:
        return _finite_quantile(self.stale, 0.50)

    @property
    def stale_p99_s(self) -> float | None:
        return _finite_quantile(self.stale, 0.99)

    @property
    def dropped_by(self) -> dict[str, int]:
        """What ended the stale window, by trial."""
        return dict(sorted(Counter(o.cause for o in self.outcomes).items()))

    @property
    def interval_s(self) -> float | None:
        """Mean time between two watch requests at steady state."""
        gaps = [g for o in self.outcomes for g in o.steady_gaps]
        return sum(gaps) / len(gaps) if gaps else None

    @property
    def lag_target_s(self) -> float | None:
        return LAG_TARGETS_S.get(self.model)

    @property
    def stale_target_s(self) -> float | None:
        return None if self.model is RestartModel.HEARTBEAT else STALE_TARGET_S

    @property
    def requests_per_s(self) -> float | None:
        """Per watching decode instance, at steady state."""
        interval = self.interval_s
        return None if not interval else 1 / interval

    def lag_met(self) -> bool | None:
        target = self.lag_target_s
        return None if target is None else _within(self.lag_p99_s, target)

    def stale_met(self) -> bool | None:
        target = self.stale_target_s
        return None if target is None else _within(self.stale_p99_s, target)

    def to_dict(self) -> dict[str, Any]:
        rate = self.requests_per_s
        return {
            "model": self.model.value, "down_s": self.down_s, "trials": self.trials, "seed": self.seed,
            "updated": self.updated, "lag_p50_s": self.lag_p50_s, "lag_p99_s": self.lag_p99_s,
            "stale_p50_s": self.stale_p50_s, "stale_p99_s": self.stale_p99_s, "dropped_by": self.dropped_by,
            "interval_s": self.interval_s, "lag_target_s": self.lag_target_s, "stale_target_s": self.stale_target_s,
            "requests_per_s": rate, "requests_per_s_per_1000_watchers": None if rate is None else rate * WATCHERS,
            "lag_met": self.lag_met(), "stale_met": self.stale_met(),
        }

    def cells(self) -> list[tuple[str, str]]:
        """The table's rows for this model: (label, text)."""
        return [(label, fmt(self)) for label, fmt in _ROWS]


def _within(value: float | None, target: float) -> bool:
    return value is not None and value <= target


def _finite_quantile(values: Sequence[float], q: float) -> float | None:
    value = _quantile(sorted(values), q)
    return None if value is None or math.isinf(value) else value


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


def format_restart_table(results: Mapping[RestartModel, RestartResult]) -> str:
    """A plain-text table, one column per model."""
    return _table({model.value: r for model, r in results.items()}, _ROWS)


def describe_restart(scenario: RestartScenario) -> str:
    closes = " or at once when the kept connection closes" if scenario.keep_alive else " (no kept connection)"
    return (f"prefill instance restarts at T ~ U[{RESTART_AT_S[0]:g}, {RESTART_AT_S[1]:g}] s, down "
            f"D = {scenario.down_s:g} s, complete R ~ U[{READY_AFTER_S[0]:g}, {READY_AFTER_S[1]:g}] s after it "
            f"listens again, new ports; {scenario.trials} trials (seed {scenario.seed}); ours: a check every "
            f"{scenario.watch_interval_s:g} s x U[0.5, 1.5]{closes}, grace {scenario.grace_s:g} s "
            f"({REFUSED_GRACE_S:g} s refused), long-poll {scenario.long_poll_s:g} s; upstream: /health every "
            f"{HEARTBEAT_S:g} s, {HEARTBEAT_FAILURES} failures; round trip {scenario.latency_s * 1e3:g} ms")
