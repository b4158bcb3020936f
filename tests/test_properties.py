"""Property-based tests: the driver against a model of the table, and the retry policy's laws.

The stateful test drives a real ``Registration`` (FakeClock, a fake transport whose
next outcome hypothesis draws) with ``poll()``, clock advances and ``stop()``, and
checks every step against a small model: the (source, dest) pairs of
``states.TRANSITIONS``, plus what each step must do from each state.
"""

from __future__ import annotations

import dataclasses
import math
import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from coordinator import Backoff, FakeClock, Lane, Reason, Registration, RetryPolicy, Snapshot
from coordinator.outcome import Cause, Failure, Outcome
from coordinator.policy import Decision
from coordinator.sim.upstream import sglang_pr25125
from coordinator.testing import Call, ScriptedTransport, example_payload
from states import SETTLED, TRANSITIONS, State, Verdict

URL = "http://127.0.0.1:8998/route"
ALLOWED: frozenset[tuple[State, State]] = frozenset((t.source, t.dest) for t in TRANSITIONS)
MIN_SLEEP_S = 1e-3  # policy._MIN_SLEEP_S: below this much room before the deadline, give up
LAST_ATTEMPT_MIN_S = 0.05  # policy._LAST_ATTEMPT_MIN_S


def tol(*xs: float) -> float:
    """Float slack for sums and differences of clock readings."""
    return 1e-9 * max([1.0, *(abs(x) for x in xs)])


# -- strategies ---------------------------------------------------------------

def backoffs(*, max_initial: float = 5.0, max_ratio: float = 100.0) -> st.SearchStrategy[Backoff]:
    return st.builds(
        lambda initial, ratio, mult: Backoff(initial, initial * ratio, mult),
        st.floats(1e-3, max_initial),
        st.floats(1.0, max_ratio),
        st.floats(1.0, 4.0),
    )


policies: st.SearchStrategy[RetryPolicy] = st.one_of(
    st.builds(
        RetryPolicy,
        max_attempts=st.none() | st.integers(1, 8),
        deadline_s=st.none() | st.floats(0.5, 8.0) | st.floats(0.5, 60.0),
        attempt_timeout_s=st.floats(0.01, 10.0),
        refused=st.none() | backoffs(max_initial=1.0, max_ratio=10.0),
        trouble=backoffs(),
        jitter=st.floats(0.0, 1.0),
        honor_retry_after=st.booleans(),
    ),
    st.just(RetryPolicy()),
)

_DATE = datetime(2026, 11, 24, 10, 0, 0, tzinfo=timezone.utc)


@st.composite
def retry_afters(draw: st.DrawFn) -> tuple[dict[str, str], float | None]:
    """Retry-After headers and the seconds they mean (None: absent or garbage)."""
    form = draw(st.sampled_from(["absent", "seconds", "date", "garbage"]))
    if form == "absent":
        return {}, None
    if form == "seconds":
        n = draw(st.integers(0, 200))
        return {"retry_after": str(n)}, float(n)
    if form == "date":
        n = draw(st.integers(0, 200))
        return {"retry_after": format_datetime(_DATE + timedelta(seconds=n), usegmt=True),
                "date": format_datetime(_DATE, usegmt=True)}, float(n)
    return {"retry_after": draw(st.sampled_from(["soon", "-5", "1.5", ""]))}, None


class Planned:
    """One scripted answer: what the transport does, and what the model expects of it."""

    def __init__(self, result: Outcome | Exception, kind: str, retry_after: float | None = None) -> None:
        self.result, self.kind, self.retry_after = result, kind, retry_after

    def __repr__(self) -> str:
        return f"Planned({self.result!r}, {self.kind}, ra={self.retry_after})"

    @property
    def outcome(self) -> Outcome:
        """What the driver makes of it (a raising transport is an INTERNAL failure)."""
        if isinstance(self.result, Exception):
            return Outcome.of_failure(Failure.INTERNAL, Cause(type(self.result).__name__, str(self.result)))
        return self.result

    @property
    def status(self) -> int | None:
        return self.result.status if isinstance(self.result, Outcome) else None


