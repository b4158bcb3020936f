"""One stdlib HTTP server base for the bootstrap server and the probe server, hardened.

What the stdlib defaults get wrong for this job, fixed once:
- a listen backlog of 5: every waiting rank connects within half a second of the
  server coming up, and the kernel resets what does not fit; here the backlog is
  as deep as the kernel allows (``net.core.somaxconn``);
- a reply in two writes (headers, then body): Nagle's algorithm holds the second
  until the client's delayed ACK, ~40 ms per answer on a kept-alive connection;
  here one write per reply, and TCP_NODELAY;
- daemon handler threads never joined, idle keep-alive connections left open on
  close, a reverse DNS lookup at bind, tracebacks on stderr when a peer resets;
- a thread per connection without limit, each held as long as the client sends a byte
  before the idle timeout (slowloris): here a request has :attr:`Server.request_timeout`
  seconds in all, from its first byte to the end of its body, and at most
  :attr:`Server.max_connections` connections are served at once; beyond, a new
  connection is answered 503 (``Connection: close``, ``Retry-After: 1``) from the
  accepting thread, so the client is told why rather than reset, and no thread is
  spent on it (the socket is closed :attr:`Server.refused_linger` later, once the
  client's request has arrived: closing it unread would reset the connection);
- a request with two ``Content-Length`` headers served with the first (request
  smuggling when a proxy in front reads the other): here a 400 and a closed connection.

Held answers (long-polls) are not answered from a handler thread: :meth:`Server.park` hands
the connection to the parking thread (:mod:`._parking`), which holds no thread per connection;
parked connections count against :attr:`Server.max_parked`, not :attr:`Server.max_connections`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import threading
from collections import deque
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any

from coordinator.clock import REAL_TIME
from coordinator.server._parking import Answer, Parking, close_drained
from coordinator.validate import url_host

_log = logging.getLogger("coordinator.server")


def _over_capacity(headers: Sequence[tuple[str, str]]) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 33\r\nRetry-After: 1\r\nConnection: close\r\n" + extra + b"\r\n"
            b"too many connections, retry later")


class Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer that holds a burst, answers without stalls and closes cleanly."""

    daemon_threads = True  # a stuck client must never keep the process alive
    request_queue_size = 4096  # the kernel caps it at net.core.somaxconn
    # Connections served at once (one thread each). Room for 512 ranks registering
    # at once plus the decode instances polling.
    max_connections = 1024
    # Seconds one request may take from its first byte to the end of its body; the
    # time between requests on a kept-alive connection is bounded by Handler.timeout.
    request_timeout = 10.0
    # Seconds a refused connection stays open (answered, never read from a thread) so
    # that the client's request can arrive and be discarded before the close.
    refused_linger = 0.5
    # Connections held by the parking thread at once (one socket each, no thread).
    max_parked = 4096
    # Sent with every answer, the over-capacity 503 included.
    extra_headers: Sequence[tuple[str, str]] = ()

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._over_capacity = _over_capacity(self.extra_headers)
        self._conns_lock = threading.Lock()
        self._live_conns: set[socket.socket] = set()  # served by a handler thread
        self._handler_threads: list[threading.Thread] = []
        self._parking: Parking | None = None  # started by the first park()
        self._closing = False
        self._refusing = False  # over max_connections since the last accepted connection
        self._refused: deque[tuple[float, socket.socket]] = deque()  # (close at, socket), oldest first
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can hang.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        # Replaces ThreadingMixIn's, which does not join daemon threads on close; we must.
        with self._conns_lock:
            full = len(self._live_conns) >= self.max_connections
            warn, self._refusing = full and not self._refusing, full
            if not full:
                self._live_conns.add(request)
                thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                          name=f"{type(self).__name__}-conn", daemon=True)
                self._handler_threads = [t for t in self._handler_threads if t.is_alive()]
                self._handler_threads.append(thread)
        if full:
            if warn:  # once per episode: a flood of refusals must not flood the log too
                _log.warning("%d connections open, the most served at once: new connections are "
                             "answered 503 until some close", self.max_connections)
            self._refuse(request)
            return
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        thread.start()

    def _refuse(self, request: socket.socket) -> None:
        """Answer 503 without a thread: one non-blocking send (a fresh socket's buffer
        takes it whole), then the socket lingers until :meth:`service_actions` closes it."""
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(self._over_capacity)
            request.shutdown(socket.SHUT_WR)
        if len(self._refused) < self.max_connections:  # lingering sockets are bounded too
            self._refused.append((REAL_TIME.now() + self.refused_linger, request))
        else:
            close_drained(request)

    def service_actions(self) -> None:
        # serve_forever calls it on the accepting thread, the only one touching _refused.
        now = REAL_TIME.now()
        while self._refused and self._refused[0][0] <= now:
            close_drained(self._refused.popleft()[1])

    def park(self, request: socket.socket, deadline: float, answer: Answer) -> bool:
        """Hand ``request`` (a handler's connection, its request read) to the parking
        thread, which sends ``answer``'s bytes and closes it (see :data:`Answer`); the
        handler must then return without touching it. False: not taken (``max_parked``
        reached, or closing); the handler answers itself."""
        with self._conns_lock:
            if self._closing:
                return False
            if self._parking is None:
                self._parking = Parking(f"{type(self).__name__}-parking", self.max_parked)
            if not self._parking.take(request, deadline, answer):
                return False
            self._live_conns.discard(request)  # no thread holds it now: it frees its slot
        return True

    def wake_parked(self) -> None:
        """Ask every held answer again: the state it waits on may have changed."""
        with self._conns_lock:
            parking = self._parking
        if parking is not None:
            parking.wake()

    @property
    def parked(self) -> int:
        """Connections held by the parking thread right now."""
        with self._conns_lock:
            parking = self._parking
        return 0 if parking is None else parking.count

    def shutdown_request(self, request: Any) -> None:
        # Under the lock, so server_close never shuts down a socket while it is being closed.
        with self._conns_lock:
            if request in self._live_conns:  # else parked: the parking thread closes it
                self._live_conns.discard(request)
                super().shutdown_request(request)

    def server_close(self) -> None:
        with self._conns_lock:
            self._closing = True
            parking = self._parking
        if parking is not None:  # first: a held client sees the close at once
            parking.close()
        super().server_close()
        while self._refused:  # serve_forever has returned: no other thread touches it
            self._refused.popleft()[1].close()
        with self._conns_lock:
            for conn in self._live_conns:  # wake handlers blocked on idle keep-alive reads
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            threads = list(self._handler_threads)
        for thread in threads:
            thread.join()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr; a peer resetting is not worth that.
        _log.debug("error serving %s", client_address, exc_info=True)


