"""RetryPolicy: what to do after one attempt, and how long to wait. Pure: no I/O, no clock."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from coordinator import validate
from coordinator.clock import Rng
from coordinator.outcome import Failure, Outcome, Reason
from coordinator.validate import finite
from states import Verdict


class Lane(str, Enum):
    """Two kinds of trouble, two paces of retrying."""

    REFUSED = "refused"  # nothing listens yet: a probe costs the server nothing
    TROUBLE = "trouble"  # the server (or the path to it) is struggling: back off hard
    PENDING = "pending"  # a discovery's "not yet": prefill ranks are still registering


_RETRYABLE_STATUS = frozenset({408, 429})
_REFUSED_FAILURES = frozenset({Failure.REFUSED})
_TROUBLE_FAILURES = frozenset(
    {Failure.DNS, Failure.TIMEOUT, Failure.RESET, Failure.CONNECTION}
)
# The last attempt before a deadline gets at least this long (or the whole attempt
# timeout, if shorter); with less left, giving up now beats a doomed attempt.
_LAST_ATTEMPT_MIN_S = 0.05
_MIN_SLEEP_S = 1e-3
MAX_ATTEMPT_TIMEOUT_S = 3600.0
# Each side's budget by default: a prefill rank registers within 2 minutes of its first
# attempt; a decode instance may start long before its prefill instance has loaded its model.
REGISTER_DEADLINE_S = 120.0
DISCOVER_DEADLINE_S = 600.0
MIN_ATTEMPT_TIMEOUT_S = 1e-3  # shorter, no connection can be made: every attempt would time out
MAX_DEADLINE_S = 365 * 86400.0  # a year; "no deadline" is None. Past it, clock sums lose their seconds.


@dataclass(frozen=True)
class Backoff:
    """An exponential envelope: ``initial_s * multiplier**(n-1)``, capped at ``cap_s``."""

    initial_s: float
    cap_s: float
    multiplier: float = 2.0
    jitter: float | None = None  # this lane's own jitter; None: the policy's
    # The first retry in the lane sleeps uniformly in [0, initial_s]: ranks that failed
    # together take independent phases at once, and keep them at a steady pace.
    spread_first: bool = False

    def __post_init__(self) -> None:
        for name in ("initial_s", "cap_s", "multiplier"):
            # Stored as floats, so Backoff(1, 30) and Backoff(1.0, 30.0) are the same value.
            object.__setattr__(self, name, finite(f"Backoff.{name}", getattr(self, name), positive=True))
        if self.jitter is not None and finite("Backoff.jitter", self.jitter, positive=False) > 1:
            raise ValueError(f"Backoff.jitter must be in [0, 1], got {self.jitter}")
        validate.flag(self.spread_first, "Backoff.spread_first")
        if self.cap_s < self.initial_s:
            raise ValueError(
                f"Backoff.cap_s ({self.cap_s}) must be >= initial_s ({self.initial_s})"
            )
        if self.multiplier < 1:
            raise ValueError(f"Backoff.multiplier must be >= 1, got {self.multiplier}")

    def envelope(self, n: int) -> float:
        """The undisturbed delay before retry ``n`` (1-based) in this lane."""
        if self.multiplier == 1 or n <= 1:
            return self.initial_s
        # Compared in log space first: a day-long outage must not overflow the float.
        if math.log(self.initial_s) + (n - 1) * math.log(self.multiplier) >= math.log(self.cap_s):
            return self.cap_s
        try:
            return min(self.cap_s, self.initial_s * self.multiplier ** (n - 1))
        except OverflowError:  # multiplier ** (n - 1) alone can exceed a float below the cap
            return self.cap_s


class LaneCounts(Mapping[Lane, int]):
    """Failures so far in each lane. Immutable: each retry decision carries the next value."""

    __slots__ = ("_counts",)

    def __init__(self, counts: Mapping[Lane, int] | None = None) -> None:
        self._counts = {lane: n for lane, n in (counts or {}).items() if n}

    def __getitem__(self, lane: Lane) -> int:
        return self._counts[lane]

    def __iter__(self) -> Iterator[Lane]:
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)

    def __hash__(self) -> int:
        return hash(frozenset(self._counts.items()))

    def __repr__(self) -> str:
        return f"LaneCounts({ {lane.value: n for lane, n in self._counts.items()} })"

    def plus_one(self, lane: Lane) -> LaneCounts:
        return LaneCounts({**self._counts, lane: self._counts.get(lane, 0) + 1})


NO_FAILURES = LaneCounts()


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: Reason
    lane: Lane | None = None
    delay_s: float | None = None
    lanes: LaneCounts = NO_FAILURES  # the counts to pass with the next attempt


def retry(lane: Lane, delay_s: float, lane_failures: Mapping[Lane, int]) -> Decision:
    """Retry in ``lane`` after ``delay_s``, with that lane's failure counted."""
    lanes = lane_failures if isinstance(lane_failures, LaneCounts) else LaneCounts(lane_failures)
    return Decision(Verdict.RETRY, Reason.RETRY, lane, delay_s, lanes.plus_one(lane))


