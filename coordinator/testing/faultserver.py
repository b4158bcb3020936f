"""A fault-injecting HTTP/1.1 server for tests: stdlib only, byte-level control.

``FaultServer(*actions)`` listens on a loopback port (port 0 = a free one, or a given
port, e.g. to appear late on a port a client is already knocking on) and answers each
request with the next scripted action; once the script is used up, the last action
repeats. Actions are plain objects built by the factories below (``respond``,
``close_without_answer``, ``reset_mid_response``, ``hang``, ``trickle_headers``,
``trickle_body``, ``oversized_body``, ``redirect``, ``forward``, ``raw``,
``reset_on_accept``); a test may keep a reference to one to read what it did
(``bytes_sent``, ``runs``).

Most actions read the whole request first (so it is counted in ``requests``) and are
consumed one per request; ``reset_on_accept`` acts as soon as the connection is accepted
and is consumed one per connection. ``close()`` (or leaving the ``with`` block) stops
accepting, wakes every hanging/trickling action, shuts every connection, joins every
thread and closes every socket: no ResourceWarning, no thread left behind.
"""

from __future__ import annotations

import contextlib
import http.client
import selectors
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Iterable

from coordinator.protocol import ROUTE_PATH
from coordinator.server._ports import family, free_port

__all__ = [
    "Action",
    "FaultServer",
    "Request",
    "close_without_answer",
    "forward",
    "free_port",
    "http_request",
    "hang",
    "ipv6_available",
    "oversized_body",
    "raw",
    "redirect",
    "reset_mid_response",
    "reset_on_accept",
    "respond",
    "trickle_body",
    "trickle_headers",
]

_MAX_HEAD = 64 * 1024
_REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently", 302: "Found",
    303: "See Other", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}


