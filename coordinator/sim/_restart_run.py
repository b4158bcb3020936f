"""The restart scenario's run (the model: :mod:`coordinator.sim._restart_model`): one model on
one trial. Ours is a real watching :class:`~coordinator.Discovery` on the trial's FakeClock;
upstream's heartbeat is worked out from the draws."""

from __future__ import annotations

import math
from dataclasses import dataclass

from coordinator.clock import FakeClock, seeded_rng
from coordinator.discovery import Discovery
from coordinator.sim._model import BOOTSTRAP
from coordinator.sim._restart_model import (
    _B,
    HEARTBEAT_FAILURES,
    HEARTBEAT_S,
    PORTS,
    TARGET,
    RestartModel,
    RestartScenario,
    RestartTransport,
    RestartTrial,
)
from coordinator.snapshot import DiscoverySnapshot, Snapshot
from states import State

LOOKUP_EVERY_S = 1.0  # _ensure_prefill_info: at most one lookup a second per address


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
    seen: dict[str, DiscoverySnapshot] = {}

    def listen(snapshot: DiscoverySnapshot) -> None:
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


def run_restart_trial(model: RestartModel | str, trial: RestartTrial, scenario: RestartScenario) -> TrialOutcome:
    """One model (a :class:`RestartModel`, or its display name) on one trial."""
    chosen = RestartModel.of(model)
    if chosen is RestartModel.HEARTBEAT:
        return _heartbeat(trial, scenario)
    return _ours(trial, scenario, long_poll=chosen is RestartModel.LONG_POLL)
