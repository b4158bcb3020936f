"""A bootstrap server that answers as SGLang 0.5.23's ``CommonKVBootstrapServer`` and fixes its faults.

Wire-compatible with SGLang's prefill schedulers (``PUT /route``) and decode instances
(``GET /route``, ``GET /health``); see ``PROTOCOL.md``. For the same requests it gives
upstream's statuses and JSON bodies, and its texts where they say something (ours add
the field at fault, or how many ranks are expected): 503 to every ``GET /route`` until
the instance is complete, then the topology
(``asdict(PrefillServerInfo)``, key for key) or a rank (404 when unknown); 400 when a
rank's ``dsv41_spec_layout`` or ``decode_allocation_policy`` differs from the others'.
``HEAD /health`` answers as GET without a body; ``HEAD /route`` is a 405, as upstream.
The only deliberate differences:

- Readiness counts *distinct* ranks. Upstream counts PUTs, so a PUT retried after a lost
  response makes it report ready while a rank is still missing.
- Bad input is a 400 naming the field (upstream: 500 on a missing key, bad JSON or a
  non-integer query value; or it accepts sizes like 10**2999, any ``rank_ip``, a
  non-integer size).
- A later PUT whose table sizes differ from the first is a 409 naming the field
  (upstream accepts it, keeps the first sizes and counts it: ready with a rank missing).
- Optional bearer token on PUT (sglang issue #39400): 401 without it. GETs stay open
  because upstream decode instances send no token.

Transport bounds, which no well-behaved client meets (see :mod:`._base`): bodies are
bounded (413 over 64 KiB, 411 without Content-Length, 400 with two), a request has 10 s
in all, at most 1024 connections are served at once (503 beyond), each on its own
thread, so one slow client cannot stall the others.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from coordinator import validate
from coordinator.protocol import (
    HEALTH_PATH,
    QUERY_FIELDS,
    ROUTE_PATH,
    TOPOLOGY_KEY,
    PayloadError,
    RankKey,
    bootstrap_url,
    validate_payload,
)
from coordinator.server._registry import Registry, Rejected
from coordinator.server._base import Handler, Running, Server

MAX_BODY_BYTES = 64 * 1024
_log = logging.getLogger("coordinator.bootstrap_server")


class _HTTPServer(Server):
    def __init__(self, address: tuple[str, int], registry: Registry, token: str | None) -> None:
        self.registry = registry
        self.expected_auth = None if token is None else b"Bearer " + token.encode()
        super().__init__(address, _Handler)


class _Handler(Handler):
    server: _HTTPServer
    _body_read = False  # whether this request's body has been consumed

    def _dispatch(self) -> None:
        self._body_read = False
        path, _, query = self.path.partition("?")
        if path == ROUTE_PATH:
            if self.command == "PUT":
                self._put_route()
            elif self.command == "GET":
                self._get_route(query)
            else:  # HEAD included: upstream's /route handler takes any method and 405s it
                self._reply(405, "method not allowed", ("Allow", "GET, PUT"))
        elif path == HEALTH_PATH:
            if self.command in ("GET", "HEAD"):
                self._reply(200, "OK")
            else:
                self._reply(405, "method not allowed", ("Allow", "GET, HEAD"))
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
        except Rejected as exc:
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
        raw = self.headers.get("Content-Length")  # one at most: Handler.parse_request
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
        texts = [params.get(name, [""])[0] for name in QUERY_FIELDS]
        for name, text in zip(QUERY_FIELDS, texts):  # all present first, as upstream
            if not text:
                self._reply(400, f"query parameter {name!r} is required")
                return
        try:
            dp, cp, tp, pp = (validate.integer(text, f"query parameter {name!r}")
                              for name, text in zip(QUERY_FIELDS, texts))
        except ValueError as exc:
            self._reply(400, str(exc))
            return
        registry = self.server.registry
        topology = registry.topology()
        if topology is None:  # every GET, rank lookups included, as upstream
            registered, expected, _ = registry.counts()
            of = "" if expected is None else f" of {expected}"
            self._reply(503, f"Prefill server not fully registered yet ({registered}{of} workers registered).")
        elif (dp, cp, tp, pp) == TOPOLOGY_KEY:
            self._reply(200, topology)
        else:
            info = registry.lookup((dp, cp, tp, pp))
            if info is not None:
                self._reply(200, info)
            else:  # upstream's text, the values as the query wrote them
                self._reply(404, "Bootstrap info not found for dp_rank={} cp_rank={} tp_rank={} pp_rank={}"
                            .format(*texts))

    def _reply(self, status: int, body: str | dict[str, Any], *header: tuple[str, str]) -> None:
        if isinstance(body, dict):
            data, ctype = json.dumps(body).encode(), "application/json"
        else:
            data, ctype = body.encode(), "text/plain; charset=utf-8"
        if not self._body_read and self._has_body():
            # Unread body bytes would be parsed as the next request on this connection.
            self.close_connection = True
        self.respond(status, data, ctype, header)

    def _has_body(self) -> bool:
        return (
            "Transfer-Encoding" in self.headers
            or self.headers.get("Content-Length", "0").strip() != "0"
        )


class BootstrapServer:
    """SGLang-compatible bootstrap server; see the module docstring for what it fixes.

    Topology (sizes, page_size, kv_cache_dtype, follow_bootstrap_room, the two
    ``enable_*`` flags) comes from the first accepted PUT; ``kv_layout`` and
    ``prefill_http_port`` from the first that carries them; ``dsv41_spec_layout`` and
    ``decode_allocation_policy`` must be alike on every rank (400, as upstream). A
    different table size (``attn_tp_size``, ``attn_cp_size``, ``pp_size``,
    ``system_dp_size``, or ``attn_dp_size`` when ``system_dp_size == 1``) is a 409 naming
    the field, where upstream silently keeps the first.
    The server runs once: ``start()`` after ``close()`` is an error.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self._host = validate.host(host, "host")
        self._port = validate.port(port, "port", allow_zero=True)  # 0: any free port
        self._token = None if token is None else validate.token(token)
        self._registry = Registry()
        self._running: Running | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._running else "new"
        return (
            f"BootstrapServer(host={self._host!r}, port={self._port}, "
            f"auth={self._token is not None}, {state})"
        )

    def start(self) -> BootstrapServer:
        if self._running is not None or self._closed:
            raise RuntimeError("BootstrapServer can be started only once")
        self._running = Running(_HTTPServer((self._host, self._port), self._registry, self._token), "bootstrap-server")
        self._port = self._running.port
        _log.debug("bootstrap server listening on %s", self.base_url)
        return self

    def close(self) -> None:
        running, self._running, self._closed = self._running, None, True
        if running is not None:
            running.close()

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
        return self.url.removesuffix(ROUTE_PATH)

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
