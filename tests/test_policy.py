"""RetryPolicy: classification, lanes, delays, Retry-After, deadline, validation."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import pytest

from coordinator import Backoff, Lane, Reason, RetryPolicy
from coordinator.outcome import Cause, Failure, Outcome
from coordinator.policy import Decision, Policy, retry_after_seconds
from coordinator.sim.upstream import sglang_pr25125
from states import Verdict

REFUSED = Outcome.of_failure(Failure.REFUSED, Cause("ConnectionRefusedError", "[Errno 111] Connection refused"))


def status(code: int, body: str = "", *, retry_after: str | None = None, date: str | None = None) -> Outcome:
    return Outcome.of_status(code, body, retry_after=retry_after, date=date)


def decide(policy: Policy, outcome: Outcome, *, attempt: int = 1, failures: Mapping[Lane, int] | None = None,
           elapsed: float = 0.0, now: float = 0.0, seed: int = 0) -> Decision:
    return policy.decide(outcome, attempt=attempt, lane_failures=failures or {}, elapsed_s=elapsed,
                         now=now, rng=random.Random(seed))


def delay(policy: Policy, outcome: Outcome, **kwargs: Any) -> float:
    """The delay of a decision that retries."""
    d = decide(policy, outcome, **kwargs)
    assert d.delay_s is not None, d
    return d.delay_s


def test_200_registers() -> None:
    d = decide(RetryPolicy(), status(200, "OK"))
    assert (d.verdict, d.reason, d.delay_s) == (Verdict.REGISTERED, Reason.REGISTERED, None)


@pytest.mark.parametrize("code", [201, 204, 301, 302, 307, 308, 400, 401, 403, 404, 405, 409, 413, 422])
def test_other_answers_fail_at_once(code: int) -> None:
    d = decide(RetryPolicy(), status(code))
    assert (d.verdict, d.reason) == (Verdict.GIVE_UP, Reason.PERMANENT)


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
def test_server_trouble_statuses_retry_in_trouble_lane(code: int) -> None:
    d = decide(RetryPolicy(), status(code))
    assert (d.verdict, d.lane) == (Verdict.RETRY, Lane.TROUBLE)
    assert d.delay_s is not None and 0.5 <= d.delay_s <= 1.0  # first trouble retry: 1 s envelope, jitter 0.5


@pytest.mark.parametrize("failure", [Failure.DNS, Failure.TIMEOUT, Failure.RESET, Failure.CONNECTION])
def test_network_trouble_retries_in_trouble_lane(failure: Failure) -> None:
    d = decide(RetryPolicy(), Outcome.of_failure(failure, Cause("X", "y")))
    assert (d.verdict, d.lane) == (Verdict.RETRY, Lane.TROUBLE)


def test_internal_failure_is_permanent() -> None:
    d = decide(RetryPolicy(), Outcome.of_failure(Failure.INTERNAL, Cause("TypeError", "bug")))
    assert (d.verdict, d.reason) == (Verdict.GIVE_UP, Reason.PERMANENT)


def test_refused_polls_take_a_random_phase_then_a_steady_half_second() -> None:
    policy = RetryPolicy()
    assert [policy.delay_bounds(Lane.REFUSED, n) for n in range(1, 5)] == [(0.0, 0.5)] + [(0.5, 0.5)] * 3
    firsts = [delay(policy, REFUSED, seed=s) for s in range(200)]
    assert all(0 < d <= 0.5 for d in firsts) and min(firsts) < 0.05 and max(firsts) > 0.45  # spread whole
    d = decide(policy, REFUSED, failures={Lane.REFUSED: 10})
    assert d.lane is Lane.REFUSED and d.delay_s == 0.5


def test_a_lane_may_have_its_own_jitter() -> None:
    policy = RetryPolicy(trouble=Backoff(1.0, 30.0, jitter=0.0))
    assert decide(policy, status(503), failures={Lane.TROUBLE: 3}).delay_s == 8.0
    with pytest.raises(ValueError, match="Backoff.jitter"):
        Backoff(1.0, 2.0, jitter=1.5)


def test_trouble_lane_doubles_to_thirty_seconds() -> None:
    policy = RetryPolicy()
    tops = [policy.delay_bounds(Lane.TROUBLE, n)[1] for n in range(1, 8)]
    assert tops == pytest.approx([1, 2, 4, 8, 16, 30, 30])


def test_lanes_count_their_own_failures() -> None:
    # Many refusals do not push a first 503 to the trouble lane's cap, nor the reverse.
    d = decide(RetryPolicy(), status(503), failures={Lane.REFUSED: 50})
    assert d.delay_s is not None and d.delay_s <= 1.0
    d = decide(RetryPolicy(), REFUSED, failures={Lane.TROUBLE: 50})
    assert d.delay_s is not None and d.delay_s <= 0.1


def test_jitter_kept_at_the_cap() -> None:
    policy = RetryPolicy()
    delays = {round(delay(policy, status(503), failures={Lane.TROUBLE: 40}, seed=s), 3)
              for s in range(200)}
    assert min(delays) >= 15.0 and max(delays) <= 30.0
    assert len(delays) > 150  # spread, not collapsed onto the cap


def test_same_instant_different_generators_draw_different_delays() -> None:
    a = delay(RetryPolicy(), REFUSED, now=7.25, seed=1)
    b = delay(RetryPolicy(), REFUSED, now=7.25, seed=2)
    assert a != b
    assert decide(RetryPolicy(), REFUSED, now=7.25, seed=1).delay_s == a  # equal seeds, equal delays


def test_upstream_jitter_is_shared_by_ranks_failing_together() -> None:
    upstream = sglang_pr25125()
    a = delay(upstream, REFUSED, now=7.25, seed=1)
    b = delay(upstream, REFUSED, now=7.25, seed=2)
    assert a == b  # the very correlation this project removes


def test_upstream_schedule_exactly() -> None:
    upstream = sglang_pr25125()
    for k, now in enumerate([0.08, 1.03, 2.89, 6.48]):
        d = decide(upstream, REFUSED, attempt=k + 1, failures={Lane.TROUBLE: k}, now=now)
        assert d.delay_s == pytest.approx(min(2**k, 30) * (0.75 + 0.25 * (now % 1)))
    last = decide(upstream, REFUSED, attempt=5, failures={Lane.TROUBLE: 4}, now=12.84)
    assert (last.verdict, last.reason, last.delay_s) == (Verdict.GIVE_UP, Reason.EXHAUSTED, None)


def test_upstream_retries_permanent_errors() -> None:
    d = decide(sglang_pr25125(), status(404))
    assert d.verdict is Verdict.RETRY


def test_never_sleeps_after_the_final_attempt() -> None:
    d = decide(RetryPolicy(max_attempts=3), status(503), attempt=3)
    assert (d.verdict, d.reason, d.delay_s) == (Verdict.GIVE_UP, Reason.EXHAUSTED, None)


def test_retry_after_seconds_is_a_floor_clamped_to_cap_and_jittered() -> None:
    policy = RetryPolicy()
    draws = [delay(policy, status(503, retry_after="7"), seed=s) for s in range(100)]
    assert all(7.0 <= d <= 7.0 * 1.5 for d in draws) and len(set(draws)) > 90
    huge = [delay(policy, status(429, retry_after="86400"), seed=s) for s in range(100)]
    assert all(15.0 <= d <= 30.0 for d in huge) and len(set(huge)) > 90  # the cap holds, jitter below it
    near = [delay(policy, status(503, retry_after="25"), seed=s) for s in range(100)]
    assert all(15.0 <= d <= 30.0 for d in near)  # 25 s + 12.5 s of spread, moved below the cap


def test_retry_after_http_date_is_measured_against_the_response_date() -> None:
    out = status(503, retry_after="Tue, 24 Nov 2026 10:00:12 GMT", date="Tue, 24 Nov 2026 10:00:00 GMT")
    assert retry_after_seconds(out) == 12.0
    assert 12.0 <= delay(RetryPolicy(), out) <= 18.0


@pytest.mark.parametrize("value,date", [("soon", None), ("-5", None), ("1.5", None),
                                        ("Tue, 24 Nov 2026 10:00:12 GMT", None), ("", None)])
def test_garbage_retry_after_is_ignored(value: str, date: str | None) -> None:
    out = status(503, retry_after=value, date=date)
    assert retry_after_seconds(out) is None
    assert 0.5 <= delay(RetryPolicy(), out) <= 1.0


def test_retry_after_ignored_when_disabled() -> None:
    d = decide(RetryPolicy(honor_retry_after=False), status(503, retry_after="20"))
    assert d.delay_s is not None and d.delay_s <= 1.0


def test_deadline_clamps_the_sleep_and_then_gives_up() -> None:
    policy = RetryPolicy(deadline_s=10.0, attempt_timeout_s=5.0)
    d = decide(policy, status(503), failures={Lane.TROUBLE: 10}, elapsed=3.0)
    assert d.verdict is Verdict.RETRY and d.delay_s is not None and d.delay_s <= 10.0 - 3.0 - 0.05
    d = decide(policy, status(503), elapsed=9.96)
    assert (d.verdict, d.reason) == (Verdict.GIVE_UP, Reason.DEADLINE)


def test_attempt_timeout_shrinks_to_the_deadline() -> None:
    policy = RetryPolicy(deadline_s=10.0, attempt_timeout_s=5.0)
    assert policy.attempt_timeout(0.0) == 5.0
    assert policy.attempt_timeout(8.0) == pytest.approx(2.0)
    assert RetryPolicy(deadline_s=None).attempt_timeout(1e6) == 5.0


def test_policy_is_frozen() -> None:
    with pytest.raises(AttributeError):
        RetryPolicy().max_attempts = 3  # type: ignore[misc]  # the point: a frozen field raises


@pytest.mark.parametrize("kwargs,field", [
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": 1.5}, "max_attempts"),
    ({"deadline_s": -1}, "deadline_s"),
    ({"deadline_s": math.nan}, "deadline_s"),
    ({"deadline_s": math.inf}, "deadline_s"),
    ({"attempt_timeout_s": 0}, "attempt_timeout_s"),
    ({"attempt_timeout_s": -0.1}, "attempt_timeout_s"),
    ({"jitter": 1.5}, "jitter"),
    ({"jitter": -0.1}, "jitter"),
    ({"trouble": None}, "trouble"),
])
def test_invalid_policy_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises((ValueError, TypeError), match=field):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize("args,field", [
    ((-0.1, 1.0), "initial_s"), ((math.nan, 1.0), "initial_s"), ((0.5, 0.1), "cap_s"),
    ((0.1, 1.0, 0.5), "multiplier"), ((0.1, math.inf), "cap_s"),
])
def test_invalid_backoff_names_the_field(args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Backoff(*args)


@pytest.mark.parametrize("ra", ["0", "1", "7", "29", "30", "31", "99999", "9" * 400])
@pytest.mark.parametrize("lane_status", [503, 429])
def test_no_sleep_exceeds_the_lane_cap_under_any_retry_after(ra: str, lane_status: int) -> None:
    policy = RetryPolicy()
    for failures in (0, 3, 50):
        for seed in range(50):
            d = policy.decide(status(lane_status, retry_after=ra), attempt=1, lane_failures={Lane.TROUBLE: failures},
                              elapsed_s=0.0, now=0.0, rng=random.Random(seed))
            assert d.delay_s is not None and d.delay_s <= policy.trouble.cap_s


def test_lane_counts_are_a_value_the_decision_hands_on() -> None:
    from coordinator.policy import NO_FAILURES

    first = decide(RetryPolicy(), REFUSED)
    second = RetryPolicy().decide(status(503), attempt=2, lane_failures=first.lanes, elapsed_s=0.1, now=0.1,
                                  rng=random.Random(0))
    assert dict(first.lanes) == {Lane.REFUSED: 1} and dict(NO_FAILURES) == {}
    assert dict(second.lanes) == {Lane.REFUSED: 1, Lane.TROUBLE: 1}
    assert dict(first.lanes) == {Lane.REFUSED: 1}  # unchanged: a new value per decision
