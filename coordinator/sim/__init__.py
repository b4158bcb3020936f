"""A discrete-event simulation of PD startup: real drivers, a simulated network.

Every prefill rank is a real :class:`~coordinator.Registration` (every decode rank a
real :class:`~coordinator.Discovery`) driving the shared ``transitions`` Machine with
its policy (a :class:`~coordinator.RetryPolicy`, or one of upstream's loops from
:mod:`coordinator.sim.upstream`), on its own FakeClock; only the bootstrap server
is a model (:mod:`coordinator.sim._model`). :func:`compare` runs policies on
identical draws; :func:`compare_decode` does the same for the decode side; :func:`compare_restart` has a
prefill instance restart under a watching decode instance (:mod:`coordinator.sim._restart_model`). Lag is
measured from ``ready``, the first moment a PUT could get a 200 (a lookup, the
topology). ``workers`` > 1 spreads the work over processes without changing a figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from coordinator.clock import SystemClock, seeded_rng
from coordinator.discovery import default_policy as discovery_policy
from coordinator.policy import Policy, RetryPolicy
from coordinator.sim._engine import DecodeJob, PrefillJob, PrefillShard, decode_shard, prefill_shard, run_jobs, shards
from coordinator.sim._model import (
    BUCKET_S,
    MAX_LATENCY_S,
    MAX_RANK_RUNS,
    MAX_RANKS,
    MAX_SPAN_S,
    MAX_TRIALS,
    Scenario,
    Trial,
    check_counts,
    draw_trials,
)
from coordinator.sim._report import (
    DecodeResult,
    Result,
    Tally,
    decode_result,
    describe,
    format_decode_table,
    format_table,
    prefill_result,
    write_plot,
)
from coordinator.sim._restart_model import MODELS, RestartModel, RestartScenario, draw_restart_trials
from coordinator.sim._restart_report import RestartResult, describe_restart, format_restart_table
from coordinator.sim._restart_run import run_restart_trial
from coordinator.sim.upstream import sglang_decode, sglang_pr25125
from states import State

__all__ = [
    "BUCKET_S", "DEFAULT_RANKS", "DEFAULT_TRIALS", "MAX_LATENCY_S", "MAX_RANK_RUNS", "MAX_RANKS", "MAX_SPAN_S",
    "MAX_TRIALS", "DecodeResult", "Result", "Scenario", "Trial", "check_counts", "compare", "compare_decode",
    "default_decode_policies", "default_policies", "describe", "draw_trials", "format_decode_table", "format_table",
    "simulate", "write_plot",
    # The restart scenario.
    "RestartModel", "RestartResult", "RestartScenario", "compare_restart", "describe_restart", "format_restart_table",
]

DEFAULT_RANKS = 512
DEFAULT_TRIALS = 20


def _prefill_trials(scenario: Scenario, policy: Policy, draws: Sequence[Trial], seed: int,
                    workers: int) -> list[list[PrefillShard]]:
    """Each trial's shards. Ranks are independent unless the server has a capacity."""
    parts = 1 if scenario.capacity is not None else workers
    jobs = [PrefillJob(scenario, policy, trial, seed, first, stop)
            for trial in draws for first, stop in shards(len(trial.starts), parts)]
    by_trial: list[list[PrefillShard]] = [[] for _ in draws]
    for shard in run_jobs(prefill_shard, jobs, workers):
        by_trial[shard.trial].append(shard)
    return by_trial


def _run_policy(name: str, scenario: Scenario, policy: Policy, draws: Sequence[Trial], seed: int,
                workers: int) -> Result:
    # The real clock measures only the simulator's own cost; simulated time is the FakeClocks'.
    wall_clock = SystemClock()
    began = wall_clock.now()
    tally = Tally()
    for trial in _prefill_trials(scenario, policy, draws, seed, workers):
        tally.add(trial)
    return prefill_result(name, tally, draws, seed, wall_clock.now() - began)


