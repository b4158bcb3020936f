"""A bootstrap server that speaks SGLang's ``/route`` protocol and fixes its faults.

Wire-compatible with SGLang's prefill schedulers (``PUT /route``) and decode instances
(``GET /route``, ``GET /health``); see ``PROTOCOL.md``. Upstream faults it fixes:

- Readiness counts *distinct* ranks. Upstream counts PUTs, so a PUT retried after a lost
  response makes it report ready while a rank is still missing.
- Bad input is a 400 naming the field (upstream: 500 on a missing key or bad JSON); a
  later PUT whose topology sizes differ from the first is a 409 naming the field
  (upstream silently keeps the first and mis-sizes the rank table).
- Optional bearer token on PUT (sglang issue #39400): 401 without it. GETs stay open
  because upstream decode instances send no token.
- Bodies are bounded (413 over 64 KiB, 411 without Content-Length), each connection has
  its own thread and an idle timeout, so one slow client cannot stall the others.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
import socket
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any
from urllib.parse import parse_qs

from .address import bootstrap_url
from .payload import PayloadError, validate_payload

__all__ = ["BootstrapServer", "MAX_BODY_BYTES"]

MAX_BODY_BYTES = 64 * 1024
_log = logging.getLogger("coordinator.bootstrap_server")
_QUERY_FIELDS = ("prefill_dp_rank", "prefill_cp_rank", "target_tp_rank", "target_pp_rank")
_INT = re.compile(r"-?[0-9]+")  # int() would also take "+1", " 1" and "1_0"

RankKey = tuple[int, int, int, int]  # (dp_group, attn_cp_rank, attn_tp_rank, pp_rank)


class _Rejected(Exception):
    """A well-formed PUT the registry refuses; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _dp(p: Mapping[str, Any], kind: str) -> int:
    # Upstream: the attention-DP value when there is one system DP group, else the system one.
    return p[f"attn_dp_{kind}"] if p["system_dp_size"] == 1 else p[f"system_dp_{kind}"]


def _shape(p: Mapping[str, Any]) -> dict[str, int]:
    """The payload fields that size the rank table, in the order conflicts are reported."""
    shape = {f: p[f] for f in ("attn_tp_size", "attn_cp_size", "pp_size", "system_dp_size")}
    if p["system_dp_size"] == 1:
        shape["attn_dp_size"] = p["attn_dp_size"]  # only then does it size the dp axis
    return shape


