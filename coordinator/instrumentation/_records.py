"""One immutable record per attempt and per transition: what the driver hands to its hooks.

The shape of stamina's instrumentation: the driver decides nothing about logs or
metrics; it builds one frozen record and calls each hook with it. The structlog
events, the Prometheus metrics and sd_notify are hooks; so is anything a user adds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

from coordinator.outcome import Failure, Outcome
from coordinator.policy import Decision
from coordinator.snapshot import Snapshot
from states import State, Trigger, Verdict


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt (a PUT for a registration, a lookup round for a discovery), decided.

    ``snapshot`` is the driver's state after the attempt's transition; ``source`` is a
    number unique to the driver within the process (hooks keep per-driver state by it).
    """

    source: int
    snapshot: Snapshot
    outcome: Outcome
    decision: Decision
    began_at: float
    ended_at: float

    @property
    def label(self) -> str:
        """The bounded outcome label of metrics: see :func:`outcome_label`."""
        return outcome_label(self.outcome, self.decision.verdict)


@dataclass(frozen=True)
class TransitionRecord:
    """One state change; ``snapshot`` is the state after it."""

    source: int
    snapshot: Snapshot
    trigger: Trigger
    from_state: State
    to_state: State
    # For INVALIDATE: why, from a small fixed set (restarted, incomplete, changed, moved, gone,
    # asked); the full message is in ``snapshot.last_error``.
    cause: str | None = None


Record = Union[AttemptRecord, TransitionRecord]
Hook = Callable[[Record], None]


def outcome_label(outcome: Outcome, verdict: Verdict) -> str:
    """A label from a small fixed set, never an attempt number or a URL.

    ``registered``; a network failure (``refused``, ``dns``, ``timeout``, ``reset``,
    ``connection``, ``cancelled``, ``internal``); an HTTP answer by class
    (``http_4xx``, ``http_5xx``, also ``http_2xx``/``http_3xx`` for the rare
    permanent ones); ``invalid`` for an answer whose content is wrong.
    """
    if verdict is Verdict.REGISTERED:
        return "registered"
    if outcome.failure is Failure.INVALID:
        return "invalid"
    if outcome.status is not None:
        return f"http_{outcome.status // 100}xx"
    return outcome.failure.value if outcome.failure is not None else "internal"
