"""A transport that answers from a script: outcomes without a network, for transition-driven tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Union

from coordinator.clock import FakeClock
from coordinator.outcome import Cause, Failure, Outcome

Step = Union[str, int, tuple[int, Mapping[str, str]], tuple[int, Mapping[str, str], str], Outcome]

# The root causes the real transport reports for each network failure.
_FAILURES: Mapping[str, Outcome] = {
    "refused": Outcome.of_failure(Failure.REFUSED, Cause("ConnectionRefusedError", "[Errno 111] Connection refused")),
    "dns": Outcome.of_failure(Failure.DNS, Cause("gaierror", "[Errno -2] Name or service not known")),
    "timeout": Outcome.of_failure(Failure.TIMEOUT, Cause("TimeoutError", "timed out")),
    "reset": Outcome.of_failure(Failure.RESET, Cause("ConnectionResetError", "[Errno 104] Connection reset by peer")),
    "connection": Outcome.of_failure(Failure.CONNECTION, Cause("OSError", "[Errno 113] No route to host")),
}


def to_outcome(step: Step) -> Outcome:
    """One script item as the Outcome a real transport would have produced."""
    if isinstance(step, Outcome):
        return step
    if isinstance(step, str):
        if step not in _FAILURES:
            raise ValueError(f"script item {step!r}: expected one of {', '.join(_FAILURES)}, a status or an Outcome")
        return _FAILURES[step]
    if isinstance(step, int) and not isinstance(step, bool):
        return Outcome.of_status(step, "OK" if step == 200 else "")
    if isinstance(step, tuple) and len(step) in (2, 3) and isinstance(step[0], int) and isinstance(step[1], Mapping):
        headers = {k.lower(): v for k, v in step[1].items()}
        body = step[2] if len(step) == 3 else ""
        return Outcome.of_status(step[0], body, retry_after=headers.get("retry-after"), date=headers.get("date"))
    raise ValueError(f"script item {step!r}: expected a failure name, a status, (status, headers[, body]) or an Outcome")


@dataclass(frozen=True)
class Call:
    """One attempt the transport answered: what was sent, and when (on the clock, if given)."""

    method: str
    url: str
    body: bytes | None
    timeout: float
    at: float | None


class ScriptedTransport:
    """Answers each attempt with the next script item; records every call.

    Items: ``"refused"``, ``"dns"``, ``"timeout"``, ``"reset"``, ``"connection"``, an int
    status, ``(status, headers)`` (e.g. ``(503, {"Retry-After": "2"})``),
    ``(status, headers, body)``, or an :class:`~coordinator.Outcome`. Running past the
    end raises :class:`ScriptExhausted` naming the attempt. With a ``clock``, each call
    records its time, and ``latency`` seconds pass on that clock per attempt. Serves
    registrations (``attempt``, a PUT) and discoveries (``get``) alike.
    """

    def __init__(self, script: Iterable[Step], *, clock: FakeClock | None = None, latency: float = 0.0) -> None:
        self._script = [to_outcome(step) for step in script]  # bad items fail here, not mid-test
        self.calls: list[Call] = []
        self.clock, self.latency = clock, latency
        self.closed = False
        self.aborted = 0

    def __repr__(self) -> str:
        return f"ScriptedTransport({len(self.calls)} of {len(self._script)} used)"

    @property
    def remaining(self) -> int:
        return len(self._script) - len(self.calls)

    def _answer(self, method: str, url: str, body: bytes | None, timeout: float) -> Outcome:
        n = len(self.calls) + 1
        if n > len(self._script):
            raise ScriptExhausted(f"attempt {n} ({method} {url}) runs past the script of {len(self._script)} item(s)")
        self.calls.append(Call(method, url, body, timeout, None if self.clock is None else self.clock.now()))
        if self.clock is not None and self.latency:
            self.clock.advance(self.latency)
        return self._script[n - 1]

    def attempt(self, url: str, body: bytes, timeout: float) -> Outcome:
        return self._answer("PUT", url, body, timeout)

    def get(self, url: str, timeout: float) -> Outcome:
        return self._answer("GET", url, None, timeout)

    def abort(self) -> None:
        self.aborted += 1

    def close(self) -> None:
        self.closed = True


class ScriptExhausted(AssertionError):
    """The code under test made more attempts than the script has items."""
