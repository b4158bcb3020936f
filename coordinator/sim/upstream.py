"""Upstream's loops as policies, for the simulator to run on the same draws as ours.

Not retry policies anyone should configure: each reproduces one of SGLang's ad-hoc
loops (every failure retried alike, a fixed number of attempts, no deadline, no
``Retry-After``), so the figures compare our policy with what it replaces.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from coordinator.clock import Rng
from coordinator.outcome import Failure, Outcome, Reason
from coordinator.policy import Decision, Lane, retry
from states import Verdict


@dataclass(frozen=True)
class UpstreamLoop:
    """``max_attempts`` attempts; retry ``n`` sleeps ``min(initial_s * multiplier**(n-1), cap_s)``
    scaled by ``(1 - jitter) + jitter * u``. With ``clock_jitter``, ``u`` is ``now % 1``: the
    monotonic clock every process on a host shares, so ranks that fail together retry
    together. Only an answer the decode side cannot use (``invalid``) ends at once."""

    max_attempts: int
    initial_s: float
    cap_s: float
    multiplier: float = 2.0
    jitter: float = 0.0
    clock_jitter: bool = False
    attempt_timeout_s: float = 5.0
    deadline_s: float | None = None

    def attempt_timeout(self, elapsed_s: float) -> float:
        return self.attempt_timeout_s

    def decide(self, outcome: Outcome, *, attempt: int, lane_failures: Mapping[Lane, int], elapsed_s: float,
               now: float, rng: Rng) -> Decision:
        if outcome.status == 200 and outcome.failure is None:
            return Decision(Verdict.REGISTERED, Reason.REGISTERED)
        if outcome.failure is Failure.INVALID:
            return Decision(Verdict.GIVE_UP, Reason.PERMANENT)
        lane = Lane.PENDING if outcome.failure is Failure.PENDING else Lane.TROUBLE
        if attempt >= self.max_attempts:
            return Decision(Verdict.GIVE_UP, Reason.EXHAUSTED, lane)
        n = lane_failures.get(lane, 0) + 1
        top = min(self.cap_s, self.initial_s * self.multiplier ** (n - 1))
        # Written as upstream writes it, so the figures match to the bit.
        u = (now % 1.0) if self.clock_jitter else rng.random()
        return retry(lane, top * ((1 - self.jitter) + self.jitter * u), lane_failures)


def sglang_pr25125() -> UpstreamLoop:
    """The prefill side's ``_register_topology_row`` (sglang PR #25125): 5 attempts,
    ``min(2**k, 30) * (0.75 + 0.25 * (monotonic() % 1))``, then it carries on unregistered."""
    return UpstreamLoop(max_attempts=5, initial_s=1.0, cap_s=30.0, jitter=0.25, clock_jitter=True)


def sglang_decode() -> UpstreamLoop:
    """The decode side's ``_ensure_prefill_info``: one lookup per second, no backoff, no
    jitter, 15 attempts, then the waiting requests are aborted.

    The model leaves out two things, both in upstream's disfavour: upstream looks only
    while requests wait, and each lookup blocks the decode scheduler thread for up to
    its 5 s timeout.
    """
    return UpstreamLoop(max_attempts=15, initial_s=1.0, cap_s=1.0, multiplier=1.0)
