"""The structlog hook: one event per attempt and per state change, library-safe.

Without a ``logger`` the events go to the stdlib logger ``coordinator`` as a readable
``event key=value ...`` line, with the fields also on the record as
``record.structlog`` so a handler (such as the CLI's) can render them as it likes;
nothing is configured globally. Fields are built only for events a level lets through.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from coordinator.instrumentation._records import AttemptRecord, Record, TransitionRecord
from coordinator.policy import Reason
from coordinator.snapshot import Snapshot
from states import TERMINAL, State, Trigger, Verdict

LOGGER_NAME = "coordinator"

# Stable event names (documented in the README), prefixed by the driver's kind:
# "registration.started", "discovery.started", ...
STARTED = "started"
STATE_CHANGED = "state_changed"
ATTEMPT_FAILED = "attempt_failed"
REGISTERED = "registered"
FAILED = "failed"
LISTENER_ERROR = "listener_error"

# A long outage must not flood the log: the same cause is warned about on its
# first repeats and then at powers of two, and never more than this in total.
_EAGER_REPEATS = 3
MAX_WARNINGS = 10


def _to_stdlib(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    fields = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in event_dict.items() if k != "event")
    message = f"{event_dict['event']} {fields}".rstrip()
    return (message,), {"extra": {"structlog": dict(event_dict)}}


def default_logger() -> Any:
    """A structlog logger writing through stdlib ``logging.getLogger("coordinator")``."""
    return structlog.wrap_logger(
        logging.getLogger(LOGGER_NAME),
        processors=[structlog.stdlib.filter_by_level, _to_stdlib],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


class WarningBudget:
    """Decides which failed attempts earn a WARNING line; the rest go to DEBUG."""

    def __init__(self) -> None:
        self._cause: str | None = None
        self.repeats = 0
        self.warnings = 0

    def record(self, cause: str) -> bool:
        """Count one failure with ``cause``; True when it deserves a WARNING."""
        if cause != self._cause:
            self._cause, self.repeats = cause, 0
        self.repeats += 1
        n = self.repeats
        eager = n <= _EAGER_REPEATS or (n & (n - 1)) == 0
        if eager and self.warnings < MAX_WARNINGS:
            self.warnings += 1
            return True
        return False


@dataclass
class _Driver:
    """What the hook remembers of one live driver; dropped at its terminal state."""

    log: Any
    budget: WarningBudget = field(default_factory=WarningBudget)
    last_failure: dict[str, Any] = field(default_factory=dict)  # fields of the failing attempt


def _common(s: Snapshot, now: float) -> dict[str, Any]:
    started = now if s.started_at is None else s.started_at
    fields: dict[str, Any] = {
        "attempt": s.attempt,
        "max_attempts": s.max_attempts,
        "elapsed_s": round(now - started, 6),
    }
    if s.last_status is not None:
        fields["status"] = s.last_status
    if s.last_error is not None:
        fields["error_type"] = s.last_error.type
        fields["error"] = s.last_error.message
    return fields


def _emit(log: Any, level: int, event: str, fields: dict[str, Any]) -> None:
    # By method name: structlog-style loggers need not have a numeric ``log()``.
    getattr(log, logging.getLevelName(level).lower())(event, **fields)


class LogHook:
    """Structured events for every driver it is handed records of.

    ``logger``: any structlog-style bound logger; by default the stdlib logger
    ``coordinator`` (whose level is checked before any field is built).
    """

    def __init__(self, logger: Any = None) -> None:
        self._stdlib = logging.getLogger(LOGGER_NAME) if logger is None else None
        self._logger = default_logger() if logger is None else logger
        self._drivers: dict[int, _Driver] = {}

    def __repr__(self) -> str:
        return f"LogHook({'stdlib' if self._stdlib else self._logger!r})"

    def _on(self, level: int) -> bool:
        return self._stdlib is None or self._stdlib.isEnabledFor(level)

    def _driver(self, record: Record) -> _Driver:
        d = self._drivers.get(record.source)
        if d is None:
            s = record.snapshot
            log = self._logger.bind(url=s.url, **({s.kind: s.name} if s.name else {}))
            d = self._drivers[record.source] = _Driver(log)
        return d

    def __call__(self, record: Record) -> None:
        d = self._driver(record)
        if isinstance(record, AttemptRecord):
            self._attempt(d, record)
        else:
            self._transition(d, record)
            if record.to_state in TERMINAL:
                del self._drivers[record.source]

    def _attempt(self, d: _Driver, r: AttemptRecord) -> None:
        s, kind, verdict = r.snapshot, r.snapshot.kind, r.decision.verdict
        if verdict is Verdict.REGISTERED:
            if self._on(logging.INFO):
                d.log.info(f"{kind}.{REGISTERED}", **_common(s, r.ended_at))
            return
        # Same cause = same status, or same root cause: counted, summarised, not repeated.
        o = r.outcome
        warn = d.budget.record(o.describe() if o.status is None else str(o.status))
        if verdict is Verdict.GIVE_UP:
            d.last_failure = {"repeats": d.budget.repeats}
            if o.status is not None and o.body:
                d.last_failure["body"] = o.describe()
            return  # logged with the transition to FAILED
        level = logging.WARNING if warn else logging.DEBUG
        if not self._on(level):
            return
        fields = _common(s, r.ended_at)
        if o.status is not None and o.body:
            fields["body"] = o.describe()
        delay = r.decision.delay_s or 0.0
        fields.update(
            repeats=d.budget.repeats,
            lane=r.decision.lane.value if r.decision.lane else None,
            delay_s=round(delay, 6),
            next_attempt_at=round(r.ended_at + delay, 6),
        )
        _emit(d.log, level, f"{kind}.{ATTEMPT_FAILED}", fields)

    def _transition(self, d: _Driver, r: TransitionRecord) -> None:
        s, kind = r.snapshot, r.snapshot.kind
        if r.trigger is Trigger.START and self._on(logging.INFO):
            d.log.info(f"{kind}.{STARTED}", max_attempts=s.max_attempts, deadline_s=s.deadline_s)
        if self._on(logging.DEBUG):
            d.log.debug(
                f"{kind}.{STATE_CHANGED}",
                from_state=r.from_state.value,
                to_state=r.to_state.value,
                trigger=r.trigger.value,
                attempt=s.attempt,
                elapsed_s=round(s.elapsed_s, 6),
            )
        if r.to_state is State.FAILED:
            # A deliberate stop is not an outage: it is worth a warning, not an error.
            level = logging.WARNING if s.reason == Reason.CANCELLED.value else logging.ERROR
            if self._on(level):
                fields = _common(s, s.taken_at)
                fields.update(d.last_failure)
                fields["reason"] = s.reason
                _emit(d.log, level, f"{kind}.{FAILED}", fields)
