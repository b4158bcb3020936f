"""One SGLang instance's drivers, as its main process sees them.

SGLang runs each scheduler in a process of its own; the probes are served by the main
process. The first process of the tree to load the plugin (SGLang's main process: it
loads plugins before it starts any other) opens the channel, a datagram socket in
Linux's abstract namespace, and exports its name in ``PREFILL_STARTUP_CHANNEL``; its
descendants inherit the variable and send their drivers' snapshots there. The main
process keeps them in memory (:class:`Board`), where the probes read them.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import dataclass

from coordinator.instance._board import Board, Member
from coordinator.instance._channel import Local, Publish, Receiver, Sender, channels, descends, owner, query
from coordinator.instance._wire import BadMessage, Report

__all__ = ["CHANNEL_VAR", "BadMessage", "Board", "Joined", "Member", "Publish", "Report", "channels", "join", "owner",
           "query"]

CHANNEL_VAR = "PREFILL_STARTUP_CHANNEL"


@dataclass(frozen=True)
class Joined:
    """This process's place in its instance: ``publish`` takes its drivers; the main process
    also has the ``board`` and the ``receiver`` filling it."""

    publish: Publish
    board: Board | None = None
    receiver: Receiver | None = None

    @property
    def main(self) -> bool:
        return self.board is not None

    def close(self) -> None:
        if self.receiver is not None:
            self.receiver.close()
        if self.board is not None:
            self.board.close()
        if isinstance(self.publish, Sender):
            self.publish.close()


def join(environ: MutableMapping[str, str]) -> Joined:
    """A descendant of the process named in ``PREFILL_STARTUP_CHANNEL`` sends there; any other
    process (a variable left in a shell names no ancestor) opens a channel of its own and
    exports its name for the processes it starts. OSError when no socket can be had."""
    name = environ.get(CHANNEL_VAR, "")
    main = owner(name)
    me = os.getpid()
    if main is not None and main != me and descends(me, main):
        return Joined(Sender(name))
    board = Board()
    receiver = Receiver(board)
    environ[CHANNEL_VAR] = receiver.name
    return Joined(Local(board), board, receiver)
