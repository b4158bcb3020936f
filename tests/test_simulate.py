"""The fleet simulator: reproducible, fair to both policies, and driving the real Registration."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import pytest

from coordinator import sim
from coordinator.cli import simulate as cli_sim
from coordinator.outcome import Outcome
from coordinator.policy import Decision, RetryPolicy
from coordinator.sim import Scenario, compare, draw_trials


def fixed(up_at: float, **kw: Any) -> Scenario:
    return Scenario(late_start=(up_at, up_at), **kw)


def summary(result: sim.Result) -> dict[str, Any]:
    out = result.to_dict()
    del out["wall_s"]  # the simulator's own run time is the one figure a seed cannot fix
    return out


# -- reproducible and fair ----------------------------------------------------------------


def test_same_seed_same_figures_other_seed_other_draws() -> None:
    scenario = Scenario(unavailable_s=2.0)
    a = compare(scenario, ranks=16, trials=3, seed=7)
    b = compare(scenario, ranks=16, trials=3, seed=7)
    for name in ("ours", "upstream"):
        assert summary(a[name]) == summary(b[name])
        assert (a[name].lags, a[name].handled_series) == (b[name].lags, b[name].handled_series)
    assert compare(scenario, ranks=16, trials=3, seed=8)["ours"].up_at != a["ours"].up_at


def test_trials_are_a_stratified_sample_of_late_start() -> None:
    trials = draw_trials(Scenario(late_start=(10.0, 70.0), start_window_s=0.2), ranks=50, trials=6, seed=1)
    for k, trial in enumerate(trials):
        assert 10.0 + 10.0 * k <= trial.up_at < 10.0 + 10.0 * (k + 1)
        assert len(trial.starts) == 50 and all(0 <= s < 0.2 for s in trial.starts)


def test_both_policies_see_identical_draws() -> None:
    # Server up from t=0: every rank registers on its first attempt, at its own start
    # offset plus the latency, so equal lags mean equal start offsets.
    results = compare(fixed(0.0), ranks=32, trials=2, seed=3)
    ours, upstream = results["ours"], results["upstream"]
    assert ours.up_at == upstream.up_at
    assert ours.lags == upstream.lags and len(ours.lags) == 64
    draws = draw_trials(fixed(0.0), ranks=32, trials=2, seed=3)
    expected = sorted(start + Scenario().latency_s for trial in draws for start in trial.starts)
    assert list(ours.lags) == pytest.approx(expected)
    # ...and a late server: both policies race the same R.
    late = compare(Scenario(), ranks=4, trials=2, seed=3)
    assert late["ours"].up_at == late["upstream"].up_at


# -- the real driver ----------------------------------------------------------------------


def test_drives_the_real_registration_and_policy() -> None:
    decided: list[int | None] = []

    class Counting(RetryPolicy):
        def decide(self, outcome: Outcome, **kw: Any) -> Decision:
            decided.append(outcome.status)
            return super().decide(outcome, **kw)

    result = sim.simulate(fixed(3.0), Counting(max_attempts=4), ranks=8, trials=1, seed=0)
    # Every attempt reached the real driver's policy.decide, and its give-up verdict ended it.
    assert len(decided) == 8 * 4
    assert result.reasons == {"exhausted": 8}
    assert result.refused_per_rank == 4 and result.registered == 0
    # Another policy on the same draws, other figures.
    assert sim.simulate(fixed(3.0), RetryPolicy(), ranks=8, trials=1, seed=0).registered == 8


# -- what the policies do --------------------------------------------------------------------


def test_server_at_20s_upstream_gives_up_ours_registers_everyone() -> None:
    results = compare(fixed(20.0), ranks=32, trials=1, seed=0)
    ours, upstream = results["ours"], results["upstream"]
    assert upstream.success_rate == 0.0
    assert upstream.reasons == {"exhausted": 32} and upstream.refused_per_rank == 5
    assert upstream.group_lag_s is None and upstream.handled_per_rank == 0
    assert ours.success_rate == 1.0 and ours.complete_trials == 1


def test_server_at_5s_ours_registers_all_with_small_lag() -> None:
    ours = sim.simulate(fixed(5.0), RetryPolicy(), ranks=64, trials=1, seed=0, name="ours")
    assert ours.registered == 64
    assert ours.lag_max_s is not None and ours.lag_max_s <= 0.5 + 2 * Scenario().latency_s
    assert ours.group_lag_s == ours.lag_max_s
    assert ours.handled_per_rank == 1.0  # refused probes cost the server nothing; one PUT each


def test_shared_clock_jitter_keeps_upstream_ranks_together() -> None:
    # Ranks start within 10 ms and fail at once; upstream's delay reads the shared clock,
    # so all of them come back within one 100 ms window.
    results = compare(fixed(0.7, start_window_s=0.01), ranks=64, trials=1, seed=0)
    assert results["upstream"].peak_handled_per_100ms == 64
    assert results["ours"].peak_handled_per_100ms < 64


def test_503_phase_and_capacity_produce_503s() -> None:
    phase = compare(fixed(1.0, unavailable_s=5.0), ranks=16, trials=1, seed=0)
    for result in phase.values():
        assert result.statuses.get(503, 0) > 0
    assert phase["ours"].statuses[200] == 16
    over = sim.simulate(fixed(0.5, capacity=10), RetryPolicy(), ranks=64, trials=1, seed=0)
    assert over.statuses.get(503, 0) > 0 and over.statuses[200] == 64
    assert over.handled_per_rank > 1


def test_hang_phase_times_attempts_out() -> None:
    result = sim.simulate(fixed(1.0, hang_s=3.0), RetryPolicy(), ranks=8, trials=1, seed=0)
    assert result.timeouts_per_rank >= 1 and result.registered == 8
    assert result.lag_p50_s is not None and result.lag_p50_s >= 0


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"late_start": (5.0, 1.0)}, "late_start"),
        ({"unavailable_s": -1.0}, "unavailable_s"),
        ({"hang_s": float("nan")}, "hang_s"),
        ({"capacity": 0}, "capacity"),
        ({"start_window_s": float("inf")}, "start_window_s"),
    ],
)
def test_scenario_rejects_bad_values_naming_the_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Scenario(**kw)


def test_rank_count_is_bounded_by_the_payload_ports() -> None:
    with pytest.raises(ValueError, match="ranks"):
        draw_trials(Scenario(), ranks=sim.MAX_RANKS + 1, trials=1, seed=0)


# -- command line ---------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli_sim.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_run_json_parses(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_sim.run(parse("--ranks", "8", "--trials", "2", "--server-up-at", "1", "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["results"]) == {"ours", "upstream"}
    assert data["scenario"]["late_start"] == [1.0, 1.0]
    assert data["results"]["ours"]["registered"] == 16


def test_run_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_sim.run(parse("--ranks", "4", "--trials", "1", "--late-start", "0", "2")) == 0
    out = capsys.readouterr().out
    assert "ours" in out and "upstream" in out and "registered" in out


def test_run_rejects_a_bad_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_sim.run(parse("--late-start", "9", "1")) == 2
    assert "late_start" in capsys.readouterr().err


def test_plot_writes_a_png(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "sim.png"
    assert cli_sim.run(parse("--ranks", "8", "--trials", "2", "--late-start", "0", "3", "--plot", str(path))) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Any) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes the import fail
    assert cli_sim.run(parse("--ranks", "2", "--trials", "1", "--plot", str(tmp_path / "x.png"))) == 2
    assert "pip install 'prefill-startup[plot]'" in capsys.readouterr().err
