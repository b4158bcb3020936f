"""What one registration attempt produced and why a driver reached its state, as plain data
(no exceptions, no sockets)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Failure(str, Enum):
    """Why an attempt failed: no HTTP status, or (PENDING, INVALID) what its answer means."""

    REFUSED = "refused"  # nothing listens yet
    DNS = "dns"
    TIMEOUT = "timeout"
    RESET = "reset"  # connection dropped, closed without answer, broken response
    CONNECTION = "connection"  # any other network error (unreachable, TLS, ...)
    CANCELLED = "cancelled"  # stop() cut the attempt short
    INTERNAL = "internal"  # an unexpected exception in the transport: a bug, not the network
    # The two below come with a status: what a discovery concluded from an answer.
    PENDING = "pending"  # 503 while prefill ranks register, 404 for a rank not yet there: not yet
    INVALID = "invalid"  # an answer no retry can fix: malformed, or a topology that disagrees


class Reason(str, Enum):
    """Why a driver reached its state; the value is what JSON, logs and metrics show."""

    REGISTERED = "registered"
    RETRY = "retry"
    PERMANENT = "permanent"  # an answer that retrying cannot change (4xx, 3xx)
    EXHAUSTED = "exhausted"  # max_attempts used up
    DEADLINE = "deadline"  # no time left for another attempt
    CANCELLED = "cancelled"
    INTERNAL = "internal"  # the driver's run broke (a test's fake asserting): not the network
    GONE = "gone"  # read from another process's published snapshot: that process has exited

    def __str__(self) -> str:
        return self.value


class HarnessError(Exception):
    """Raised by a stand-in for the network (a test kit's transport) to say that the test
    itself is wrong, never that the network failed: a driver ends FAILED (``internal``) and
    re-raises it from ``run()`` or ``wait()`` instead of retrying."""


@dataclass(frozen=True)
class Cause:
    """The innermost exception of a failure: its type name and message."""

    type: str
    message: str

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


@dataclass(frozen=True)
class Outcome:
    status: int | None = None
    body: str = ""  # a capped excerpt, for messages
    retry_after: str | None = None
    date: str | None = None  # the response's Date header: the reference for an HTTP-date Retry-After
    failure: Failure | None = None
    cause: Cause | None = None
    value: Any = None  # what a successful attempt produced (a discovery's PrefillInfo)
    # Our bootstrap server's extension headers (lower-case names), e.g. its generation.
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of_status(cls, status: int, body: str = "", *, retry_after: str | None = None,
                  date: str | None = None, headers: Mapping[str, str] | None = None) -> Outcome:
        return cls(status=status, body=body, retry_after=retry_after, date=date, headers=headers or {})

    @classmethod
    def of_failure(cls, failure: Failure, cause: Cause) -> Outcome:
        return cls(failure=failure, cause=cause)

    def describe(self) -> str:
        """One line for logs and errors: the status and a body excerpt, or the root cause."""
        if self.status is not None:
            excerpt = " ".join(self.body.split())[:200]
            return f"HTTP {self.status}" + (f": {excerpt}" if excerpt else "")
        return str(self.cause) if self.cause else str(self.failure)


def chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its ``__cause__``/``__context__`` ancestors, outermost first."""
    out = [exc]
    while (inner := out[-1].__cause__ or out[-1].__context__) is not None and inner not in out:
        out.append(inner)
    return out


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of the ``__cause__``/``__context__`` chain."""
    return chain(exc)[-1]


def cause_of(exc: BaseException) -> Cause:
    """The innermost exception of ``exc``'s chain, as a Cause."""
    inner = root_cause(exc)
    return Cause(type(inner).__name__, str(inner))