class _RequestReader(io.RawIOBase):
    """The connection's socket, read under two bounds: ``idle`` seconds per read while
    no request is in progress or between bytes, and ``deadline`` for the request in
    progress, set by its first byte so that dribbling bytes cannot extend it."""

    def __init__(self, sock: socket.socket, idle: float, total: float) -> None:
        super().__init__()
        self._sock, self._idle, self._total = sock, idle, total
        self.deadline: float | None = None  # None: waiting for a request's first byte

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        timeout = self._idle
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - REAL_TIME.now())
            if timeout <= 0:
                raise TimeoutError(f"request not complete within {self._total:g} s")
        self._sock.settimeout(timeout)
        n = self._sock.recv_into(buffer)
        if n and self.deadline is None:
            self.deadline = REAL_TIME.now() + self._total
        return n


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive; every reply in one write; access lines at DEBUG, never stderr."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a kept-alive connection may sit idle, and the most between two bytes
    server: Server
    _headers_buffer: list[bytes]  # send_header()'s buffer, made by the stdlib

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the stdlib's reader, replaced by one that bounds a request's time
        self._reader = _RequestReader(self.connection, self.timeout, self.server.request_timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.deadline = None  # the next request's time starts with its first byte
        super().handle_one_request()

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if len(self.headers.get_all("Content-Length", ())) > 1:
            # Which one a proxy in front used is unknown: the body's end is unknown.
            self.close_connection = True
            self.respond(400, b"duplicate Content-Length header", "text/plain; charset=utf-8")
            return False
        return True

    def send_response(self, code: int, message: str | None = None) -> None:
        # Every answer goes through here, send_error()'s too.
        super().send_response(code, message)
        for name, value in self.server.extra_headers:
            self.send_header(name, value)

    def render(self, status: int, body: bytes, content_type: str, headers: Sequence[tuple[str, str]] = ()) -> bytes:
        """The whole answer, as :meth:`respond` sends it (a parked answer is sent by the parking thread)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        # end_headers() would flush the headers alone: the body goes in the same write.
        buffer = self._headers_buffer
        buffer.append(b"\r\n")
        if self.command != "HEAD":
            buffer.append(body)
        data = b"".join(buffer)
        buffer.clear()
        return data

    def respond(self, status: int, body: bytes, content_type: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        data = self.render(status, body, content_type, headers)
        self.connection.settimeout(self.timeout)  # a read may have left it at a request's last ms
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        # Request lines and statuses only: never headers (they may carry a token).
        _log.debug("%s " + format, self.address_string(), *args)


class Running:
    """``server`` serving on a named daemon thread; ``close()`` stops it and frees the port."""

    def __init__(self, server: Server, thread_name: str) -> None:
        self._server = server
        self._closed = False
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=thread_name, daemon=True)
        self._thread.start()

    @property
    def server(self) -> Server:
        return self._server

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()  # stop accepting; returns once serve_forever has exited
        self._server.server_close()  # the listening socket, every connection, every thread
        self._thread.join()

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
