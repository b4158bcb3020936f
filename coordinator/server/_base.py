"""One stdlib HTTP server base for the bootstrap server and the probe server.

What the stdlib defaults get wrong for this job, fixed once:
- a listen backlog of 5: every waiting rank connects within half a second of the
  server coming up, and the kernel resets what does not fit; here the backlog is
  as deep as the kernel allows (``net.core.somaxconn``);
- a reply in two writes (headers, then body): Nagle's algorithm holds the second
  until the client's delayed ACK, ~40 ms per answer on a kept-alive connection;
  here one write per reply, and TCP_NODELAY;
- daemon handler threads never joined, idle keep-alive connections left open on
  close, a reverse DNS lookup at bind, tracebacks on stderr when a peer resets.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any

from coordinator.validate import url_host

_log = logging.getLogger("coordinator.server")


class Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer that holds a burst, answers without stalls and closes cleanly."""

    daemon_threads = True  # a stuck client must never keep the process alive
    request_queue_size = 4096  # the kernel caps it at net.core.somaxconn

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._conns_lock = threading.Lock()
        self._live_conns: set[socket.socket] = set()
        self._handler_threads: list[threading.Thread] = []
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can hang.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        # Replaces ThreadingMixIn's, which does not join daemon threads on close; we must.
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                  name=f"{type(self).__name__}-conn", daemon=True)
        with self._conns_lock:
            self._live_conns.add(request)
            self._handler_threads = [t for t in self._handler_threads if t.is_alive()]
            self._handler_threads.append(thread)
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        # Under the lock, so server_close never shuts down a socket while it is being closed.
        with self._conns_lock:
            self._live_conns.discard(request)
            super().shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
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


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive; every reply in one write; access lines at DEBUG, never stderr."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a connection may sit idle or dribble a body
    _headers_buffer: list[bytes]  # send_header()'s buffer, made by the stdlib

    def respond(self, status: int, body: bytes, content_type: str, headers: Sequence[tuple[str, str]] = ()) -> None:
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
        self.wfile.write(b"".join(buffer))
        buffer.clear()

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
