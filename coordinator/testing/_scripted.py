"""A transport that answers from a script: outcomes without a network, for transition-driven tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Union

from coordinator import validate
from coordinator.clock import FakeClock, SystemClock
from coordinator.outcome import Cause, Failure, HarnessError, Outcome
from coordinator.protocol import EXTENSION_PREFIX
from coordinator.transport import HttpTransport, Transport

Answer = Union[str, int, tuple[int, Mapping[str, str]], tuple[int, Mapping[str, str], str], Outcome, BaseException]
# A callable step answers at call time: it may wait on an event, or hand the call to a real transport.
Step = Union[Answer, Callable[["Call"], Answer]]

# The root causes the real transport reports for each network failure.
_FAILURES: Mapping[str, Outcome] = {
    "refused": Outcome.of_failure(Failure.REFUSED, Cause("ConnectionRefusedError", "[Errno 111] Connection refused")),
    "dns": Outcome.of_failure(Failure.DNS, Cause("gaierror", "[Errno -2] Name or service not known")),
    "timeout": Outcome.of_failure(Failure.TIMEOUT, Cause("TimeoutError", "timed out")),
    "reset": Outcome.of_failure(Failure.RESET, Cause("ConnectionResetError", "[Errno 104] Connection reset by peer")),
    "connection": Outcome.of_failure(Failure.CONNECTION, Cause("OSError", "[Errno 113] No route to host")),
}


def to_outcome(step: Answer) -> Outcome:
    """One script item as the Outcome a real transport would have produced."""
    if isinstance(step, Outcome):
        return step
    if isinstance(step, str):
        if step not in _FAILURES:
            raise ValueError(f"script item {step!r}: expected one of {', '.join(_FAILURES)}, a status or an Outcome")
        return _FAILURES[step]
    if validate.is_int(step):
        return Outcome.of_status(_status(step), "OK" if step == 200 else "")
    if isinstance(step, tuple) and len(step) in (2, 3) and validate.is_int(step[0]) and isinstance(step[1], Mapping):
        _status(step[0])
        headers = {k.lower(): v for k, v in step[1].items()}
        body = step[2] if len(step) == 3 else ""
        extensions = {k: v for k, v in headers.items() if k.startswith(EXTENSION_PREFIX)}
        return Outcome.of_status(step[0], body, retry_after=headers.get("retry-after"), date=headers.get("date"),
                                 headers=extensions)
    raise ValueError(f"script item {step!r}: expected a failure name, a status, "
                     "(status, headers[, body]) or an Outcome")


def _status(code: int) -> int:
    if not 100 <= code <= 599:
        raise ValueError(f"script item {code!r}: an HTTP status is in [100, 599]")
    return code


@dataclass(frozen=True)
class Call:
    """One attempt the transport answered: what was sent, and when (on the clock, if given)."""

    method: str
    url: str
    body: bytes | None
    timeout: float
    at: float | None


def _checked(step: Step) -> Step:
    # Answers are checked up front, so a typo fails where the script is written.
    if callable(step) or isinstance(step, BaseException):
        return step
    return to_outcome(step)


def _resolve(step: Step, call: Call, n: int) -> Outcome:
    try:
        answer = step(call) if callable(step) and not isinstance(step, BaseException) else step
    except AssertionError as exc:  # the test's own check inside its step: fail the test
        raise ScriptError(f"attempt {n}: step {step!r} failed its check: {exc}") from exc
    if isinstance(answer, BaseException):
        raise answer  # a transport that breaks: the driver must survive it
    try:
        return to_outcome(answer)
    except ValueError as exc:  # the test's own step is wrong: fail the test, not the driver
        raise ScriptError(f"attempt {n}: step {step!r} returned {answer!r}: {exc}") from None


class ScriptedTransport:
    """Answers each attempt with the next script item; records every call.

    Items: ``"refused"``, ``"dns"``, ``"timeout"``, ``"reset"``, ``"connection"``, an int
    status, ``(status, headers)`` (e.g. ``(503, {"Retry-After": "2"})``),
    ``(status, headers, body)``, an :class:`~coordinator.Outcome`, an exception (raised,
    as a broken transport would), or a callable taking the :class:`Call` and returning
    one of those. Past the end, ``then`` answers every further attempt; without it,
    :class:`ScriptExhausted` names the attempt. With a ``clock``, each call records its
    time, and ``latency`` seconds pass on that clock per attempt. Serves registrations
    (``attempt``, a PUT) and discoveries (``get``) alike.
    """

    def __init__(self, script: Iterable[Step], *, then: Step | None = None, clock: FakeClock | None = None,
                 latency: float = 0.0) -> None:
        self._script = [_checked(step) for step in script]
        self._then = None if then is None else _checked(then)
        self.calls: list[Call] = []
        self.clock, self.latency = clock, latency
        self.closes = 0  # close() calls: the driver closes once, at its terminal state
        self.aborted = 0

    def __repr__(self) -> str:
        return f"ScriptedTransport({len(self.calls)} of {len(self._script)} used)"

    @property
    def remaining(self) -> int:
        return max(0, len(self._script) - len(self.calls))

    def _answer(self, method: str, url: str, body: bytes | None, timeout: float) -> Outcome:
        n = len(self.calls) + 1
        if self.closes:
            raise ScriptExhausted(f"attempt {n} ({method} {url}) on a closed transport")
        step = self._script[n - 1] if n <= len(self._script) else self._then
        if step is None:
            raise ScriptExhausted(f"attempt {n} ({method} {url}) runs past the script of {len(self._script)} item(s)")
        call = Call(method, url, body, timeout, None if self.clock is None else self.clock.now())
        self.calls.append(call)
        if self.clock is not None and self.latency:
            self.clock.advance(self.latency)
        return _resolve(step, call, n)

    def attempt(self, url: str, body: bytes, timeout: float) -> Outcome:
        return self._answer("PUT", url, body, timeout)

    def get(self, url: str, timeout: float) -> Outcome:
        return self._answer("GET", url, None, timeout)

    def abort(self) -> None:
        self.aborted += 1

    @property
    def closed(self) -> bool:
        return self.closes > 0

    def close(self) -> None:
        self.closes += 1


class ScriptError(HarnessError):
    """A script step the kit cannot turn into an answer, or whose own check failed: the test is
    wrong, so it fails (a HarnessError reaches the test even from a driver's background thread)."""


class ScriptExhausted(ScriptError):
    """The code under test made more attempts than the script has items."""


class TimingTransport:
    """The real :class:`~coordinator.transport.HttpTransport` (or ``inner``), with each
    attempt's timeout and real duration recorded: for tests on real sockets that check
    an attempt's total time limit holds."""

    def __init__(self, inner: Transport | None = None) -> None:
        self.inner: Transport = inner if inner is not None else HttpTransport()
        self.timeouts: list[float] = []
        self.durations: list[float] = []
        self._clock = SystemClock()

    def _timed(self, call: Callable[[], Outcome], timeout: float) -> Outcome:
        self.timeouts.append(timeout)
        began = self._clock.now()
        try:
            return call()
        finally:
            self.durations.append(self._clock.now() - began)

    def attempt(self, url: str, body: bytes, timeout: float) -> Outcome:
        return self._timed(lambda: self.inner.attempt(url, body, timeout), timeout)

    def get(self, url: str, timeout: float) -> Outcome:
        """A lookup, timed; ``inner`` must be a lookup transport (HttpTransport is)."""
        get = getattr(self.inner, "get", None)
        if get is None:
            raise TypeError(f"TimingTransport.get: {type(self.inner).__name__} has no get()")
        return self._timed(lambda: get(url, timeout), timeout)

    def abort(self) -> None:
        self.inner.abort()

    def close(self) -> None:
        self.inner.close()
