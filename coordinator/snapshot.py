"""The frozen view of a registration that readers in any thread may hold."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from coordinator.outcome import Cause
from states import TERMINAL, State

if TYPE_CHECKING:
    from coordinator.prefill_info import PrefillInfo


@dataclass(frozen=True)
class Snapshot:
    """One consistent instant of a registration; the driver swaps in a new one per step.

    Times are on the registration's clock. ``reason`` says why a terminal state was
    reached (registered, permanent, exhausted, deadline, cancelled), else None.
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
    reason: str | None
    taken_at: float
    seq: int
    name: str | None = None  # the driver's name= (a rank, a prefill address); probes show it
    kind: str = "registration"  # "registration" (prefill side) or "discovery" (decode side)
    deadline_s: float | None = None  # the policy's budget from the first attempt
    info: PrefillInfo | None = None  # a discovery's result, once REGISTERED

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def elapsed_s(self) -> float:
        """Seconds since the first attempt began, as of this snapshot."""
        return 0.0 if self.started_at is None else self.taken_at - self.started_at

    def seconds_to_next_attempt(self, now: float) -> float | None:
        if self.state is not State.BACKOFF or self.next_attempt_at is None:
            return None
        return max(0.0, self.next_attempt_at - now)

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        """JSON-ready. With ``now`` (same clock), the wait until the next attempt too."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "info"}
        out["state"] = self.state.value
        out["last_error"] = None if self.last_error is None else asdict(self.last_error)
        if self.kind == "discovery":
            out["info"] = None if self.info is None else self.info.to_dict()
        out["elapsed_s"] = self.elapsed_s
        if now is not None:
            out["seconds_to_next_attempt"] = self.seconds_to_next_attempt(now)
        return out