def _failure(f: Failure) -> Outcome:
    return Outcome.of_failure(f, Cause("OSError", f.value))


_RETRYABLE_KINDS = ["5xx", "5xx", "429", "429", "refused", "refused", "net", "net"]
_ALL_KINDS = ["ok", *_RETRYABLE_KINDS, "4xx", "other", "raises"]


@st.composite
def planned_outcomes(draw: st.DrawFn, kinds: list[str] = _ALL_KINDS) -> Planned:
    kind = draw(st.sampled_from(kinds))
    if kind == "ok":
        return Planned(Outcome.of_status(200, "OK"), "ok")
    if kind in ("5xx", "429"):
        code = 429 if kind == "429" else draw(st.sampled_from([408, 500, 502, 503, 504]))
        headers, ra = draw(retry_afters())
        outcome = Outcome.of_status(code, "busy", retry_after=headers.get("retry_after"), date=headers.get("date"))
        return Planned(outcome, "trouble", ra)
    if kind == "refused":
        return Planned(_failure(Failure.REFUSED), "refused")
    if kind == "net":
        f = draw(st.sampled_from([Failure.TIMEOUT, Failure.RESET, Failure.DNS, Failure.CONNECTION]))
        return Planned(_failure(f), "trouble")
    if kind == "4xx":
        code = draw(st.sampled_from([400, 401, 403, 404, 405, 409, 413, 422]))
        return Planned(Outcome.of_status(code, "no"), "permanent")
    if kind == "other":
        code = draw(st.sampled_from([201, 204, 301, 302, 307]))
        return Planned(Outcome.of_status(code), "permanent")
    return Planned(RuntimeError("transport bug"), "internal")


def delay_of(d: Decision) -> float:
    """The delay of a decision that retries."""
    assert d.delay_s is not None, d
    return d.delay_s


def expected_lane(policy: RetryPolicy, plan: Planned) -> Lane | None:
    """The lane the policy must put this failure in (None: retrying cannot help)."""
    if plan.kind == "trouble":
        return Lane.TROUBLE
    if plan.kind == "refused":
        return Lane.REFUSED if policy.refused is not None else Lane.TROUBLE
    return None


retryable = planned_outcomes(_RETRYABLE_KINDS)


