"""One HTTP attempt: a PUT through a requests.Session, turned into an Outcome.

No retry logic here. Each attempt has a *total* time limit (a slow-trickling
server cannot stretch it past its timeout) and can be aborted from another thread.
"""

from __future__ import annotations

import http.client
import socket
import threading
from typing import Any, Protocol

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3 import PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from coordinator.clock import SystemClock
from coordinator.outcome import Cause, Failure, Outcome

# Socket deadlines are real time, whatever clock the driver runs on (tests use a fake one).
_REAL_TIME = SystemClock()
MAX_BODY_BYTES = 64 * 1024  # read no more of an answer than this
_EXCERPT_CHARS = 1024


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


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its ``__cause__``/``__context__`` ancestors, outermost first."""
    out = [exc]
    while (inner := out[-1].__cause__ or out[-1].__context__) is not None and inner not in out:
        out.append(inner)
    return out


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of the ``__cause__``/``__context__`` chain."""
    return _chain(exc)[-1]


_KINDS: tuple[tuple[tuple[type[BaseException], ...], Failure], ...] = (
    ((ConnectionRefusedError,), Failure.REFUSED),
    ((socket.gaierror, urllib3.exceptions.NameResolutionError), Failure.DNS),
    ((requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError), Failure.TIMEOUT),
    (
        (
            ConnectionResetError,
            BrokenPipeError,
            http.client.HTTPException,
            urllib3.exceptions.ProtocolError,
            requests.exceptions.ChunkedEncodingError,
        ),
        Failure.RESET,
    ),
    ((OSError, requests.RequestException, urllib3.exceptions.HTTPError), Failure.CONNECTION),
)


def classify_exception(exc: BaseException) -> Failure:
    """The most specific failure any exception of the chain names, innermost first."""
    chain = _chain(exc)[::-1]
    for types, kind in _KINDS:
        if any(isinstance(e, types) for e in chain):
            return kind
    return Failure.INTERNAL


def cause_of(exc: BaseException) -> Cause:
    inner = root_cause(exc)
    return Cause(type(inner).__name__, str(inner))