def ipv6_available() -> bool:
    """Whether a socket can be bound on the IPv6 loopback ``::1``."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, *, host: str = "127.0.0.1",
                 timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection, exactly as given (no client-side rules):
    (status, headers, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body, headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class Conn:
    """What an action gets: the accepted socket and helpers that respect the server's stop."""

    def __init__(self, sock: socket.socket, stopping: threading.Event) -> None:
        self.sock = sock
        self.stopping = stopping

    def send(self, data: bytes) -> bool:
        """Send all of ``data``; False when the peer is gone or the server is stopping."""
        if self.stopping.is_set():
            return False
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the server stops first; True if it did not stop."""
        return not self.stopping.wait(seconds)

    def reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER on, timeout 0, then close)."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


class Action:
    """One scripted behaviour. ``run`` returns True to keep the connection for another request."""

    reads_request = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.runs = 0
        self.bytes_sent = 0

    def __repr__(self) -> str:
        return f"<{self.name}>"

    def run(self, conn: Conn, request: Request | None) -> bool:
        raise NotImplementedError

    def _send(self, conn: Conn, data: bytes) -> bool:
        ok = conn.send(data)
        if ok:
            self.bytes_sent += len(data)
        return ok


def _head(status: int, headers: Iterable[tuple[str, str]], reason: str | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason if reason is not None else _REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body


def _header_list(headers: dict[str, str] | Iterable[tuple[str, str]] | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


class _Respond(Action):
    def __init__(self, status: int, body: bytes, headers: list[tuple[str, str]], keep_alive: bool) -> None:
        super().__init__(f"respond {status}")
        self.status, self.body, self.headers, self.keep_alive = status, body, headers, keep_alive

    def response_bytes(self) -> bytes:
        names = {k.lower() for k, _ in self.headers}
        headers = list(self.headers)
        if "content-length" not in names and "transfer-encoding" not in names:
            headers.append(("Content-Length", str(len(self.body))))
        if "connection" not in names:
            headers.append(("Connection", "keep-alive" if self.keep_alive else "close"))
        return _head(self.status, headers) + self.body

    def run(self, conn: Conn, request: Request | None) -> bool:
        return self._send(conn, self.response_bytes()) and self.keep_alive


def respond(
    status: int = 200,
    body: bytes | str = b"OK",
    headers: dict[str, str] | Iterable[tuple[str, str]] | None = None,
    *,
    keep_alive: bool = False,
) -> Action:
    """A complete answer. Content-Length and Connection are added unless given; no Date header
    unless given. Header values are sent as latin-1 (so any byte 0x00-0xff can be injected)."""
    return _Respond(status, _as_bytes(body), _header_list(headers), keep_alive)


def redirect(location: str, status: int = 307) -> Action:
    """A redirect answer (the client must not follow it)."""
    return respond(status, f"moved to {location}", {"Location": location})


class _Close(Action):
    def run(self, conn: Conn, request: Request | None) -> bool:
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)  # orderly FIN, no answer at all
        return False


def close_without_answer() -> Action:
    """Read the request, then close the connection (FIN) without a byte of answer."""
    return _Close("close without answer")


class _ResetMid(Action):
    def __init__(self, partial: bytes, pause: float) -> None:
        super().__init__("reset mid-response")
        self.partial, self.pause = partial, pause

    def run(self, conn: Conn, request: Request | None) -> bool:
        self._send(conn, self.partial)
        # Let the client consume the partial bytes and block on the rest before the RST.
        conn.wait(self.pause)
        conn.reset()
        return False


def reset_mid_response(
    partial: bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/pl", pause: float = 0.05
) -> Action:
    """Send ``partial`` (by default a status line and half a header), then abort with a RST."""
    return _ResetMid(partial, pause)


class _ResetOnAccept(Action):
    reads_request = False

    def run(self, conn: Conn, request: Request | None) -> bool:
        conn.reset()
        return False


def reset_on_accept() -> Action:
    """RST the connection right after accepting it, before reading anything (one per connection)."""
    return _ResetOnAccept("reset on accept")


class _Hang(Action):
    def run(self, conn: Conn, request: Request | None) -> bool:
        conn.stopping.wait()  # never answer; close() wakes us
        return False


def hang() -> Action:
    """Read the request and never answer, until the server closes."""
    return _Hang("hang")


class _Trickle(Action):
    def __init__(self, interval: float, status: int, body: bytes, chunk: int) -> None:
        super().__init__(f"trickle {status}")
        self.interval, self.chunk = interval, chunk
        self.data = _Respond(status, body, [("X-Padding", "p" * 200)], keep_alive=False).response_bytes()

    @property
    def total_bytes(self) -> int:
        return len(self.data)

    def run(self, conn: Conn, request: Request | None) -> bool:
        for i in range(0, len(self.data), self.chunk):
            if not self._send(conn, self.data[i : i + self.chunk]) or not conn.wait(self.interval):
                break
        return False


def trickle_headers(interval: float = 0.05, status: int = 200, body: bytes | str = b"OK", chunk: int = 1) -> Action:
    """Send a complete answer ``chunk`` bytes at a time, one chunk every ``interval`` seconds."""
    return _Trickle(interval, status, _as_bytes(body), chunk)


class _TrickleBody(Action):
    def __init__(self, interval: float, n: int, status: int, keep_alive: bool) -> None:
        super().__init__(f"trickle body {status}")
        self.interval, self.n, self.status, self.keep_alive = interval, n, status, keep_alive
        self.body_bytes_sent = 0

    def run(self, conn: Conn, request: Request | None) -> bool:
        headers = [("Content-Length", str(self.n)), ("Connection", "keep-alive" if self.keep_alive else "close")]
        if not self._send(conn, _head(self.status, headers)):
            return False
        for _ in range(self.n):
            if not conn.wait(self.interval) or not self._send(conn, b"x"):
                break
            self.body_bytes_sent += 1
        return False


def trickle_body(interval: float = 0.05, n: int = 30, status: int = 200, *, keep_alive: bool = False) -> Action:
    """Status line and headers at once (Content-Length ``n``), then the body one byte per ``interval``."""
    return _TrickleBody(interval, n, status, keep_alive)


class _Oversized(Action):
    def __init__(self, n: int | None, status: int, headers: list[tuple[str, str]], fill: bytes,
                 payload: bytes | None) -> None:
        super().__init__(f"oversized {status}")
        self.n, self.status, self.headers, self.fill, self.payload = n, status, headers, fill, payload

    def run(self, conn: Conn, request: Request | None) -> bool:
        headers = list(self.headers)
        if self.payload is not None:
            headers.append(("Content-Length", str(len(self.payload))))
        elif self.n is not None:
            headers.append(("Content-Length", str(self.n)))
        headers.append(("Connection", "close"))  # no length: the body ends when we close
        if not self._send(conn, _head(self.status, headers)):
            return False
        if self.payload is not None:
            self._send(conn, self.payload)
            return False
        block = (self.fill * (64 * 1024 // len(self.fill) + 1))[: 64 * 1024]
        left = self.n
        while left is None or left > 0:
            piece = block if left is None or left >= len(block) else block[:left]
            if not self._send(conn, piece):
                break  # the client stopped reading and closed: expected
            if left is not None:
                left -= len(piece)
        return False


def oversized_body(
    n: int | None = 10 * 1024 * 1024,
    status: int = 200,
    headers: dict[str, str] | Iterable[tuple[str, str]] | None = None,
    *,
    fill: bytes = b"x",
    payload: bytes | None = None,
) -> Action:
    """An answer with an ``n``-byte body (``None``: endless, close-delimited) of ``fill``;
    or, with ``payload``, exactly those bytes (e.g. a gzip bomb with its Content-Encoding)."""
    return _Oversized(n, status, _header_list(headers), fill, payload)


class _Raw(Action):
    def __init__(self, data: bytes, keep_alive: bool) -> None:
        super().__init__("raw")
        self.data, self.keep_alive = data, keep_alive

    def run(self, conn: Conn, request: Request | None) -> bool:
        return self._send(conn, self.data) and self.keep_alive


def raw(data: bytes, *, keep_alive: bool = False) -> Action:
    """Send exactly these bytes as the answer."""
    return _Raw(data, keep_alive)


class _Forward(Action):
    def __init__(self, host: str, port: int, drop_answer: bool, timeout: float) -> None:
        super().__init__("forward" + (" and drop answer" if drop_answer else ""))
        self.host, self.port, self.drop_answer, self.timeout = host, port, drop_answer, timeout
        self.upstream_statuses: list[int] = []

    def run(self, conn: Conn, request: Request | None) -> bool:
        assert request is not None
        upstream = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            skip = {"host", "connection", "content-length", "transfer-encoding"}
            headers = {k: v for k, v in request.headers if k.lower() not in skip}
            upstream.request(request.method, request.target, body=request.body, headers=headers)
            answer = upstream.getresponse()
            body = answer.read()
            status, reason = answer.status, answer.reason
            passed = [(k, v) for k, v in answer.getheaders() if k.lower() not in skip]
        finally:
            upstream.close()
        self.upstream_statuses.append(status)
        if self.drop_answer:
            # The upstream acted on the request; its answer is lost on the way back.
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            return False
        passed += [("Content-Length", str(len(body))), ("Connection", "close")]
        self._send(conn, _head(status, passed, reason) + body)
        return False


def forward(host: str, port: int, *, drop_answer: bool = False, timeout: float = 5.0) -> Action:
    """Proxy the request to ``host:port`` and relay the answer, or (``drop_answer``) close
    the client's connection without answering once the upstream has answered."""
    return _Forward(host, port, drop_answer, timeout)


