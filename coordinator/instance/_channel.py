"""How an instance's processes reach its main process: datagrams on an AF_UNIX socket in
Linux's abstract namespace.

No file is involved: nothing to clean up, nothing of the user's to touch, nothing left
behind (the name goes with the socket). The kernel tells the receiver each sender's pid
and uid (``SO_PASSCRED``); only the main process's own user and descendants are heard.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, Protocol

from coordinator.clock import REAL_TIME, Clock
from coordinator.instance._board import Board, Full
from coordinator.instance._wire import (
    MAX_DATAGRAM,
    MAX_REPLY,
    QUERY,
    BadMessage,
    Report,
    decode,
    decode_report,
    encode,
    encode_report,
    is_query,
)
from coordinator.snapshot import Snapshot

log = logging.getLogger("coordinator.instance")

PREFIX = "prefill-startup/"  # every name: PREFIX + "<main pid>/<n>"
SEND_TIMEOUT_S = 1.0  # a full receive queue blocks a sender this long, then the snapshot is dropped
COMPLAIN_EVERY_S = 60.0  # one line per kind of bad datagram per minute, with a count
# Read this many datagrams back to back, then pause: a flood (a runaway or hostile sender)
# then costs the main process a bounded share of its CPU, and its other threads (the probes,
# SGLang's HTTP server) get the interpreter in between. An instance sends a few per transition.
BURST, PAUSE_S = 32, 0.005
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
_MAX_DEPTH = 64  # ancestors walked to decide whether a sender descends from the main process


def parent(pid: int) -> int | None:
    """``pid``'s parent (Linux ``/proc``), or None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read(4096)
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields follow the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


def descends(pid: int, ancestor: int) -> bool:
    """Whether ``ancestor`` is ``pid``'s parent, grandparent, ..."""
    for _ in range(_MAX_DEPTH):
        up = parent(pid)
        if up is None or up <= 1:
            return False
        if up == ancestor:
            return True
        pid = up
    return False


def owner(name: str) -> int | None:
    """The main process's pid in a channel name, or None when it is not one."""
    if not name.startswith(PREFIX):
        return None
    pid, _, n = name[len(PREFIX):].partition("/")
    return int(pid) if pid.isdigit() and n.isdigit() and 0 < len(pid) < 11 else None


class Publish(Protocol):
    def attach(self, driver: Any) -> Callable[[], None]:
        """Publish ``driver``'s snapshots from now on; the callable retires it."""


class _Publisher:
    """A process's drivers, numbered in attach order, each snapshot handed to :meth:`send`."""

    def __init__(self) -> None:
        self._next = itertools.count(1)
        self._lock = threading.Lock()

    def attach(self, driver: Any) -> Callable[[], None]:
        with self._lock:
            n = next(self._next)
        driver.add_listener(lambda snapshot: self.send(n, snapshot))
        self.send(n, driver.snapshot())
        return lambda: self.send(n, None)

    def send(self, n: int, snapshot: Snapshot | None) -> None:
        """Driver ``n``'s latest snapshot, or None: it retired."""
        raise NotImplementedError


class Local(_Publisher):
    """The main process's own drivers go straight onto its board."""

    def __init__(self, board: Board) -> None:
        super().__init__()
        self._board = board

    def send(self, n: int, snapshot: Snapshot | None) -> None:
        try:
            self._board.put(os.getpid(), n, snapshot)
        except Full as exc:  # only a new driver can overflow it: snapshot is not None
            log.error("prefill_startup.publish_failed driver=%s: %s", getattr(snapshot, "name", n), exc)


class Sender(_Publisher):
    """A descendant process's end: one unbound datagram socket, every driver's snapshots sent
    to the main process's ``name``. A snapshot that cannot be sent is dropped (the next one
    replaces it) and the first such failure is one ERROR: the main process then sees this
    process's ranks as not registered, and readiness waits for them."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self._address = "\0" + name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(SEND_TIMEOUT_S)
        self.errors = 0

    def send(self, n: int, snapshot: Snapshot | None) -> None:
        try:
            self._sock.sendto(encode(n, snapshot), self._address)
        except OSError as exc:
            self.errors += 1
            if self.errors == 1:
                log.error("prefill_startup.publish_failed channel=%s: %s; the main process's probes do not "
                          "see this process's drivers", self.name, exc)

    def close(self) -> None:
        self._sock.close()


class _Complaints:
    """Bad datagrams, logged once per kind per ``COMPLAIN_EVERY_S`` with how many came."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def __call__(self, kind: str, detail: str) -> None:
        self._count[kind] = self._count.get(kind, 0) + 1
        now = self._clock.now()
        last = self._last.get(kind)
        if last is not None and now - last < COMPLAIN_EVERY_S:
            return
        self._last[kind] = now
        count = self._count.pop(kind)
        log.warning("prefill_startup.datagram_ignored reason=%s count=%d: %.200r", kind, count, detail)