class _Registry:
    """The registered ranks and the topology taken from the first accepted PUT."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topology: dict[str, Any] | None = None
        self._shape: dict[str, int] = {}
        self._layout: Any = None
        self._ranks: dict[RankKey, dict[str, Any]] = {}
        self._puts = 0

    def register(self, p: Mapping[str, Any]) -> None:
        """Store one validated payload, or raise _Rejected."""
        key = (_dp(p, "rank"), p["attn_cp_rank"], p["attn_tp_rank"], p["pp_rank"])
        with self._lock:
            if self._topology is None:
                self._topology = {
                    "attn_tp_size": p["attn_tp_size"],
                    "attn_cp_size": p["attn_cp_size"],
                    "dp_size": _dp(p, "size"),
                    "pp_size": p["pp_size"],
                    "page_size": p["page_size"],
                    "kv_cache_dtype": p["kv_cache_dtype"],
                    "follow_bootstrap_room": p.get("load_balance_method", "follow_bootstrap_room")
                    == "follow_bootstrap_room",
                    "enable_dsa_cache_layer_split": p.get("enable_dsa_cache_layer_split", False),
                    "prefill_http_port": p.get("prefill_http_port"),
                }
                self._shape = _shape(p)
                self._layout = p.get("dsv41_spec_layout")
            else:
                self._check_matches_first(p)
            self._ranks[key] = {"rank_ip": p["rank_ip"], "rank_port": p["rank_port"]}
            self._puts += 1

    def _check_matches_first(self, p: Mapping[str, Any]) -> None:
        layout = p.get("dsv41_spec_layout")
        if layout != self._layout:  # upstream's one deliberate rejection, kept as a 400
            raise _Rejected(
                400,
                f"payload field 'dsv41_spec_layout': {layout!r} differs from "
                f"{self._layout!r} of the first registration",
            )
        for field, first in self._shape.items():
            if p[field] != first:
                raise _Rejected(
                    409,
                    f"payload field {field!r}: {p[field]} conflicts with {first} "
                    "of the first registration",
                )

    def _expected(self) -> int | None:  # caller holds the lock
        t = self._topology
        if t is None:
            return None
        return t["dp_size"] * t["attn_cp_size"] * t["attn_tp_size"] * t["pp_size"]

    def counts(self) -> tuple[int, int | None, int]:
        """(distinct ranks, expected ranks or None before the first PUT, accepted PUTs)."""
        with self._lock:
            return len(self._ranks), self._expected(), self._puts

    def topology(self) -> dict[str, Any] | None:
        """The topology once every expected rank is registered, else None."""
        with self._lock:
            if self._topology is None or len(self._ranks) != self._expected():
                return None
            return dict(self._topology)

    def lookup(self, key: RankKey) -> dict[str, Any] | None:
        with self._lock:
            info = self._ranks.get(key)
            return dict(info) if info else None

    def ranks(self) -> dict[RankKey, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self._ranks.items()}


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer whose close also ends open keep-alive connections and their threads."""

    daemon_threads = True  # a stuck client must never keep the process alive

    def __init__(self, address: tuple[str, int], registry: _Registry, token: str | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.registry = registry
        self.expected_auth = None if token is None else b"Bearer " + token.encode()
        self._conns_lock = threading.Lock()
        self._live_conns: set[socket.socket] = set()
        self._handler_threads: list[threading.Thread] = []
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can hang.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        # Replaces ThreadingMixIn's, which does not join daemon threads on close; we must.
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="bootstrap-server-conn",
            daemon=self.daemon_threads,
        )
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


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive; every reply carries Content-Length
    timeout = 30  # seconds a connection may sit idle or dribble a body
    _body_read = False  # whether this request's body has been consumed

    def _dispatch(self) -> None:
        self._body_read = False
        path, _, query = self.path.partition("?")
        if path == "/route":
            if self.command == "PUT":
                self._put_route()
            elif self.command == "GET":
                self._get_route(query)
            else:
                self._reply(405, "method not allowed", ("Allow", "GET, PUT"))
        elif path == "/health":
            if self.command == "GET":
                self._reply(200, "OK")
            else:
                self._reply(405, "method not allowed", ("Allow", "GET"))
        else:
            self._reply(404, "not found")

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _dispatch

    def _put_route(self) -> None:
        if not self._authorized():
            self._reply(
                401,
                "a valid 'Authorization: Bearer <token>' header is required",
                ("WWW-Authenticate", "Bearer"),
            )
            return
        body = self._read_body()
        if body is None:
            return
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:  # ValueError covers bad UTF-8 too
            self._reply(400, f"body is not valid JSON: {exc}")
            return
        try:
            self.server.registry.register(validate_payload(payload))
        except PayloadError as exc:
            self._reply(400, str(exc))
        except _Rejected as exc:
            self._reply(exc.status, str(exc))
        else:
            self._reply(200, "OK")

    def _authorized(self) -> bool:
        expected = self.server.expected_auth
        if expected is None:
            return True
        # http.client decodes header bytes as latin-1; re-encode to compare the raw bytes.
        got = self.headers.get("Authorization", "").encode("latin-1")
        return hmac.compare_digest(got, expected)

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering why it was not read."""
        raw = self.headers.get("Content-Length")
        if raw is None or "Transfer-Encoding" in self.headers:
            self._reply(411, "Content-Length is required")
            return None
        raw = raw.strip()
        if not (raw.isascii() and raw.isdigit()):
            self._reply(400, "Content-Length is not a non-negative integer")
            return None
        digits = raw.lstrip("0") or "0"
        # Length first: int() refuses strings over 4300 digits, and a header line can hold more.
        if len(digits) > 9 or int(digits) > MAX_BODY_BYTES:
            self._reply(413, f"body exceeds {MAX_BODY_BYTES} bytes")
            return None
        length = int(digits)
        body = self.rfile.read(length)
        self._body_read = True
        if len(body) < length:
            self.close_connection = True
            self._reply(400, "body is shorter than Content-Length")
            return None
        return body

    def _get_route(self, query: str) -> None:
        params = parse_qs(query, keep_blank_values=True)
        values: list[int] = []
        for name in _QUERY_FIELDS:
            text = params.get(name, [""])[0]
            if not _INT.fullmatch(text):
                problem = "is required" if not text else f"must be an integer, got {text!r}"
                self._reply(400, f"query parameter {name!r} {problem}")
                return
            values.append(int(text))
        registry = self.server.registry
        if values == [-1, -1, -1, -1]:
            topology = registry.topology()
            if topology is not None:
                self._reply(200, topology)
                return
            registered, expected, _ = registry.counts()
            of = "an unknown number (no registration yet)" if expected is None else expected
            self._reply(503, f"{registered} of {of} prefill ranks registered")
            return
        info = registry.lookup((values[0], values[1], values[2], values[3]))
        if info is None:
            self._reply(404, "rank not registered")
        else:
            self._reply(200, info)

    def _reply(self, status: int, body: str | dict[str, Any], *header: tuple[str, str]) -> None:
        if isinstance(body, dict):
            data, ctype = json.dumps(body).encode(), "application/json"
        else:
            data, ctype = body.encode(), "text/plain; charset=utf-8"
        if not self._body_read and self._has_body():
            # Unread body bytes would be parsed as the next request on this connection.
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for name, value in header:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _has_body(self) -> bool:
        return (
            "Transfer-Encoding" in self.headers
            or self.headers.get("Content-Length", "0").strip() != "0"
        )

    def log_message(self, format: str, *args: Any) -> None:
        # Replaces the stderr access log. Request lines and status only: never headers.
        _log.debug("%s " + format, self.address_string(), *args)


class BootstrapServer:
    """SGLang-compatible bootstrap server; see the module docstring for what it fixes.

    Topology (sizes, page_size, kv_cache_dtype, ...) comes from the first accepted PUT.
    A later PUT must match it: a different ``dsv41_spec_layout`` is a 400 (as upstream);
    a different table size (``attn_tp_size``, ``attn_cp_size``, ``pp_size``,
    ``system_dp_size``, or ``attn_dp_size`` when ``system_dp_size == 1``) is a 409 naming
    the field, where upstream silently keeps the first. Other topology values
    (page_size, kv_cache_dtype, ...) are taken from the first PUT, as upstream.
    The server runs once: ``start()`` after ``close()`` is an error.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        if not isinstance(host, str) or not host.strip("[] "):
            raise ValueError(f"host must be a non-empty string, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer in [0, 65535], got {port!r}")
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be None or a non-empty string")  # never echo it
        self._host = host.strip("[] ")
        self._port = port
        self._token = token
        self._registry = _Registry()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._httpd else "new"
        return (
            f"BootstrapServer(host={self._host!r}, port={self._port}, "
            f"auth={self._token is not None}, {state})"
        )

    def start(self) -> BootstrapServer:
        if self._httpd is not None or self._closed:
            raise RuntimeError("BootstrapServer can be started only once")
        self._httpd = _HTTPServer((self._host, self._port), self._registry, self._token)
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long close() may wait for the loop to notice
            name="bootstrap-server",
            daemon=True,
        )
        self._thread.start()
        _log.debug("bootstrap server listening on %s", self.base_url)
        return self

    def close(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd, self._thread, self._closed = None, None, True
        if httpd is None or thread is None:
            return
        httpd.shutdown()  # stop accepting; returns once serve_forever has exited
        httpd.server_close()  # close the listening socket and every connection, join threads
        thread.join()

    def __enter__(self) -> BootstrapServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        return self._port

    @property
    def url(self) -> str:
        """The registration URL, ``http://HOST:PORT/route`` (IPv6 host in brackets)."""
        if self._port == 0:
            raise RuntimeError("the port, hence the URL, is known only after start()")
        return bootstrap_url(self._host, self._port)

    @property
    def base_url(self) -> str:
        return self.url.removesuffix("/route")

    @property
    def registered_count(self) -> int:
        return self._registry.counts()[0]

    @property
    def expected_count(self) -> int | None:
        return self._registry.counts()[1]

    @property
    def put_count(self) -> int:
        """Accepted PUTs, retries included: what upstream counts towards readiness."""
        return self._registry.counts()[2]

    @property
    def is_ready(self) -> bool:
        return self._registry.topology() is not None

    def ranks(self) -> dict[RankKey, dict[str, Any]]:
        """A copy of the registered ranks keyed by (dp_group, cp_rank, tp_rank, pp_rank)."""
        return self._registry.ranks()
