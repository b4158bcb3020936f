"""The simulator's decode side, and its worker processes: same seed, same figures."""

from __future__ import annotations

from typing import Any

from coordinator.policy import RetryPolicy
from coordinator.sim import Scenario, compare, compare_decode, simulate


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "wall_s"}


def test_decode_same_seed_same_figures_whatever_the_workers() -> None:
    a = compare_decode(Scenario(), prefill_ranks=16, decode_ranks=8, trials=3, seed=5, workers=1)
    b = compare_decode(Scenario(), prefill_ranks=16, decode_ranks=8, trials=3, seed=5, workers=2)
    assert {n: _strip(r.to_dict()) for n, r in a.items()} == {n: _strip(r.to_dict()) for n, r in b.items()}


def test_prefill_figures_do_not_depend_on_the_workers() -> None:
    scenario = Scenario(unavailable_s=2.0)
    one = compare(scenario, ranks=24, trials=2, seed=3, workers=1)
    two = compare(scenario, ranks=24, trials=2, seed=3, workers=2)
    for name in one:
        assert _strip(one[name].to_dict()) == _strip(two[name].to_dict())
        assert (one[name].lags, one[name].handled_series) == (two[name].lags, two[name].handled_series)
    capped = Scenario(late_start=(1.0, 1.0), capacity=5)  # ranks interact: one shard per trial
    assert (_strip(simulate(capped, RetryPolicy(), ranks=32, trials=1, workers=2).to_dict())
            == _strip(simulate(capped, RetryPolicy(), ranks=32, trials=1, workers=1).to_dict()))


def test_ours_always_gets_the_topology_within_the_pending_pace() -> None:
    r = compare_decode(Scenario(), prefill_ranks=16, decode_ranks=8, trials=6, seed=0)["ours"]
    assert r.success_rate == 1.0 and r.complete_trials == 6
    latency = Scenario().latency_s
    assert r.lag_max_s is not None and r.lag_max_s <= 0.4 + 2 * latency  # the pending lane's cap


def test_upstream_aborts_when_the_prefill_is_late() -> None:
    late = Scenario(late_start=(30.0, 30.0))
    results = compare_decode(late, prefill_ranks=8, decode_ranks=8, trials=1, seed=0)
    assert results["upstream"].success_rate == 0.0 and results["upstream"].reasons == {"exhausted": 8}
    assert results["upstream"].refused_per_rank == 15  # 15 lookups a second apart, all before R
    assert results["ours"].success_rate == 1.0
    early = compare_decode(Scenario(late_start=(2.0, 2.0)), prefill_ranks=8, decode_ranks=8, trials=1, seed=0)
    assert early["upstream"].success_rate == 1.0
    assert early["upstream"].answered_per_rank >= 1