class _Watch:
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
        self.timeout = 0.0
        self.deadline = 0.0  # on _REAL_TIME: when the attempt in flight must be over

    def arm(self, timeout: float) -> None:
        with self._lock:
            self._sock, self.ending = None, None
            self.timeout, self.deadline = timeout, _REAL_TIME.now() + timeout

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if sock is not None and self.ending is None and self.expired:
                self.ending = Failure.TIMEOUT  # resolving took it all: send nothing
            ending = self.ending
            if sock is not None and not isinstance(sock, _DeadlineSocket) and self._timer is None:
                # A TLS socket cannot be adopted: a timer thread enforces the total limit.
                self._timer = threading.Timer(max(0.0, self.deadline - _REAL_TIME.now()), self.cut,
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
        return _REAL_TIME.now() >= self.deadline

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

    _watch: _Watch
    _read_timeout: float | None

    @classmethod
    def adopt(cls, sock: socket.socket, watch: _Watch) -> _DeadlineSocket:
        timeout = sock.gettimeout()
        adopted = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        adopted._watch = watch
        adopted.settimeout(timeout)
        return adopted

    def settimeout(self, value: float | None) -> None:
        self._read_timeout = value  # urllib3's per-read timeout, within the total limit
        super().settimeout(value)

    def _bound(self) -> None:
        left = self._watch.deadline - _REAL_TIME.now()
        if left <= 0:
            raise TimeoutError(f"no complete answer within {self._watch.timeout:.3g} s")
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


class _WatchedConnection:
    """Mixin for urllib3 connections: adopt the fresh socket, show it to the watch."""

    watch: _Watch
    sock: socket.socket

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        if type(self.sock) is socket.socket:  # plain TCP; a TLS socket is left as it is
            self.sock = _DeadlineSocket.adopt(self.sock, self.watch)
        self.watch.attach(self.sock)


class _WatchedHTTPConnection(_WatchedConnection, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnection, HTTPSConnection):
    pass


class _WatchedPool:
    """Mixin for urllib3 pools: hand the watch to new connections, and show it pooled sockets."""

    watch: _Watch

    def _new_conn(self) -> Any:
        conn = super()._new_conn()  # type: ignore[misc]
        conn.watch = self.watch
        return conn

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        self.watch.attach(getattr(conn, "sock", None))  # a pooled, already connected socket
        return conn


class _WatchedHTTPPool(_WatchedPool, HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(_WatchedPool, HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedPoolManager(PoolManager):
    def __init__(self, watch: _Watch, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.watch = watch
        self.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}

    def _new_pool(self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None) -> Any:
        pool: Any = super()._new_pool(scheme, host, port, request_context)
        pool.watch = self.watch
        return pool


class _AbortableAdapter(HTTPAdapter):
    def __init__(self, watch: _Watch) -> None:
        self._watch = watch
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        # What HTTPAdapter does, with pools whose connections the watch can cut short.
        self._pool_connections, self._pool_maxsize, self._pool_block = connections, maxsize, block
        self.poolmanager = _WatchedPoolManager(self._watch, num_pools=connections, maxsize=maxsize, block=block,
                                               **pool_kwargs)


class _NoRedirectSession(requests.Session):
    """Even with ``allow_redirects=False``, requests reads a 3xx body in full to build
    ``response.next``; with no redirect target it never does, and our read cap holds."""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


class HttpTransport:
    """PUTs through a requests.Session: connections reused, redirects never followed.

    Proxy variables are ignored by default (``trust_env=False``): bootstrap traffic
    stays inside the cluster, and an inherited ``HTTP_PROXY`` would send it astray.
    A caller's own ``session`` is used as given (its proxies, TLS and adapters); the
    hard total time limit then holds only for sessions whose adapter we mounted.
    """

    def __init__(self, session: requests.Session | None = None, *, token: str | None = None) -> None:
        self._watch = _Watch()
        self._own_session = session is None
        if session is None:
            session = _NoRedirectSession()
            session.trust_env = False
            adapter = _AbortableAdapter(self._watch)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self._session = session
        self._headers = {"Content-Type": "application/json"}
        self._get_headers: dict[str, str] = {}  # lookups are open upstream: never send the token
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:
        # The token lives in the headers: never show them.
        return f"HttpTransport(own_session={self._own_session})"

    @property
    def in_flight(self) -> bool:
        """Whether an attempt has a socket open right now."""
        return self._watch.busy

    def abort(self) -> None:
        self._watch.cut(Failure.CANCELLED)

    def attempt(self, url: str, body: bytes, timeout: float) -> Outcome:
        """One PUT; ``Outcome.body`` holds an excerpt of the answer, for messages."""
        return self._request("PUT", url, body, timeout, _EXCERPT_CHARS)

    def get(self, url: str, timeout: float) -> Outcome:
        """One GET; ``Outcome.body`` holds the answer (at most 64 KiB), to be parsed."""
        return self._request("GET", url, None, timeout, MAX_BODY_BYTES)

    def _request(self, method: str, url: str, body: bytes | None, timeout: float, keep: int) -> Outcome:
        # The total limit: per-read socket timeouts alone let a trickling server go on forever.
        self._watch.arm(timeout)
        try:
            return self._send(method, url, body, timeout, keep)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an Outcome
            ending = self._watch.ending
            failure = classify_exception(exc)
            # Past the limit, whatever broke last (a late DNS error, a read cut short): a timeout.
            if ending is Failure.TIMEOUT or (ending is None and self._watch.expired):
                cause = Cause("TimeoutError", f"no complete answer within {timeout:.3g} s")
                return Outcome.of_failure(Failure.TIMEOUT, cause)
            if ending is Failure.CANCELLED:
                return Outcome.of_failure(Failure.CANCELLED, Cause("Cancelled", "stop() was called"))
            return Outcome.of_failure(failure, cause_of(exc))
        finally:
            self._watch.attach(None)

    def _send(self, method: str, url: str, body: bytes | None, timeout: float, keep: int) -> Outcome:
        response = self._session.request(
            method,
            url,
            data=body,
            headers=self._headers if body is not None else self._get_headers,
            timeout=timeout,
            allow_redirects=False,
            stream=True,
        )
        try:
            data = response.raw.read(MAX_BODY_BYTES + 1, decode_content=True) or b""
        finally:
            if response.raw.closed or response.raw.isclosed():
                response.raw.release_conn()
            else:
                # Unread body left on the socket: the connection cannot be reused.
                response.close()
        return Outcome.of_status(
            response.status_code,
            data[:keep * 4].decode("utf-8", "replace")[:keep],
            retry_after=response.headers.get("Retry-After"),
            date=response.headers.get("Date"),
        )

    def close(self) -> None:
        if self._own_session:
            self._session.close()
