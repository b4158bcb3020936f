"""The log hook: one structured event per attempt and per state change, library-safe.

With a ``logger`` (any structlog-style bound logger) the events go there. Without one
they go to the stdlib logger ``coordinator`` as a readable ``event key=value ...``
line, with the fields also on the record as ``record.structlog`` so a handler (such
as the CLI's structlog renderers) can render them as it likes; nothing is configured
globally. Fields are built only for events the stdlib level lets through.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from coordinator.instrumentation._records import AttemptRecord, Record, TransitionRecord
from coordinator.outcome import Reason
from coordinator.policy import Lane
from coordinator.snapshot import Snapshot
from states import SETTLED, State, Trigger, Verdict

LOGGER_NAME = "coordinator"

# Stable event names (documented in the README), prefixed by the driver's kind:
# "registration.started", "discovery.started", ...
STARTED = "started"
STATE_CHANGED = "state_changed"
ATTEMPT_FAILED = "attempt_failed"
REGISTERED = "registered"
FAILED = "failed"
INVALIDATED = "invalidated"
LISTENER_ERROR = "listener_error"

# A long outage must not flood the log: the same cause gets a line on its first
# repeats and then at powers of two, and never more than this many lines per level.
_EAGER_REPEATS = 3
MAX_LINES = 10


class StdlibLogger:
    """A structlog-style bound logger writing to a stdlib logger: each event one readable
    ``event key=value ...`` line, its fields on the record as ``record.structlog``.

    It does what ``structlog.wrap_logger`` with a level filter and such a processor
    would, without importing structlog (and, through it, asyncio) into every process
    that embeds the library.
    """

    __slots__ = ("_logger", "_context")

    def __init__(self, logger: logging.Logger, context: Mapping[str, Any] | None = None) -> None:
        self._logger = logger
        self._context = dict(context or {})

    def bind(self, **fields: Any) -> StdlibLogger:
        return StdlibLogger(self._logger, {**self._context, **fields})

    def is_enabled_for(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)

    def _emit(self, level: int, event: str, fields: Mapping[str, Any]) -> None:
        if not self._logger.isEnabledFor(level):
            return
        event_dict = {"event": event, **self._context, **fields}
        text = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                        for k, v in event_dict.items() if k != "event")
        self._logger.log(level, f"{event} {text}".rstrip(), extra={"structlog": event_dict})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)


def default_logger() -> StdlibLogger:
    """Events to stdlib ``logging.getLogger("coordinator")``."""
    return StdlibLogger(logging.getLogger(LOGGER_NAME))


class LineBudget:
    """Decides which failed attempts earn a line at their level; the rest go to DEBUG.

    Repeats count per cause; each level has its own allowance, so a long wait for a
    server that does not listen yet (INFO) leaves the warnings to a later outage.
    """

    def __init__(self) -> None:
        self._cause: str | None = None
        self.repeats = 0
        self._lines: dict[int, int] = {}

    def record(self, cause: str, level: int) -> bool:
        """Count one failure with ``cause``; True when it deserves a line at ``level``."""
        if cause != self._cause:
            self._cause, self.repeats = cause, 0
        self.repeats += 1
        n = self.repeats
        eager = n <= _EAGER_REPEATS or (n & (n - 1)) == 0
        if eager and self._lines.get(level, 0) < MAX_LINES:
            self._lines[level] = self._lines.get(level, 0) + 1
            return True
        return False


# Expected on the way up, INFO: nothing listens yet, a discovery's "not yet". Any other
# lane (the trouble lane: timeouts, resets, 5xx) is for an operator to look at.
_EXPECTED = (Lane.REFUSED, Lane.PENDING)


@dataclass
class _Driver:
    """What the hook remembers of one live driver; dropped at its terminal state."""

    log: Any
    budget: LineBudget = field(default_factory=LineBudget)
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
        self._logger = default_logger() if logger is None else logger
        self._drivers: dict[int, _Driver] = {}

    def __repr__(self) -> str:
        return f"LogHook({self._logger!r})"

    def _on(self, level: int) -> bool:
        # A logger that cannot say gets every event, and filters them itself.
        check = getattr(self._logger, "is_enabled_for", None)
        return check is None or bool(check(level))

    def _driver(self, record: Record) -> _Driver:
        d = self._drivers.get(record.source)
        if d is None:
            s = record.snapshot
            log = self._logger.bind(url=s.url, **({s.kind.value: s.name} if s.name else {}))
            d = self._drivers[record.source] = _Driver(log)
        return d

    def __call__(self, record: Record) -> None:
        d = self._driver(record)
        if isinstance(record, AttemptRecord):
            self._attempt(d, record)
        else:
            self._transition(d, record)
            if record.to_state in SETTLED:
                del self._drivers[record.source]

    def _attempt(self, d: _Driver, r: AttemptRecord) -> None:
        s, kind, verdict = r.snapshot, r.snapshot.kind, r.decision.verdict
        if verdict is Verdict.REGISTERED:
            if self._on(logging.INFO):
                d.log.info(f"{kind}.{REGISTERED}", **_common(s, r.ended_at))
            return
        # Same cause = same status, or same root cause: counted, summarised, not repeated.
        o = r.outcome
        wanted = logging.INFO if r.decision.lane in _EXPECTED else logging.WARNING
        lined = d.budget.record(o.describe() if o.status is None else str(o.status), wanted)
        if verdict is Verdict.GIVE_UP:
            d.last_failure = {"repeats": d.budget.repeats}
            if o.status is not None and o.body:
                d.last_failure["body"] = o.describe()
            return  # logged with the transition to FAILED
        level = wanted if lined else logging.DEBUG
        if not self._on(level):
            return
        fields = _common(s, r.ended_at)
        if o.status is not None and o.body:
            fields["body"] = o.describe()
        fields.update(  # relative delay_s only: a monotonic time (next_attempt_at) means nothing to a reader
            repeats=d.budget.repeats,
            lane=r.decision.lane.value if r.decision.lane else None,
            delay_s=round(r.decision.delay_s or 0.0, 6),
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
        if r.trigger is Trigger.INVALIDATE and self._on(logging.WARNING):
            # What was resolved no longer holds (a prefill restart): worth an operator's look.
            err = s.last_error
            d.log.warning(f"{kind}.{INVALIDATED}", cause=r.cause, error=err.message if err else None,
                          invalidations=s.invalidations, attempt=s.attempt)
        if r.to_state is State.FAILED:
            # A deliberate stop is not an outage: it is worth a warning, not an error.
            level = logging.WARNING if s.reason is Reason.CANCELLED else logging.ERROR
            if self._on(level):
                fields = _common(s, s.taken_at)
                fields.update(d.last_failure)
                fields["reason"] = None if s.reason is None else s.reason.value
                _emit(d.log, level, f"{kind}.{FAILED}", fields)