class Receiver:
    """The main process's end: binds a new abstract name, reads datagrams on a daemon thread
    into ``board``. Heard: the user's own descendant processes of this one (and itself)."""

    def __init__(self, board: Board, *, clock: Clock = REAL_TIME) -> None:
        self.board = board
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.name = self._bind()
        self._clock = clock
        self._complain = _Complaints(clock)
        self._kin: dict[int, bool] = {}  # sender pid -> descends from this process
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="prefill-startup-channel", daemon=True)
        self._thread.start()

    def _bind(self) -> str:
        for n in range(1, 65):  # a name squatted by another process is skipped, never shared
            name = f"{PREFIX}{os.getpid()}/{n}"
            try:
                self._sock.bind("\0" + name)
                return name
            except OSError:
                continue
        self._sock.close()
        raise OSError(f"no free channel name {PREFIX}{os.getpid()}/1..64")

    def _loop(self) -> None:
        me, uid = os.getpid(), os.geteuid()
        space = socket.CMSG_SPACE(_UCRED.size)
        for n in itertools.count(1):
            if n % BURST == 0:
                self._clock.sleep(PAUSE_S)
            try:
                data, ancillary, flags, address = self._sock.recvmsg(MAX_DATAGRAM, space)
            except OSError:
                return
            if self._stopping:
                return
            creds = next((_UCRED.unpack(d[:_UCRED.size]) for level, kind, d in ancillary
                          if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
                          and len(d) >= _UCRED.size), None)
            if creds is None:
                self._complain("no credentials", "")
                continue
            pid, sender_uid, _ = creds
            if sender_uid != uid:
                self._complain("another user", f"uid {sender_uid}, pid {pid}")
            elif is_query(data):  # prefill-startup status, from a shell of the same user
                self._reply(address)
            elif pid != me and not self._descends(pid, me):
                self._complain("not of this instance", f"pid {pid}")
            elif flags & socket.MSG_TRUNC:
                self._complain("too long", f"pid {pid}: more than {MAX_DATAGRAM} bytes")
            else:
                self._take(pid, data)

    def _reply(self, address: Any) -> None:
        expected = self.board.expected()
        report = Report(None if expected is None else expected.ranks, "" if expected is None else expected.where,
                        tuple((m.pid, m.snapshot()) for m in self.board.members()))
        try:
            self._sock.sendto(encode_report(report), address)
        except (OSError, TypeError) as exc:  # TypeError: an unbound sender has no address
            self._complain("unanswerable query", str(exc))

    def _descends(self, pid: int, me: int) -> bool:
        known = self._kin.get(pid)
        if known is None:
            if len(self._kin) >= 4096:  # a storm of pids: forget, ask /proc again
                self._kin.clear()
            known = self._kin[pid] = descends(pid, me)
        return known

    def _take(self, pid: int, data: bytes) -> None:
        try:
            message = decode(data)
            self.board.put(pid, message.driver, message.snapshot)
        except (BadMessage, Full) as exc:
            self._complain(type(exc).__name__, f"pid {pid}: {exc}")

    def close(self) -> None:
        """Stop reading, free the name; the board keeps what it holds."""
        if self._stopping:
            return
        self._stopping = True
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as wake:
            try:
                wake.sendto(b"", "\0" + self.name)
            except OSError:
                pass
        self._thread.join(timeout=5)
        self._sock.close()


def channels() -> list[str]:
    """The channel names bound on this host (Linux ``/proc/net/unix``), in the order listed."""
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as f:
            paths = [line.split()[-1] for line in f if "@" + PREFIX in line]
    except OSError:
        return []
    return [p[1:] for p in paths if p.startswith("@") and owner(p[1:]) is not None]


def query(name: str, timeout: float = 2.0) -> Report:
    """Ask the main process at ``name`` what its probes read (OSError, or BadMessage for an answer
    that is not one)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.bind("")  # Linux autobind: an abstract address of our own to be answered at
        sock.settimeout(timeout)
        sock.sendto(QUERY, "\0" + name)
        return decode_report(sock.recv(MAX_REPLY + 1))
