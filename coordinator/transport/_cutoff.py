"""The deadline and abort plumbing: a total time limit per attempt, and a cut from another thread.

urllib3 connections and pools that show each attempt's socket to a :class:`Cutoff`, so
``abort()`` (or the attempt's total limit) can shut it down wherever the attempt is.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3 import PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family

from coordinator.clock import REAL_TIME
from coordinator.outcome import Failure


class Cutoff:
    """The socket of the attempt in flight, so another thread can cut the attempt short.

    The socket is captured when it connects (or is taken from the pool), not read back
    from the connection later: http.client forgets it once the headers of a
    ``Connection: close`` answer are in, yet the body read must stay cuttable.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer: threading.Timer | None = None
        self.ending: Failure | None = None  # why the attempt in flight is being cut short
        self._aborted = False
        self.timeout = 0.0
        self.deadline = 0.0  # on REAL_TIME: when the attempt in flight must be over
        self._kept: socket.socket | None = None  # the connection the last answer left in the pool

    def arm(self, timeout: float) -> None:
        """A new attempt begins; after :meth:`abort` every attempt begins cancelled."""
        with self._lock:
            self._sock, self.ending = None, (Failure.CANCELLED if self._aborted else None)
            self.timeout, self.deadline = timeout, REAL_TIME.now() + timeout
            self._kept = None  # the attempt takes it (or a new one)

    def keep(self, sock: socket.socket | None) -> None:
        """A connection goes back to the pool, open for the next attempt."""
        with self._lock:
            self._kept = sock

    def peer_closed(self) -> bool:
        """Whether the server has closed the kept connection (its FIN, or anything else to read
        on an idle HTTP/1.1 connection): one non-blocking poll."""
        with self._lock:
            sock = self._kept
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):  # closed on our side meanwhile (the pool discarded it)
            return False
        return bool(readable)

    def abort(self) -> None:
        """Cancel the attempt in flight and every later one: a stop() landing between two
        attempts, before the next one is armed, must not be lost."""
        with self._lock:
            self._aborted = True
        self.cut(Failure.CANCELLED)

    def connecting(self, sock: socket.socket) -> None:
        """The socket of a connect() about to block: a cut shuts it down, and Linux then
        aborts the handshake at once instead of waiting out the connect timeout."""
        with self._lock:
            self._sock = sock
            ending = self.ending
        if ending is not None:
            _shutdown(sock)

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if sock is not None and self.ending is None and self.expired:
                self.ending = Failure.TIMEOUT  # resolving took it all: send nothing
            ending = self.ending
            if sock is not None and not isinstance(sock, _DeadlineSocket) and self._timer is None:
                # A TLS socket cannot be adopted: a timer thread enforces the total limit.
                self._timer = threading.Timer(max(0.0, self.deadline - REAL_TIME.now()), self.cut,
                                              (Failure.TIMEOUT,))
                self._timer.daemon = True
                self._timer.start()
            elif sock is None and self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if ending is not None:
            # Cut while resolving or connecting, where nothing could be interrupted.
            _shutdown(sock)

    @property
    def expired(self) -> bool:
        return REAL_TIME.now() >= self.deadline

    def cut(self, why: Failure) -> None:
        with self._lock:
            if self.ending is None:
                self.ending = why
            sock = self._sock
        _shutdown(sock)

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._sock is not None


class _DeadlineSocket(socket.socket):
    """A TCP socket whose every read waits at most what is left of the attempt's total
    limit: a server trickling one byte per read timeout cannot stretch an attempt, and
    no thread is needed to enforce it."""

    _cutoff: Cutoff
    _read_timeout: float | None

    @classmethod
    def adopt(cls, sock: socket.socket, cutoff: Cutoff) -> _DeadlineSocket:
        timeout = sock.gettimeout()
        adopted = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        adopted._cutoff = cutoff
        adopted.settimeout(timeout)
        return adopted

    def settimeout(self, value: float | None) -> None:
        self._read_timeout = value  # urllib3's per-read timeout, within the total limit
        super().settimeout(value)

    def _bound(self) -> None:
        left = self._cutoff.deadline - REAL_TIME.now()
        if left <= 0:
            raise TimeoutError(f"no complete answer within {self._cutoff.timeout:.3g} s")
        super().settimeout(left if self._read_timeout is None else min(self._read_timeout, left))

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._bound()
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._bound()
        return super().recv_into(buffer, nbytes, flags)


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: the attempt is ending anyway


class _CutoffConnection:
    """Mixin for urllib3 connections: adopt the fresh socket, show it to the cutoff."""

    cutoff: Cutoff
    sock: socket.socket
    # urllib3's HTTPConnection, which this mixes into
    host: str
    port: int
    _dns_host: str
    timeout: float | None
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        # urllib3's, but the socket is shown to the cutoff before connect() blocks.
        host = self._dns_host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, self.port, allowed_gai_family(), socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]  # the mixin is the connection
        error: OSError = OSError("getaddrinfo returned no address")
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(self.timeout)
                self.cutoff.connecting(sock)
                sock.connect(address)
                return sock
            except socket.timeout as exc:
                sock.close()
                raise ConnectTimeoutError(self, f"connect to {self.host} timed out") from exc
            except OSError as exc:
                sock.close()
                error = exc
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error  # type: ignore[arg-type]  # the mixin is the connection

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        if type(self.sock) is socket.socket:  # plain TCP; a TLS socket is left as it is
            self.sock = _DeadlineSocket.adopt(self.sock, self.cutoff)
        self.cutoff.attach(self.sock)


class _CutoffHTTPConnection(_CutoffConnection, HTTPConnection):
    pass


class _CutoffHTTPSConnection(_CutoffConnection, HTTPSConnection):
    pass


class _CutoffPool:
    """Mixin for urllib3 pools: hand the cutoff to new connections, and show it pooled sockets."""

    cutoff: Cutoff

    def _new_conn(self) -> Any:
        conn = super()._new_conn()  # type: ignore[misc]
        conn.cutoff = self.cutoff
        return conn

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        self.cutoff.attach(getattr(conn, "sock", None))  # a pooled, already connected socket
        return conn

    def _put_conn(self, conn: Any) -> None:
        # None when http.client has let go of the socket (a Connection: close answer).
        self.cutoff.keep(getattr(conn, "sock", None))
        super()._put_conn(conn)  # type: ignore[misc]


class _CutoffHTTPPool(_CutoffPool, HTTPConnectionPool):
    ConnectionCls = _CutoffHTTPConnection


class _CutoffHTTPSPool(_CutoffPool, HTTPSConnectionPool):
    ConnectionCls = _CutoffHTTPSConnection


class _CutoffPoolManager(PoolManager):
    def __init__(self, cutoff: Cutoff, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cutoff = cutoff
        self.pool_classes_by_scheme = {"http": _CutoffHTTPPool, "https": _CutoffHTTPSPool}

    def _new_pool(self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None) -> Any:
        pool: Any = super()._new_pool(scheme, host, port, request_context)
        pool.cutoff = self.cutoff
        return pool


class AbortableAdapter(HTTPAdapter):
    def __init__(self, cutoff: Cutoff) -> None:
        self._cutoff = cutoff
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        # What HTTPAdapter does, with pools whose connections the cutoff can cut short.
        self._pool_connections, self._pool_maxsize, self._pool_block = connections, maxsize, block
        self.poolmanager = _CutoffPoolManager(self._cutoff, num_pools=connections, maxsize=maxsize, block=block,
                                               **pool_kwargs)