class PlannedStep:
    """A script step answering the planned result after ``latency_frac`` of the attempt's timeout."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.plan: Planned | None = None
        self.latency_frac = 0.0

    def __call__(self, call: Call) -> Outcome | Exception:
        assert self.plan is not None
        self.clock.advance(self.latency_frac * call.timeout)
        return self.plan.result


# -- the stateful test --------------------------------------------------------

class RegistrationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.reg: Registration | None = None

    @initialize(policy=policies, start=st.floats(0.0, 1e4), seed=st.integers(0, 2**32 - 1))
    def setup(self, policy: RetryPolicy, start: float, seed: int) -> None:
        self.policy = policy
        self.clock = FakeClock(start)
        self.step = PlannedStep(self.clock)
        self.transport = ScriptedTransport([], then=self.step)
        self.reg = Registration(URL, example_payload(), policy=policy, clock=self.clock,
                                rng=random.Random(seed), transport=self.transport, on_exhausted="return")
        self.published: list[Snapshot] = []
        self.reg.add_listener(self.published.append)
        self.lane_failures: dict[Lane, int] = {}
        self.seen_terminal: Snapshot | None = None
        self.last = self.reg.snapshot()
        assert self.last.state is State.INIT and self.last.seq == 0

    # -- helpers --

    def _check_change(self, before: Snapshot, after: Snapshot) -> None:
        """One step = at most one transition, allowed by the table, published once."""
        if after is before:
            return
        event(f"{before.state.value} -> {after.state.value}" + (f" ({after.reason})" if after.reason else ""))
        assert (before.state, after.state) in ALLOWED, (before.state, after.state)
        assert after.seq == before.seq + 1
        assert self.published[-1] is after
        assert after.state_since >= before.state_since
        assert after.attempt >= before.attempt

    # -- rules --

    @rule(plan=planned_outcomes(), latency_frac=st.floats(0.0, 1.0))
    def poll(self, plan: Planned, latency_frac: float) -> None:
        self._poll(plan, latency_frac)

    @rule(plan=retryable, latency_frac=st.floats(0.0, 0.2))
    def poll_failing(self, plan: Planned, latency_frac: float) -> None:
        """A second poll rule, so long outages (many retries) are common."""
        self._poll(plan, latency_frac)

    def _poll(self, plan: Planned, latency_frac: float) -> None:
        assert self.reg is not None
        self.step.plan, self.step.latency_frac = plan, latency_frac
        before, t0 = self.reg.snapshot(), self.clock.now()
        calls = len(self.transport.calls)
        after = self.reg.poll()
        attempted = len(self.transport.calls) > calls
        assert after is self.reg.snapshot()
        self._check_change(before, after)

        if before.settled:
            assert after is before and not attempted
        elif before.state is State.INIT:
            assert (after.state, after.attempt, after.started_at) == (State.REGISTERING, 1, t0)  # attempt 1 in flight
            assert not attempted
        elif before.state is State.BACKOFF:
            assert not attempted
            assert before.next_attempt_at is not None
            if t0 >= before.next_attempt_at:
                assert (after.state, after.attempt) == (State.REGISTERING, before.attempt + 1)
            else:
                assert after is before  # never waits, never fires early
        else:
            self._check_attempt(before, after, plan, t0, attempted)

    def _check_attempt(self, before: Snapshot, after: Snapshot, plan: Planned, t0: float, attempted: bool) -> None:
        policy = self.policy
        assert before.started_at is not None  # REGISTERING: the first attempt has begun
        timeout = policy.attempt_timeout(t0 - before.started_at)
        if timeout <= 0:
            assert not attempted
            assert (after.state, after.reason, after.attempt) == (State.FAILED, Reason.DEADLINE.value, before.attempt)
            return
        assert attempted and after.attempt == before.attempt
        assert 0 < self.transport.calls[-1].timeout <= policy.attempt_timeout_s
        assert self.transport.calls[-1].timeout == timeout
        assert after.last_status == plan.status
        t_end = self.clock.now()
        elapsed = t_end - before.started_at
        if plan.kind == "ok":
            assert (after.state, after.reason) == (State.REGISTERED, Reason.REGISTERED.value)
            return
        if plan.kind == "internal":
            assert after.last_error is not None and after.last_error.type == "RuntimeError"
        lane = expected_lane(policy, plan)
        if lane is None:
            assert (after.state, after.reason) == (State.FAILED, Reason.PERMANENT.value)
            return
        if policy.max_attempts is not None and after.attempt >= policy.max_attempts:
            assert (after.state, after.reason) == (State.FAILED, Reason.EXHAUSTED.value)
            return
        ra = plan.retry_after if policy.honor_retry_after else None
        low, high = policy.delay_bounds(lane, self.lane_failures.get(lane, 0) + 1, ra)
        if policy.deadline_s is not None:
            room = policy.deadline_s - elapsed - min(policy.attempt_timeout_s, LAST_ATTEMPT_MIN_S)
            if room < MIN_SLEEP_S - tol(t_end):
                assert (after.state, after.reason) == (State.FAILED, Reason.DEADLINE.value)
                return
            if room <= MIN_SLEEP_S + tol(t_end) and after.state is State.FAILED:
                return  # on the boundary either way is right
            if high > room:
                event("sleep clamped by the deadline")
            low, high = min(low, room), min(high, room)
        assert after.state is State.BACKOFF, (after, plan)
        self.lane_failures[lane] = self.lane_failures.get(lane, 0) + 1
        assert after.next_attempt_at is not None
        delay = after.next_attempt_at - t_end
        note(f"delay {delay!r} in [{low!r}, {high!r}] lane={lane} ra={ra}")
        assert low - tol(t_end, high) <= delay <= high + tol(t_end, high), (delay, low, high)
        assert after.state_since == t_end

    @rule(dt=st.one_of(st.floats(0.0, 1.0), st.floats(0.0, 100.0), st.just(0.0)))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @precondition(lambda self: self.reg is not None and self.reg.state is State.BACKOFF)
    @rule(early=st.sampled_from([0.0, 0.0, 1e-6, 1e-3]))
    def advance_to_due(self, early: float) -> None:
        """Land on (or just before) the due time: the guard's boundary."""
        assert self.reg is not None
        due = self.reg.snapshot().next_attempt_at
        assert due is not None
        self.clock.set(max(self.clock.now(), due - early))

    @rule(go=st.integers(0, 5))
    def stop(self, go: int) -> None:
        assert self.reg is not None
        # Rules are drawn uniformly: cancel in one draw out of six, or runs would end in INIT.
        if go and not self.reg.snapshot().settled:
            return
        # No background thread: stop() takes the cancelling step itself.
        before = self.reg.snapshot()
        calls = len(self.transport.calls)
        after = self.reg.stop()
        assert len(self.transport.calls) == calls
        self._check_change(before, after)
        if before.settled:
            assert after is before
        else:
            assert (after.state, after.reason, after.attempt) == (State.FAILED, "cancelled", before.attempt)
            assert after.last_status == before.last_status and after.last_error == before.last_error

    # -- invariants --

    @invariant()
    def snapshot_agrees_with_state(self) -> None:
        if self.reg is None:
            return
        s = self.reg.snapshot()
        assert s.state is self.reg.state
        assert (s.state is State.BACKOFF) == (s.next_attempt_at is not None)
        assert (s.reason is not None) == (s.state in SETTLED) == s.settled
        assert (s.state is State.REGISTERED) == (s.last_status == 200)
        assert (s.reason == "registered") == (s.state is State.REGISTERED)
        assert s.max_attempts == self.policy.max_attempts
        assert s.taken_at >= s.state_since
        assert s.elapsed_s >= 0
        assert s.seq >= self.last.seq
        assert (s.started_at is None) == (s.state is State.INIT or (s.seq <= 1 and s.reason == "cancelled"))
        if s.state is State.BACKOFF:
            assert s.next_attempt_at is not None and s.next_attempt_at >= s.taken_at
            assert s.attempt >= 1
        # The transport is closed exactly once, when a terminal state is reached.
        assert self.transport.closes == (1 if s.settled else 0)

    @invariant()
    def attempts_within_max(self) -> None:
        if self.reg is None:
            return
        s = self.reg.snapshot()
        # An attempt counts from the REGISTERING that begins it; a stop or the deadline may end it unmade.
        made = len(self.transport.calls)
        if s.state in (State.BACKOFF, State.REGISTERED):
            assert s.attempt == made
        else:
            assert made <= s.attempt <= made + 1
        if self.policy.max_attempts is not None:
            assert s.attempt <= self.policy.max_attempts

    @invariant()
    def no_backoff_past_the_deadline(self) -> None:
        if self.reg is None:
            return
        s = self.reg.snapshot()
        if s.next_attempt_at is not None and self.policy.deadline_s is not None:
            assert s.started_at is not None
            assert s.next_attempt_at - s.started_at <= self.policy.deadline_s + tol(s.next_attempt_at)

    @invariant()
    def history_follows_the_table(self) -> None:
        if self.reg is None:
            return
        seqs = [s.seq for s in self.published]
        assert seqs == list(range(1, len(seqs) + 1))
        states = [State.INIT] + [s.state for s in self.published]
        assert all(pair in ALLOWED for pair in zip(states, states[1:]))
        # Terminal states are absorbing: nothing is published after one, the snapshot stays put.
        terminal_at = [i for i, s in enumerate(self.published) if s.settled]
        assert terminal_at in ([], [len(self.published) - 1])
        s = self.reg.snapshot()
        if self.seen_terminal is not None:
            assert s is self.seen_terminal
        elif s.settled:
            self.seen_terminal = s
        self.last = s


