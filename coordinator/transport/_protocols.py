"""What the drivers need from the network; the simulator and tests plug in their own."""

from __future__ import annotations

from typing import Protocol

from coordinator.outcome import Outcome


class Transport(Protocol):
    """What the driver needs from the network; the simulator and tests plug in their own."""

    def attempt(self, url: str, body: bytes, timeout: float) -> Outcome: ...

    def abort(self) -> None:
        """Cut the attempt in flight short (thread-safe; a no-op when idle)."""

    def close(self) -> None: ...


class LookupTransport(Protocol):
    """What a discovery needs: one GET, its body whole (up to 64 KiB) in ``Outcome.body``."""

    def get(self, url: str, timeout: float) -> Outcome: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