class Policy(Protocol):
    """What a driver needs of a retry policy: :class:`RetryPolicy`, or a model of upstream's loops
    (:mod:`coordinator.sim.upstream`)."""

    @property
    def max_attempts(self) -> int | None: ...

    @property
    def deadline_s(self) -> float | None: ...

    def attempt_timeout(self, elapsed_s: float) -> float:
        """The timeout of an attempt beginning ``elapsed_s`` after the first; <= 0: none fits."""

    def decide(self, outcome: Outcome, *, attempt: int, lane_failures: Mapping[Lane, int], elapsed_s: float,
               now: float, rng: Rng) -> Decision:
        """What follows attempt ``attempt`` (1-based) that produced ``outcome``."""


def retry_after_seconds(outcome: Outcome) -> float | None:
    """``Retry-After`` as seconds, or None when absent or garbage.

    An HTTP-date is measured against the response's own ``Date`` header, so
    neither a wall clock nor clock skew between hosts enters the delay.
    """
    value = (outcome.retry_after or "").strip()
    if not value:
        return None
    if validate.is_digits(value):
        return float(value)
    if not outcome.date:
        return None
    from email.utils import parsedate_to_datetime  # the rare HTTP-date form: not worth 9 ms at import

    try:
        delta = parsedate_to_datetime(value) - parsedate_to_datetime(outcome.date)
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0.0, delta.total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """How a registration retries. Frozen and validated: a bad value raises naming the field.

    Delays: retry ``n`` in a lane sleeps ``envelope(n) * (1 - jitter * u)``, ``u`` uniform
    in [0, 1) from the injected ``random.Random``; the jitter stays at the cap so ranks
    that failed together never line up again. A ``Retry-After`` of ``r`` seconds is a
    floor: the sleep lies in ``[r, r + jitter * max(r, initial_s)]``, moved down to end
    at the lane's cap when it would pass it (so ``cap_s`` bounds every sleep, and a huge
    ``Retry-After`` sleeps in ``[cap_s * (1 - jitter), cap_s]``).
    """

    max_attempts: int | None = None
    deadline_s: float | None = REGISTER_DEADLINE_S
    attempt_timeout_s: float = 5.0
    # A random phase first, then a steady 0.5 s: the lag after a late start stays under
    # 0.5 s, and the first answers when the server comes up are spread as thin as that
    # allows (scripts/sweep_503.py, the README's Performance section).
    refused: Backoff | None = field(default_factory=lambda: Backoff(0.5, 0.5, jitter=0.0, spread_first=True))
    trouble: Backoff = field(default_factory=lambda: Backoff(1.0, 30.0))
    # Capped below 0.5 s so a decode instance sees a complete prefill within 0.5 s of its last rank.
    pending: Backoff = field(default_factory=lambda: Backoff(0.1, 0.4))
    jitter: float = 0.5
    honor_retry_after: bool = True

    def __post_init__(self) -> None:
        owner = "RetryPolicy"
        if self.max_attempts is not None:
            validate.int_in(self.max_attempts, f"{owner}.max_attempts", low=1)
        if (self.deadline_s is not None
                and finite(f"{owner}.deadline_s", self.deadline_s, positive=True) > MAX_DEADLINE_S):
            raise ValueError(f"{owner}.deadline_s must be <= {MAX_DEADLINE_S:g} (or None: no deadline), "
                             f"got {self.deadline_s}")
        timeout = finite(f"{owner}.attempt_timeout_s", self.attempt_timeout_s, positive=True)
        if not MIN_ATTEMPT_TIMEOUT_S <= timeout <= MAX_ATTEMPT_TIMEOUT_S:
            # Sockets take their timeout in C; a huge one overflows there, mid-attempt.
            raise ValueError(f"{owner}.attempt_timeout_s must be in [{MIN_ATTEMPT_TIMEOUT_S:g}, "
                             f"{MAX_ATTEMPT_TIMEOUT_S:g}], got {self.attempt_timeout_s}")
        for name in ("refused", "trouble", "pending"):
            lane = getattr(self, name)
            if not isinstance(lane, Backoff) and not (name == "refused" and lane is None):
                raise TypeError(f"{owner}.{name} must be a Backoff, got {type(lane).__name__}")
        finite(f"{owner}.jitter", self.jitter, positive=False)
        if self.jitter > 1:
            raise ValueError(f"{owner}.jitter must be in [0, 1], got {self.jitter}")
        validate.flag(self.honor_retry_after, f"{owner}.honor_retry_after")

    def backoff(self, lane: Lane) -> Backoff:
        if lane is Lane.PENDING:
            return self.pending
        if lane is Lane.REFUSED and self.refused is not None:
            return self.refused
        return self.trouble

    def lane_of(self, outcome: Outcome) -> Lane | None:
        """The retry lane of a failed outcome, or None when retrying cannot help."""
        if outcome.failure is Failure.PENDING:
            return Lane.PENDING
        if outcome.failure is Failure.INVALID:
            return None
        if outcome.status is not None:
            return Lane.TROUBLE if outcome.status >= 500 or outcome.status in _RETRYABLE_STATUS else None
        if outcome.failure in _REFUSED_FAILURES:
            return Lane.REFUSED if self.refused is not None else Lane.TROUBLE
        if outcome.failure in _TROUBLE_FAILURES:
            return Lane.TROUBLE
        return None

    def attempt_timeout(self, elapsed_s: float) -> float:
        """This attempt's timeout: the configured one, shrunk to what the deadline leaves."""
        if self.deadline_s is None:
            return self.attempt_timeout_s
        return max(0.0, min(self.attempt_timeout_s, self.deadline_s - elapsed_s))

    def delay_bounds(self, lane: Lane, n: int, retry_after: float | None = None) -> tuple[float, float]:
        """The interval retry ``n`` of ``lane`` sleeps in, before the deadline clamp."""
        backoff = self.backoff(lane)
        if retry_after is not None and self.honor_retry_after:
            # The cap is a cap, Retry-After included; the spread is kept whole by moving it
            # below the cap, so ranks told "come back later" together do not come back together.
            floor = min(retry_after, backoff.cap_s)
            spread = self.jitter_of(lane) * max(floor, backoff.initial_s)
            high = min(backoff.cap_s, floor + spread)
            return max(0.0, high - spread), high
        top = backoff.envelope(n)
        return top * (1 - self.jitter_of(lane, n)), top

    def jitter_of(self, lane: Lane, n: int = 2) -> float:
        """The jitter of retry ``n`` in ``lane``: the lane's own, else the policy's."""
        backoff = self.backoff(lane)
        if n == 1 and backoff.spread_first:
            return 1.0
        return self.jitter if backoff.jitter is None else backoff.jitter

    def decide(
        self,
        outcome: Outcome,
        *,
        attempt: int,
        lane_failures: Mapping[Lane, int],
        elapsed_s: float,
        now: float,
        rng: Rng,
    ) -> Decision:
        """What follows attempt number ``attempt`` (1-based) that produced ``outcome``.

        ``lane_failures`` counts earlier failures per lane (the previous decision's
        ``lanes``); ``elapsed_s`` is the time since the first attempt began. ``now`` is
        part of the :class:`Policy` call; this policy's delays do not depend on it.
        """
        if outcome.status == 200 and outcome.failure is None:
            return Decision(Verdict.REGISTERED, Reason.REGISTERED)
        lane = self.lane_of(outcome)
        if lane is None:
            return Decision(Verdict.GIVE_UP, Reason.PERMANENT)
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return Decision(Verdict.GIVE_UP, Reason.EXHAUSTED, lane)
        ra = retry_after_seconds(outcome) if self.honor_retry_after else None
        n = lane_failures.get(lane, 0) + 1
        low, high = self.delay_bounds(lane, n, ra)
        # Drawn from the driver's own generator: ranks that failed together must not retry together.
        if ra is not None:
            delay = low + (high - low) * rng.random()
        else:
            delay = high * (1 - self.jitter_of(lane, n) * rng.random())
        if self.deadline_s is not None:
            room = self.deadline_s - elapsed_s - min(self.attempt_timeout_s, _LAST_ATTEMPT_MIN_S)
            # Sleeping is clamped so one last attempt fits; once that attempt has
            # been made there is no room left, and the registration gives up.
            if room < _MIN_SLEEP_S:
                return Decision(Verdict.GIVE_UP, Reason.DEADLINE, lane)
            delay = min(delay, room)
        return retry(lane, delay, lane_failures)