TestRegistrationMachine = RegistrationMachine.TestCase
TestRegistrationMachine.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- the policy's laws --------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(policy=policies, plan=retryable, attempt=st.integers(1, 50),
       failures=st.integers(0, 200), elapsed=st.floats(0.0, 100.0), now=st.floats(0.0, 1e5),
       seed=st.integers(0, 2**32 - 1))
def test_delay_within_bounds(policy: RetryPolicy, plan: Planned, attempt: int, failures: int,
                             elapsed: float, now: float, seed: int) -> None:
    lane = expected_lane(policy, plan)
    assert lane is not None  # a retryable plan
    d = policy.decide(plan.outcome, attempt=attempt, lane_failures={lane: failures}, elapsed_s=elapsed,
                      now=now, rng=random.Random(seed))
    assert d.lane is lane
    if policy.max_attempts is not None and attempt >= policy.max_attempts:
        assert (d.verdict, d.reason, d.delay_s) == (Verdict.GIVE_UP, Reason.EXHAUSTED, None)
        return
    ra = plan.retry_after if policy.honor_retry_after else None
    low, high = policy.delay_bounds(lane, failures + 1, ra)
    assert 0 <= low <= high
    if policy.deadline_s is not None:
        room = policy.deadline_s - elapsed - min(policy.attempt_timeout_s, LAST_ATTEMPT_MIN_S)
        if room < MIN_SLEEP_S:
            assert (d.verdict, d.reason, d.delay_s) == (Verdict.GIVE_UP, Reason.DEADLINE, None)
            return
        low, high = min(low, room), min(high, room)
        assert d.delay_s is not None and elapsed + d.delay_s <= policy.deadline_s
    assert d.verdict is Verdict.RETRY
    assert d.delay_s is not None and low <= d.delay_s <= high


