"""The sd_notify hook: tell systemd (``Type=notify``) how a registration is doing.

Stdlib only: one AF_UNIX datagram per state change to ``$NOTIFY_SOCKET`` (a path, or
an abstract socket when it starts with ``@``). ``STATUS=`` on every state change,
``EXTEND_TIMEOUT_USEC=`` while the registration is within its deadline, so a unit's
``TimeoutStartSec`` does not kill a rank the policy is still patiently retrying, and
``READY=1`` once REGISTERED. A failed send never touches the registration.
"""

from __future__ import annotations

import logging
import os
import socket

from coordinator.instrumentation._records import Record, TransitionRecord
from coordinator.instrumentation._text import one_line
from states import SETTLED, State

_log = logging.getLogger("coordinator")
# Beyond the time left until the deadline: the last attempt, and the process's own wind-down.
MARGIN_S = 10.0
# Without a deadline, each state change buys this long; a registration that keeps
# changing state keeps extending, one stuck in an attempt runs out.
NO_DEADLINE_EXTENSION_S = 60.0


def _address(path: str) -> str:
    # "@name" is an abstract socket: a leading NUL byte on Linux.
    return "\0" + path[1:] if path.startswith("@") else path


class SystemdNotifier:
    """A hook sending ``sd_notify`` messages to ``socket_path`` (``$NOTIFY_SOCKET`` by default)."""

    def __init__(self, socket_path: str | None = None) -> None:
        path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
        if not path:
            raise ValueError("socket_path: no NOTIFY_SOCKET to notify (not started by systemd?)")
        self.socket_path = path
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls) -> SystemdNotifier | None:
        """A notifier when systemd set ``NOTIFY_SOCKET``, else None."""
        return cls() if os.environ.get("NOTIFY_SOCKET") else None

    def __repr__(self) -> str:
        return f"SystemdNotifier({self.socket_path!r})"

    def __call__(self, record: Record) -> None:
        if not isinstance(record, TransitionRecord):
            return
        s = record.snapshot
        # One line: a newline in a name or an error would start an assignment (READY=1) of its own.
        lines = [f"STATUS={one_line((s.name + ': ' if s.name else '') + s.describe(s.taken_at))}"]
        if s.state is State.REGISTERED:
            lines.append("READY=1")
        elif s.state not in SETTLED:
            if s.deadline_s is None:
                extension = NO_DEADLINE_EXTENSION_S
            else:
                left = s.deadline_s - s.elapsed_s
                extension = max(0.0, left) + MARGIN_S
            lines.append(f"EXTEND_TIMEOUT_USEC={int(extension * 1e6)}")
        self.notify("\n".join(lines))
        if record.to_state in SETTLED:
            self.close()

    def notify(self, message: str) -> None:
        """Send one sd_notify datagram; errors are logged once at DEBUG, never raised."""
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.sendto(message.encode(), _address(self.socket_path))
        except OSError as exc:
            if not self._warned:
                self._warned = True
                _log.debug("sd_notify to %s failed: %s", self.socket_path, exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
