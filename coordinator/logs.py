"""Structured events, library-safe: structlog without global configuration.

By default events go to the stdlib logger ``coordinator`` as a readable
``event key=value ...`` line, with the fields also attached to the record as
``record.structlog`` so a handler (such as the CLI's) can render them as it likes.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

LOGGER_NAME = "coordinator"

# Stable event names (documented in the README).
STARTED = "registration.started"
STATE_CHANGED = "registration.state_changed"
ATTEMPT_FAILED = "registration.attempt_failed"
REGISTERED = "registration.registered"
FAILED = "registration.failed"
LISTENER_ERROR = "registration.listener_error"

# A long outage must not flood the log: the same cause is warned about on its
# first repeats and then at powers of two, and never more than this in total.
_EAGER_REPEATS = 3
MAX_WARNINGS = 10


def _to_stdlib(_: Any, __: str, event_dict: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
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