@settings(max_examples=100, deadline=None)
@given(backoff=backoffs(max_ratio=1000.0).filter(lambda b: b.multiplier > 1 or b.cap_s == b.initial_s),
       jitter=st.floats(0.05, 1.0), n=st.integers(10**4, 10**9), seed=st.integers(0, 2**32 - 1))
def test_jitter_kept_at_the_cap(backoff: Backoff, jitter: float, n: int, seed: int) -> None:
    # "Large n": past the retry at which the envelope reaches the cap (a multiplier barely above 1
    # may need more than 1e9 doublings' worth of steps; those draws are skipped).
    assume(backoff.multiplier == 1 or math.log(backoff.cap_s / backoff.initial_s, backoff.multiplier) < n - 1)
    cap = backoff.cap_s
    assert backoff.envelope(n) == pytest.approx(cap, rel=1e-12)
    policy = RetryPolicy(deadline_s=None, refused=None, trouble=backoff, jitter=jitter)
    rng = random.Random(seed)
    delays = [delay_of(policy.decide(Outcome.of_status(503), attempt=1, lane_failures={Lane.TROUBLE: n - 1},
                                     elapsed_s=0.0, now=0.0, rng=rng)) for _ in range(200)]
    lo, mid = cap * (1 - jitter), cap * (1 - jitter / 2)
    assert all(lo * (1 - 1e-12) <= d <= cap * (1 + 1e-12) for d in delays)
    # Spread over the whole interval, not collapsed onto the cap (P(fail) = 2 * 2**-200).
    assert any(d < mid for d in delays) and any(d >= mid for d in delays)


@settings(max_examples=300, deadline=None)
@given(backoff=backoffs(max_ratio=1e6), n=st.integers(1, 10**6))
def test_envelope_never_shrinks_and_stays_under_the_cap(backoff: Backoff, n: int) -> None:
    e, e_next = backoff.envelope(n), backoff.envelope(n + 1)
    assert backoff.initial_s <= e <= e_next <= backoff.cap_s
    assert backoff.envelope(1) == backoff.initial_s