class FaultServer:
    """A scripted, fault-injecting HTTP server on loopback; see the module docstring."""

    def __init__(self, *actions: Action, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host.strip("[]")
        self._requested_port = port
        self._port = port  # the bound port once started (kept after close)
        self._script: list[Action] = list(actions) or [respond(200, b"OK")]
        self._last: Action = self._script[-1]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._handlers: list[threading.Thread] = []
        self.requests: list[Request] = []
        self.connection_count = 0
        self.actions_run: list[Action] = []
        self.errors: list[BaseException] = []  # unexpected exceptions in handler threads

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FaultServer:
        if self._listener is not None:
            raise RuntimeError("already started")
        listener = socket.socket(family(self.host), socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self._requested_port))
            listener.listen(64)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"faultserver-{self.port}", daemon=True)
        self._acceptor.start()
        return self

    def close(self) -> None:
        """Stop accepting, wake and join every thread, close every socket. Idempotent."""
        if self._listener is None:
            return
        self._stopping.set()
        assert self._wake_w is not None and self._acceptor is not None
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._acceptor.join(5)
        with self._lock:
            for conn in self._conns:  # unblock handlers in recv/sendall
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            handlers = list(self._handlers)
        for thread in handlers:
            thread.join(5)
        leftover = [t for t in [self._acceptor, *handlers] if t.is_alive()]
        self._listener.close()
        self._wake_r.close()  # type: ignore[union-attr]
        self._wake_w.close()
        self._listener = None
        if leftover:
            raise RuntimeError(f"fault server threads did not stop: {leftover}")

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.close()
        if self.errors and exc_type is None:  # a bug in an action, not a fault it injected
            raise RuntimeError(f"fault server actions raised: {self.errors!r}")

    # -- what tests read ------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port once started (still known after close), else the requested one."""
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + ROUTE_PATH

    @property
    def request_count(self) -> int:
        return len(self.requests)

    def extend(self, *actions: Action) -> None:
        """Append to the script (the new last action is the one that repeats)."""
        with self._lock:
            self._script.extend(actions)
            self._last = self._script[-1]

    # -- serving --------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is not self._listener or self._stopping.is_set():
                        continue
                    try:
                        sock, _addr = self._listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    sock.setblocking(True)
                    thread = threading.Thread(target=self._serve, args=(sock,), name="faultserver-conn", daemon=True)
                    with self._lock:
                        if self._stopping.is_set():
                            sock.close()
                            continue
                        self.connection_count += 1
                        self._conns.add(sock)
                        self._handlers = [t for t in self._handlers if t.is_alive()]
                        self._handlers.append(thread)
                    thread.start()

    def _next_action(self, *, at_accept: bool) -> Action | None:
        with self._lock:
            nxt = self._script[0] if self._script else self._last
            if at_accept and nxt.reads_request:
                return None
            if self._script:
                self._script.pop(0)
            self.actions_run.append(nxt)
            nxt.runs += 1
            return nxt

    def _serve(self, sock: socket.socket) -> None:
        conn = Conn(sock, self._stopping)
        buf = bytearray()
        try:
            action = self._next_action(at_accept=True)
            if action is not None:
                action.run(conn, None)
                return
            while not self._stopping.is_set():
                request = self._read_request(sock, buf)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                action = self._next_action(at_accept=False)
                assert action is not None
                if not action.run(conn, request):
                    return
        except OSError:
            pass  # the peer went away or close() shut the socket: nothing to report
        except BaseException as exc:  # noqa: BLE001 - surfaced through .errors
            self.errors.append(exc)
        finally:
            with self._lock:
                self._conns.discard(sock)
            sock.close()

    @staticmethod
    def _read_request(sock: socket.socket, buf: bytearray) -> Request | None:
        while b"\r\n\r\n" not in buf:
            if len(buf) > _MAX_HEAD:
                return None
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buf += chunk
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = (lines[0].split(" ", 2) + ["", ""])[:3]
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        body = bytearray(rest)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            body += chunk
        buf[:] = body[length:]
        return Request(method, target, version, headers, bytes(body[:length]))
