"""What a driver's run does once settled, and the one rule of when REGISTERED ends it.

A run *settles* at REGISTERED or FAILED (:data:`states.SETTLED`): ``wait()`` returns there,
and probes and hooks report the result. FAILED always ends the run. REGISTERED ends it too
(:class:`Final`) unless the driver was made with ``watch=True`` (:class:`Watch`): then the run
goes on after REGISTERED, its transport kept open, in rounds that check that what it resolved
still holds, and an invalidation takes it back to REGISTERING. :meth:`Final.goes_on` is that
rule; the driver asks it and nothing else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from coordinator.snapshot import Snapshot
from states import State

# Why REGISTERED no longer holds: a bounded code (for metrics) and a message.
Invalidation = tuple[str, str]
# One round of watching (the driver's subclass): wait for the next check, cut short when the
# event is set, make it; a Invalidation, or None while what was resolved holds.
Round = Callable[[threading.Event], Invalidation | None]


class Final:
    """A driver that does not watch: settling ends its run. Holds nothing: one for all."""

    watches = False

    def goes_on(self, snapshot: Snapshot) -> bool:
        """Whether the run goes on after settling at ``snapshot``."""
        return False

    def moved(self, snapshot: Snapshot) -> None:
        """The driver's snapshot is now ``snapshot`` (after every transition)."""

    def wait(self, thread: threading.Thread, timeout: float | None) -> None:
        """Until the background run settles (``timeout`` at most): here, until it ends."""
        thread.join(timeout)

    def interrupt(self) -> None:
        """``stop()``: cut a round's wait short."""

    def take(self, seq: int) -> Invalidation | None:
        """The invalidation asked for the REGISTERED snapshot ``seq``, if any (once)."""
        return None

    def round(self, seq: int, cancel: threading.Event, check: Round) -> None:
        """One round after settling at REGISTERED snapshot ``seq``; see :class:`Watch`."""


FINAL = Final()


class Watch(Final):
    """A driver made with ``watch=True``: after REGISTERED, rounds of ``check`` until an
    invalidation (found by a round, or asked for with :meth:`ask`) or ``stop()``."""

    watches = True

    def __init__(self) -> None:
        self._wake = threading.Event()  # cuts a round's wait short: stop(), ask()
        self._settled = threading.Event()  # set while the snapshot is settled: what wait() waits for
        # An invalidation until the driver acts on it, tagged with the seq of the REGISTERED
        # snapshot it is about: one about an earlier REGISTERED (raced by a resolution under
        # way) is dropped, never carried over to the next.
        self._asked: tuple[int, str, str] | None = None

    def goes_on(self, snapshot: Snapshot) -> bool:
        return snapshot.state is State.REGISTERED

    def moved(self, snapshot: Snapshot) -> None:
        if snapshot.settled:
            self._settled.set()
        else:
            self._settled.clear()

    def wait(self, thread: threading.Thread, timeout: float | None) -> None:
        self._settled.wait(timeout)

    def interrupt(self) -> None:
        self._wake.set()

    def ask(self, seq: int, code: str, message: str) -> None:
        """Invalidate the REGISTERED snapshot ``seq`` (any thread): the driver acts on its next step."""
        self._asked = (seq, code, message)
        self._wake.set()

    def take(self, seq: int) -> Invalidation | None:
        asked, self._asked = self._asked, None
        if asked is None or asked[0] != seq:
            return None
        return asked[1], asked[2]

    def round(self, seq: int, cancel: threading.Event, check: Round) -> None:
        self._wake.clear()
        if self._asked is not None or cancel.is_set():
            return  # asked meanwhile: the driver acts on it first
        found = check(self._wake)
        if found is not None and not cancel.is_set():
            self.ask(seq, *found)