@settings(max_examples=200, deadline=None)
@given(policy=policies.map(lambda p: dataclasses.replace(p, honor_retry_after=True)), code=st.sampled_from([429, 503]),
       ra=st.integers(0, 10**6), failures=st.integers(0, 50), seed=st.integers(0, 2**32 - 1))
def test_retry_after_is_a_floor_below_the_cap(policy: RetryPolicy, code: int, ra: int, failures: int,
                                              seed: int) -> None:
    policy = dataclasses.replace(policy, deadline_s=None, max_attempts=None)
    d = policy.decide(Outcome.of_status(code, retry_after=str(ra)), attempt=1,
                      lane_failures={Lane.TROUBLE: failures}, elapsed_s=0.0, now=0.0, rng=random.Random(seed))
    cap, initial = policy.trouble.cap_s, policy.trouble.initial_s
    floor = min(ra, cap)
    spread = policy.jitter * max(floor, initial)
    assert d.verdict is Verdict.RETRY and d.delay_s is not None
    assert d.delay_s <= cap  # the cap is a cap, whatever the server says
    if floor + spread <= cap:
        assert floor <= d.delay_s <= floor + spread
    else:  # the spread moved below the cap, kept whole
        assert cap - spread <= d.delay_s


@settings(max_examples=200, deadline=None)
@given(now=st.floats(0.0, 1e6), k=st.integers(0, 3),
       plan=planned_outcomes(_ALL_KINDS[1:]), seed=st.integers(0, 2**32 - 1))
def test_upstream_policy_reproduces_its_formula(now: float, k: int, plan: Planned, seed: int) -> None:
    upstream = sglang_pr25125()
    d = upstream.decide(plan.outcome, attempt=k + 1, lane_failures={Lane.TROUBLE: k}, elapsed_s=1e6,
                        now=now, rng=random.Random(seed))
    # Every failure alike (4xx too), Retry-After ignored, no deadline, the clock as jitter.
    assert (d.verdict, d.lane) == (Verdict.RETRY, Lane.TROUBLE)
    # Equal up to the last bit: the policy computes high - (high - low) * (1 - now % 1), which can
    # round differently (now=1/3, k=0: 0.8333333333333333 against 0.8333333333333334).
    assert d.delay_s == pytest.approx(min(2**k, 30) * (0.75 + 0.25 * (now % 1)), rel=1e-12, abs=0)
    last = upstream.decide(plan.outcome, attempt=5, lane_failures={Lane.TROUBLE: 4}, elapsed_s=0.0,
                           now=now, rng=random.Random(seed))
    assert (last.verdict, last.reason) == (Verdict.GIVE_UP, Reason.EXHAUSTED)


@settings(max_examples=50, deadline=None)
@given(start=st.floats(0.0, 1e5), latency=st.floats(0.0, 2.0))
def test_upstream_schedule_in_a_whole_run(start: float, latency: float) -> None:
    clock = FakeClock(start)
    step = PlannedStep(clock)
    step.plan, step.latency_frac = Planned(_failure(Failure.REFUSED), "refused"), latency / 5.0
    transport = ScriptedTransport([], then=step)
    reg = Registration(URL, example_payload(), policy=sglang_pr25125(), clock=clock,
                       transport=transport, on_exhausted="return")
    ends: list[float] = []

    def on_snapshot(s: Snapshot) -> None:
        if s.state is State.BACKOFF:
            ends.append(s.state_since)

    reg.add_listener(on_snapshot)
    snap = reg.run()
    assert (snap.state, snap.reason, snap.attempt) == (State.FAILED, "exhausted", 5)
    assert clock.sleeps == pytest.approx([min(2**k, 30) * (0.75 + 0.25 * (t % 1)) for k, t in enumerate(ends)],
                                         rel=1e-9, abs=1e-9)


