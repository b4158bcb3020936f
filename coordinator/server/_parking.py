"""The parking loop for long-polls: held answers without a thread each.

The server (:mod:`._base`) keeps the thread-per-connection model for everything else:
a handler that has read a request it cannot answer yet hands its connection to ONE
parking thread (:meth:`._base.Server.park`, a ``selectors`` loop) and returns, so a thousand
held requests cost a thousand sockets, not a thousand threads. The parking thread
answers each when :meth:`._base.Server.wake_parked` says the state changed, or at its
deadline (one non-blocking write, ``Connection: close``), and drops at once a
connection its client reset. A client's FIN changes nothing: a half-closed client
still reads its answer. Parked connections do not count against
:attr:`._base.Server.max_connections` (they hold no thread) but against
:attr:`._base.Server.max_parked`; beyond it :meth:`._base.Server.park` refuses and the handler
answers at once. Closing the server closes them unanswered.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import selectors
import socket
import threading
from collections.abc import Callable

from coordinator.clock import REAL_TIME

_log = logging.getLogger("coordinator.server")


def close_drained(sock: socket.socket) -> None:
    """Close ``sock`` after reading what its client sent: closing with a request unread
    would reset the connection, and the client would lose an answer it has not read yet
    (a held answer here, the over-capacity 503 in :mod:`._base`)."""
    with contextlib.suppress(OSError):  # BlockingIOError: nothing more to read now
        for _ in range(16):
            if not sock.recv(65536):
                break
    sock.close()


# A held request's answer: called with timed_out=False when woken (None: keep holding)
# and with timed_out=True at its deadline (never None then).
Answer = Callable[[bool], bytes | None]


class _Held:
    __slots__ = ("sock", "deadline", "answer", "watched")

    def __init__(self, sock: socket.socket, deadline: float, answer: Answer) -> None:
        self.sock, self.deadline, self.answer = sock, deadline, answer
        self.watched = True  # in the selector, for reads, until its client's FIN


class Parking:
    """The parking thread and the connections it holds (see the module docstring)."""

    def __init__(self, name: str, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()  # guards the fields below up to _held
        self._incoming: list[_Held] = []  # handed over, not yet seen by the thread
        self._count = 0  # handed over and not yet closed
        self._poke = False  # re-ask every held answer
        self._closing = False
        self._full = False  # at the limit since the last accepted one: warn once per episode
        self._held: dict[socket.socket, _Held] = {}  # the thread's own
        self._seq = itertools.count()  # heap tie-breaker
        self._selector = selectors.DefaultSelector()  # epoll/kqueue: no FD_SETSIZE limit
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def take(self, sock: socket.socket, deadline: float, answer: Answer) -> bool:
        """Hold ``sock`` until ``answer`` gives bytes; False (not taken) when full or closing."""
        with self._lock:
            if self._closing:
                return False
            full = self._count >= self._limit
            warn, self._full = full and not self._full, full
            if not full:
                self._count += 1
                self._incoming.append(_Held(sock, deadline, answer))
                self._signal()
        if warn:
            _log.warning("%d requests held, the most at once: further long-polls are answered at once "
                         "until some are answered", self._limit)
        return not full

    def wake(self) -> None:
        with self._lock:
            self._poke = True
            if not self._closing:
                self._signal()

    def close(self) -> None:
        """Close every held connection unanswered and join the thread."""
        with self._lock:
            self._closing = True
            self._signal()
        self._thread.join()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()  # after the join, and no one signals once _closing is set

    def _signal(self) -> None:  # caller holds the lock
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            self._wake_w.send(b"\0")

    def _run(self) -> None:
        deadlines: list[tuple[float, int, _Held]] = []
        while True:
            timeout = max(0.0, deadlines[0][0] - REAL_TIME.now()) if deadlines else None
            ready = [key.data for key, _ in self._selector.select(timeout)]
            if None in ready:
                # Drained BEFORE the flags are read: a signal sent after that read stays pending
                # for the next select. Draining after would eat a close() signal sent meanwhile,
                # and the thread would sleep until the next deadline.
                self._drain_wake()
            with self._lock:
                incoming, self._incoming = self._incoming, []
                poke, self._poke = self._poke, False
                if self._closing:
                    for held in (*self._held.values(), *incoming):
                        held.sock.close()
                    self._held.clear()
                    self._count = 0
                    return
            for held in ready:
                if held is not None:
                    self._readable(held)
            for held in incoming:
                held.sock.setblocking(False)
                self._held[held.sock] = held
                self._selector.register(held.sock, selectors.EVENT_READ, held)
                heapq.heappush(deadlines, (held.deadline, next(self._seq), held))
            # New ones too: the state may have changed between the handler's look and the hand-over.
            for held in list(self._held.values()) if poke else incoming:
                self._settle(held, timed_out=False)
            now = REAL_TIME.now()
            while deadlines and deadlines[0][0] <= now:
                held = heapq.heappop(deadlines)[2]
                if self._held.get(held.sock) is held:
                    self._settle(held, timed_out=True)
            if not self._held:
                deadlines.clear()  # entries of connections answered early

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def _readable(self, held: _Held) -> None:
        try:
            data = held.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:  # reset: the client is gone, nothing to answer
            self._drop(held)
            return
        if data:  # a pipelined request: answer this one now; Connection: close drops the next
            self._settle(held, timed_out=True)
            return
        # A FIN: the client sends no more but may still read (RFC 9112, 9.6: a half-close does
        # not "imply that the client is no longer interested in a response"), so its long-poll is
        # answered when due; answering at once would turn such a client's long-poll into a busy
        # re-poll. A FIN cannot tell a half-close from a close: a closed client's socket is held
        # until then too (at most the wait). At EOF the socket stays readable: stop reading it.
        self._selector.unregister(held.sock)
        held.watched = False

    def _settle(self, held: _Held, *, timed_out: bool) -> None:
        try:
            answer = held.answer(timed_out)
        except Exception:  # a bug; the other held connections must not hang on it
            _log.exception("answering a held request failed")
            answer = b""
        if answer is None:
            return
        with contextlib.suppress(OSError):
            held.sock.send(answer)  # non-blocking: one write, never a wait on a client that does not read
        self._drop(held)

    def _drop(self, held: _Held) -> None:
        if held.watched:
            self._selector.unregister(held.sock)
        del self._held[held.sock]
        close_drained(held.sock)
        with self._lock:
            self._count -= 1