def simulate(scenario: Scenario, policy: Policy, *, ranks: int = DEFAULT_RANKS, seed: int = 0,
             trials: int = DEFAULT_TRIALS, name: str = "policy", workers: int = 1) -> Result:
    """Run ``trials`` trials of ``ranks`` real Registrations under ``policy``."""
    draws = draw_trials(scenario, ranks=ranks, trials=trials, seed=seed)
    return _run_policy(name, scenario, policy, draws, seed, workers)


def default_policies() -> dict[str, Policy]:
    return {"ours": RetryPolicy(), "upstream": sglang_pr25125()}


def compare(scenario: Scenario, policies: Mapping[str, Policy] | None = None, *, ranks: int = DEFAULT_RANKS,
            seed: int = 0, trials: int = DEFAULT_TRIALS, workers: int = 1) -> dict[str, Result]:
    """Each policy on the same draws; by default "ours" (RetryPolicy()) and "upstream"."""
    draws = draw_trials(scenario, ranks=ranks, trials=trials, seed=seed)
    chosen = default_policies() if policies is None else policies
    return {name: _run_policy(name, scenario, p, draws, seed, workers) for name, p in chosen.items()}


def default_decode_policies() -> dict[str, Policy]:
    return {"ours": discovery_policy(), "upstream": sglang_decode()}


def compare_decode(scenario: Scenario, policies: Mapping[str, Policy] | None = None, *,
                   prefill_ranks: int = DEFAULT_RANKS, decode_ranks: int = 64, seed: int = 0,
                   trials: int = DEFAULT_TRIALS, workers: int = 1) -> dict[str, DecodeResult]:
    """Decode ranks waiting on a prefill instance whose ranks register as :func:`simulate` has them
    (our policy), each decode policy on the same draws."""
    check_counts(decode_ranks, trials)
    draws = draw_trials(scenario, ranks=prefill_ranks, trials=trials, seed=seed)
    complete_at: list[float | None] = []
    for shards_of_trial in _prefill_trials(scenario, RetryPolicy(), draws, seed, workers):
        finals = [f for shard in shards_of_trial for f in shard.finals]
        done = all(state == State.REGISTERED.value for state, _, _ in finals)
        complete_at.append(max(at for _, _, at in finals) if done else None)
    starts = []
    for trial in draws:  # decode instances boot with the prefill ranks, in the same window
        rng = seeded_rng(f"{seed}/{trial.index}/decode")
        starts.append(tuple(rng.random() * scenario.start_window_s for _ in range(decode_ranks)))
    chosen = default_decode_policies() if policies is None else policies
    results = {}
    for name, policy in chosen.items():
        wall_clock = SystemClock()
        began = wall_clock.now()
        jobs = [DecodeJob(policy, trial.index, seed, trial.up_at, complete_at[trial.index], prefill_ranks,
                          scenario.latency_s, starts[trial.index], first, stop)
                for trial in draws for first, stop in shards(decode_ranks, workers)]
        by_trial: list[list] = [[] for _ in draws]  # type: ignore[type-arg]
        for shard in run_jobs(decode_shard, jobs, workers):
            by_trial[shard.trial].append(shard)
        results[name] = decode_result(name, by_trial, decode_ranks=decode_ranks, prefill_ranks=prefill_ranks,
                                      seed=seed, wall_s=wall_clock.now() - began)
    return results


def compare_restart(scenario: RestartScenario,
                    models: Sequence[RestartModel] = MODELS) -> dict[RestartModel, RestartResult]:
    """The restart scenario: a prefill instance restarts under a watching decode instance. Each
    of ``models`` (every :class:`RestartModel` by default) on the same draws."""
    draws = tuple(draw_restart_trials(scenario))
    results = {}
    for model in map(RestartModel.of, models):
        outcomes = tuple(run_restart_trial(model, trial, scenario) for trial in draws)
        results[model] = RestartResult(model, scenario, draws, outcomes)
    return results