_BAD_NUMBERS = st.sampled_from([-1.0, -1e-9, math.nan, math.inf, -math.inf])
_BAD_POSITIVE = _BAD_NUMBERS | st.just(0.0) | st.just(0) | st.floats(max_value=0.0, allow_nan=False)


@st.composite
def bad_policy_kwargs(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    name = draw(st.sampled_from(["max_attempts", "deadline_s", "attempt_timeout_s", "jitter", "refused", "trouble"]))
    if name == "max_attempts":
        value = draw(st.integers(max_value=0) | st.sampled_from([1.5, 2.0, True, "3", math.nan]))
    elif name == "jitter":
        value = draw(_BAD_NUMBERS | st.floats(min_value=1.0, exclude_min=True, allow_nan=False)
                     | st.floats(max_value=0.0, exclude_max=True, allow_nan=False)
                     | st.sampled_from([1.0000001, 1.5, 2.0, -0.5, "0.5", None]))
    elif name in ("refused", "trouble"):
        value = draw(st.sampled_from([0.5, "fast", (0.1, 0.5)] + ([None] if name == "trouble" else [])))
    else:
        value = draw(_BAD_POSITIVE | st.sampled_from(["5", True]))
    return {name: value}, name


@settings(max_examples=200, deadline=None)
@given(bad=bad_policy_kwargs())
def test_invalid_policy_values_are_rejected_naming_the_field(bad: tuple[dict[str, Any], str]) -> None:
    kwargs, name = bad
    with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b"):
        RetryPolicy(**kwargs)


@st.composite
def bad_backoff_args(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    good = {"initial_s": 0.5, "cap_s": 4.0, "multiplier": 2.0}
    name = draw(st.sampled_from(["initial_s", "cap_s", "multiplier", "cap_below_initial", "multiplier_below_1"]))
    if name == "cap_below_initial":
        initial = draw(st.floats(1e-3, 1e3))
        cap = draw(st.floats(1e-6, initial, exclude_max=True))
        return {**good, "initial_s": initial, "cap_s": cap}, "cap_s"
    if name == "multiplier_below_1":
        return {**good, "multiplier": draw(st.floats(1e-6, 1.0, exclude_max=True))}, "multiplier"
    return {**good, name: draw(_BAD_POSITIVE | st.sampled_from(["1", None, True]))}, name


@settings(max_examples=200, deadline=None)
@given(bad=bad_backoff_args())
def test_invalid_backoff_values_are_rejected_naming_the_field(bad: tuple[dict[str, Any], str]) -> None:
    kwargs, name = bad
    with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b"):
        Backoff(**kwargs)


@st.composite
def any_backoff(draw: st.DrawFn) -> Backoff:
    """Any Backoff validation accepts, however extreme (tiny initial, huge cap or multiplier)."""
    initial = draw(st.floats(min_value=0.0, exclude_min=True, allow_infinity=False, allow_nan=False))
    cap = draw(st.floats(min_value=initial, allow_infinity=False, allow_nan=False))
    return Backoff(initial, cap, draw(st.floats(1.0, 1e300)))


@settings(max_examples=300, deadline=None)
@given(backoff=any_backoff(), n=st.integers(1, 10**9))
def test_every_accepted_backoff_has_an_envelope(backoff: Backoff, n: int) -> None:
    # Was OverflowError in math.log(cap_s / initial_s, ...) for e.g. Backoff(1e-300, 1e10).
    e, e_next = backoff.envelope(n), backoff.envelope(n + 1)
    assert backoff.initial_s <= e <= e_next <= backoff.cap_s


@pytest.mark.parametrize("args", [(1e-300, 1e10, 2.0), (1e-10, 1e290, 1e200), (5e-324, 1.0, 2.0)])
def test_extreme_backoffs_reach_their_cap_without_overflow(args: tuple[float, float, float]) -> None:
    b = Backoff(*args)  # accepted: all finite and positive, cap >= initial, multiplier >= 1
    assert b.initial_s <= b.envelope(3) <= b.cap_s
    assert b.envelope(10**6) == b.cap_s
