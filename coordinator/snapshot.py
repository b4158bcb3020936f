"""The frozen view of a driver that readers in any thread may hold."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import TYPE_CHECKING, Any

from coordinator.outcome import Cause, Reason
from states import SETTLED, State

if TYPE_CHECKING:
    from coordinator.protocol import PrefillInfo


_INSTANTS = ("started_at", "state_since", "next_attempt_at", "taken_at")  # on the driver's monotonic clock


class Kind(str, Enum):
    """Which side a driver serves; the value is what JSON, logs and metrics show."""

    REGISTRATION = "registration"  # the prefill side: one rank's PUT /route
    DISCOVERY = "discovery"  # the decode side: a prefill instance's topology

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Snapshot:
    """One consistent instant of a driver; the driver makes the next one from this one
    at every transition (``dataclasses.replace``), and swaps it in whole.

    Times are on the driver's clock. ``attempt`` counts attempts begun (the first one
    in flight is attempt 1). ``reason`` says why a terminal state was reached
    (registered, permanent, exhausted, deadline, cancelled), else None.
    """

    state: State
    url: str
    attempt: int
    max_attempts: int | None
    started_at: float | None
    state_since: float
    next_attempt_at: float | None
    last_status: int | None
    last_error: Cause | None
    reason: Reason | None
    taken_at: float
    seq: int
    name: str | None = None  # the driver's name= (a rank, a prefill address); probes show it
    kind: Kind = Kind.REGISTRATION
    deadline_s: float | None = None  # the policy's budget from the first attempt
    invalidations: int = 0  # times a watching driver left REGISTERED to resolve again

    @property
    def settled(self) -> bool:
        return self.state in SETTLED

    @property
    def elapsed_s(self) -> float:
        """Seconds since the first attempt began, as of this snapshot."""
        return 0.0 if self.started_at is None else self.taken_at - self.started_at

    def seconds_to_next_attempt(self, now: float) -> float | None:
        if self.state is not State.BACKOFF or self.next_attempt_at is None:
            return None
        return max(0.0, self.next_attempt_at - now)

    def describe(self, now: float) -> str:
        """The one-line status that verbose probes, sd_notify and the CLI show."""
        if self.state is State.REGISTERED:
            return f"REGISTERED after {self.attempt} attempt(s)"
        failed = self.state is State.FAILED
        parts = [self.state.value + (f" ({self.reason})" if failed else ""), f"attempt {self.attempt}"]
        if self.last_status is not None:
            parts.append(f"HTTP {self.last_status}")
        if self.last_error is not None:
            # The type says enough while retrying; a final failure, or why a watcher is
            # resolving again, says it in full.
            full = failed or (self.last_error.type == "Invalidated" and self.last_status is None)
            parts.append(str(self.last_error) if full else self.last_error.type)
        wait = self.seconds_to_next_attempt(now)
        if wait is not None:
            parts.append(f"next attempt in {wait:.2f} s")
        return ", ".join(parts)

    def report(self, now: float) -> dict[str, Any]:
        """:meth:`to_dict` for people (probes' ``/status``, the CLI): the driver's clock is
        monotonic, meaningless to a reader, so its instants become seconds relative to ``now``."""
        out = self.to_dict(now)
        for instant in _INSTANTS:
            del out[instant]
        out["started_s_ago"] = None if self.started_at is None else round(now - self.started_at, 6)
        out["in_state_s"] = round(now - self.state_since, 6)
        return out

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        """JSON-ready. With ``now`` (same clock), the wait until the next attempt too."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["state"] = self.state.value
        out["kind"] = self.kind.value
        out["reason"] = None if self.reason is None else self.reason.value
        out["last_error"] = None if self.last_error is None else asdict(self.last_error)
        out["elapsed_s"] = self.elapsed_s
        if now is not None:
            out["seconds_to_next_attempt"] = self.seconds_to_next_attempt(now)
        return out


@dataclass(frozen=True)
class DiscoverySnapshot(Snapshot):
    """A :class:`~coordinator.Discovery`'s snapshot: also what it resolved."""

    kind: Kind = Kind.DISCOVERY
    info: PrefillInfo | None = None  # the prefill instance's topology and target addresses, once REGISTERED

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        out = super().to_dict(now)
        out["info"] = None if self.info is None else self.info.to_dict()
        return out
