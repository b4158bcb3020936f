"""The restart scenario (coordinator/sim/_restart_*.py): a prefill instance restarts under a
watching decode instance; ours (a real Discovery on a FakeClock) vs upstream's heartbeat."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from typing import Any

import pytest

from coordinator.cli import simulate as cli_sim
from coordinator.clock import FakeClock
from coordinator.outcome import Failure, Outcome
from coordinator.protocol import GENERATION_HEADER, LONG_POLL_HEADER, TOPOLOGY_KEY, route_query
from coordinator.sim import RestartScenario, compare_restart, format_restart_table
from coordinator.sim._restart_model import (
    HEARTBEAT,
    LONG_POLL,
    MODELS,
    POLLING,
    RestartTransport,
    RestartTrial,
    draw_restart_trials,
)
from coordinator.sim._restart_run import run_restart_trial
from coordinator.watch import CLOSE_CHECK_S

LATENCY = 0.001
TOPOLOGY_URL = f"http://bootstrap.sim:8998/route?{route_query(TOPOLOGY_KEY)}"


def trial(down_s: float, ready_after_s: float, *, restart_at: float = 10.0) -> RestartTrial:
    return RestartTrial(0, restart_at, down_s, ready_after_s, start_at=0.3, heartbeat_phase_s=1.0, rng_seed=5)


def test_same_seed_same_figures_and_every_model_sees_the_same_draws() -> None:
    scenario = RestartScenario(down_s=3.0, trials=4, seed=7)
    first, again = compare_restart(scenario), compare_restart(scenario)
    assert list(first) == list(MODELS)
    assert {m: r.to_dict() for m, r in first.items()} == {m: r.to_dict() for m, r in again.items()}
    draws = tuple(draw_restart_trials(scenario))
    assert all(r.draws == draws for r in first.values())
    # Another D keeps T, R, the check phase and φ: only D differs.
    longer = draw_restart_trials(replace(scenario, down_s=20.0))
    assert [replace(t, down_s=3.0) for t in longer] == list(draws)
    assert draw_restart_trials(replace(scenario, seed=8)) != list(draws)


def test_upstream_never_notices_a_restart_shorter_than_two_heartbeats() -> None:
    for down in (0.5, 3.0):
        r = compare_restart(RestartScenario(down_s=down, trials=20))[HEARTBEAT]
        assert r.updated == 0 and r.lag_p50_s is None and r.stale_p99_s is None
        assert dict(r.dropped_by) == {"never": 20}
        assert all(math.isinf(x) for x in r.lags + r.stale)


def test_upstream_notices_a_20_s_restart_after_two_failed_heartbeats() -> None:
    r = compare_restart(RestartScenario(down_s=20.0, trials=20, latency_s=LATENCY))[HEARTBEAT]
    assert r.updated == 20
    assert all(5.0 <= s < 10.0 for s in r.stale)  # the second failed beat after T
    assert all(0 < lag <= 1.0 + LATENCY for lag in r.lags)  # then a lookup a second
    assert r.requests_per_s == pytest.approx(0.2)


def test_ours_polling_invalidates_on_the_new_generation_and_re_resolves() -> None:
    scenario = RestartScenario(down_s=0.2, latency_s=LATENCY)
    out = run_restart_trial(POLLING, trial(0.2, 0.0), scenario)  # complete as soon as it listens again
    assert out.cause == "new generation"
    # The next check after the server is back sees generation B: at most one jittered pause.
    assert out.stale_s <= 0.2 + 1.5 + 3 * LATENCY
    # It resolves again at once (topology, then the target's new port): two round trips.
    assert 0 < out.lag_s <= 1.5 + 3 * LATENCY


def test_ours_polling_invalidates_on_a_503_and_waits_in_the_pending_lane() -> None:
    scenario = RestartScenario(down_s=0.2, latency_s=LATENCY)
    out = run_restart_trial(POLLING, trial(0.2, 3.0), scenario)
    assert out.cause == "503"
    assert out.stale_s <= 0.2 + 1.5 + 2 * LATENCY
    assert 0 < out.lag_s <= 0.4 + 3 * LATENCY  # the pending lane's cap, then the target's lookup


def test_ours_drops_the_old_ports_soon_after_the_server_refuses() -> None:
    # The kept connection closes at T (a long-poll is reset): the next check meets the refusal,
    # and refusals for 0.25 s (checks 0.125-0.375 s apart) invalidate, well before grace_s.
    scenario = RestartScenario(down_s=20.0, grace_s=5.0, latency_s=LATENCY)
    for model in (POLLING, LONG_POLL):
        out = run_restart_trial(model, trial(20.0, 0.3), scenario)
        assert out.cause == "refused"
        assert 0.25 <= out.stale_s <= CLOSE_CHECK_S + 0.125 + 0.375 + 4 * LATENCY
        assert 0 < out.lag_s <= 0.4 + 3 * LATENCY  # it waited in the refused and pending lanes


def test_steady_state_pace_polling_long_poll_and_heartbeat() -> None:
    results = compare_restart(RestartScenario(down_s=3.0, trials=5, latency_s=LATENCY))
    polling, long_poll = results[POLLING].interval_s, results[LONG_POLL].interval_s
    assert polling is not None and 0.9 < polling < 1.1  # 1 s x U[0.5, 1.5] + a round trip
    assert long_poll is not None and 20.05 < long_poll < 20.2  # held 20 s, then a 0.1 s x U[0.5, 1.5] breath
    assert results[HEARTBEAT].interval_s == 5.0


def test_ours_long_poll_re_resolving_waits_at_the_server_for_the_new_instance() -> None:
    # Invalidated while refused; the first lookup after the server is back meets a 503 (advertising
    # long-polls): the lookups that follow wait at the server, which answers when the new instance completes.
    out = run_restart_trial(LONG_POLL, trial(3.0, 3.0), RestartScenario(down_s=3.0, latency_s=LATENCY))
    assert out.cause == "refused"
    assert 0 < out.lag_s <= 3 * LATENCY  # the held answer's way back, then the target's lookup


def test_ours_long_poll_sees_the_new_instance_within_a_few_round_trips() -> None:
    # While the server is gone the checks come at the pending pace, so the first one after it is
    # back meets the 503 (R = 0.3 s here), and the lookup then waits at the server for completion.
    out = run_restart_trial(LONG_POLL, trial(3.0, 0.3), RestartScenario(down_s=3.0, latency_s=LATENCY))
    assert out.lag_s <= 5 * LATENCY


def test_the_long_poll_server_holds_while_nothing_changed_for_the_client() -> None:
    t = trial(3.0, 0.5)  # down [10, 13), complete at 13.5
    clock = FakeClock(1.0)
    transport = RestartTransport(t, clock, LATENCY, long_poll_s=20.0)

    def get(query: str = "", at: float | None = None) -> Outcome:
        if at is not None:
            clock.set(at)
        return transport.get(TOPOLOGY_URL + query, 25.0)

    held = get("&wait=5&seen=A")  # complete with the generation the client saw: held for S
    assert held.status == 200 and held.headers[GENERATION_HEADER.lower()] == "A"
    assert held.headers[LONG_POLL_HEADER.lower()] == "20"
    assert clock.now() == pytest.approx(6.0 + LATENCY)
    assert get("&wait=5").status == 200 and clock.now() == pytest.approx(6.0 + 2 * LATENCY)  # nothing to wait for
    reset = get("&wait=20&seen=A")
    assert reset.failure is Failure.RESET and clock.now() == pytest.approx(10.0 + LATENCY / 2)  # the server died
    assert get().failure is Failure.REFUSED
    assert get("&wait=20&seen=A", at=13.1).status == 503  # another generation answers at once
    assert clock.now() == pytest.approx(13.1 + LATENCY)
    complete = get("&wait=20")  # not complete: held until it is
    assert complete.status == 200 and complete.headers[GENERATION_HEADER.lower()] == "B"
    assert clock.now() == pytest.approx(13.5 + LATENCY / 2)
    assert get("&wait=20&seen=B").status == 200 and clock.now() == pytest.approx(33.5 + 1.5 * LATENCY)


def test_the_transport_stops_the_run_at_the_horizon() -> None:
    t = trial(3.0, 0.5)
    stopped: list[bool] = []
    transport = RestartTransport(t, FakeClock(t.horizon), LATENCY)
    transport.on_horizon = lambda: stopped.append(True)
    assert transport.get(TOPOLOGY_URL, 5.0).failure is Failure.CANCELLED and stopped == [True]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"down_s": -1.0}, "RestartScenario.down_s"),
    ({"down_s": 1e9}, "RestartScenario.down_s"),
    ({"down_s": 1.0, "trials": 0}, "RestartScenario.trials"),
    ({"down_s": 1.0, "trials": True}, "RestartScenario.trials"),
    ({"down_s": 1.0, "seed": -1}, "RestartScenario.seed"),
    ({"down_s": 1.0, "watch_interval_s": 0.0}, "RestartScenario.watch_interval_s"),
    ({"down_s": 1.0, "grace_s": math.nan}, "RestartScenario.grace_s"),
    ({"down_s": 1.0, "long_poll_s": 30.0}, "RestartScenario.long_poll_s"),
    ({"down_s": 1.0, "latency_s": 2.0}, "RestartScenario.latency_s"),
])
def test_scenario_rejects_bad_values_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises((TypeError, ValueError), match=field):
        RestartScenario(**kwargs)


def test_run_restart_trial_rejects_an_unknown_model() -> None:
    with pytest.raises(ValueError, match="model must be one of"):
        run_restart_trial("ours", trial(1.0, 0.1), RestartScenario(down_s=1.0))


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli_sim.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_restart_prints_json_and_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_sim.run(parse("--restart", "3", "--trials", "3", "--seed", "2", "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data["results"]) == list(MODELS)
    assert data["scenario"]["down_s"] == 3.0 and data["scenario"]["seed"] == 2
    assert data["results"][HEARTBEAT]["lag_p99_s"] is None  # never: JSON has no infinity
    assert cli_sim.run(parse("--restart", "3", "--trials", "3")) == 0
    out = capsys.readouterr().out
    assert "down D = 3 s" in out and all(model in out for model in MODELS) and "stale window" in out


def test_cli_restart_rejects_what_it_does_not_take(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_sim.run(parse("--restart", "3", "--decode")) == 2
    assert "--restart takes neither --decode nor --plot" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # refused when parsed, as every mode's --latency
        cli_sim.run(parse("--restart", "3", "--latency", "5"))
    assert info.value.code == 2 and "--latency" in capsys.readouterr().err


def test_table_names_every_model_and_the_targets() -> None:
    table = format_restart_table(compare_restart(RestartScenario(down_s=20.0, trials=3)))
    assert "<= 0.5 s: met" in table and "<= 0.02 s: missed" in table
    assert "refused:3" in table and "2 failed heartbeats:3" in table
    assert "<= 1 s: met" in table  # issue 20's stale window, prefill instance down and refusing
