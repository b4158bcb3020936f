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

Our extensions, which SGLang's clients never use, so that parity holds without them:

- Every answer (every status, every path) carries ``X-Prefill-Startup-Generation``, an id
  drawn when the server object is made (a restart changes it), and
  ``X-Prefill-Startup-Long-Poll: 30``, the longest ``wait`` taken. Headers only: upstream's
  decode builds ``PrefillServerInfo(**json)``, which an unknown key would break.
- Long-poll: the topology lookup (all four ``-1``) with ``&wait=S`` (0 < S <= 30) and
  optionally ``&seen=G``. ``seen`` other than our generation: answered at once (the client
  learns of a restart in one round trip). Else, instance incomplete: held until it
  completes (200) or S passes (the current 503). Else (complete): held S with ``seen``
  (then the 200: nothing changes within one server, but a held connection resets the
  moment this server dies), at once without. ``wait`` on a rank lookup, or a bad value,
  is a 400 naming the parameter; ``seen`` without ``wait`` is ignored, as upstream
  ignores unknown parameters.

Why held requests go to one parking thread (:meth:`._base.Server.park`) rather than an
asyncio server: a held long-poll then costs a socket, not a thread (1,000 waiting decode
instances, one thread), while everything else keeps the thread-per-connection base whose
bounds and wire parity are tested; an asyncio rewrite would redo both for no other gain.

Transport bounds, which no well-behaved client meets (see :mod:`._base`): bodies are
bounded (413 over 64 KiB, 411 without Content-Length, 400 with two), a request has 10 s
in all, at most 1024 connections are served at once (503 beyond), each on its own
thread, so one slow client cannot stall the others; at most 4096 long-polls are held
(they hold no thread: beyond, one is answered at once).
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from typing import Any
from urllib.parse import parse_qs

from coordinator import validate
from coordinator.clock import REAL_TIME
from coordinator.protocol import (
    GENERATION_HEADER,
    HEALTH_PATH,
    LONG_POLL_HEADER,
    QUERY_FIELDS,
    ROUTE_PATH,
    SEEN_PARAM,
    TOPOLOGY_KEY,
    WAIT_PARAM,
    PayloadError,
    RankKey,
    bootstrap_url,
    validate_payload,
)
from coordinator.server._base import Handler, Running, Server
from coordinator.server._registry import Registry, Rejected

MAX_BODY_BYTES = 64 * 1024
MAX_WAIT_S = 30  # the longest long-poll, advertised in LONG_POLL_HEADER
_log = logging.getLogger("coordinator.bootstrap_server")


class _HTTPServer(Server):
    def __init__(self, address: tuple[str, int], registry: Registry, token: str | None, generation: str) -> None:
        self.registry = registry
        self.expected_auth = None if token is None else b"Bearer " + token.encode()
        self.generation = generation
        self.extra_headers = ((GENERATION_HEADER, generation), (LONG_POLL_HEADER, str(MAX_WAIT_S)))
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
            completed = self.server.registry.register(validate_payload(payload))
        except PayloadError as exc:
            self._reply(400, str(exc))
        except Rejected as exc:
            self._reply(exc.status, str(exc))
        else:
            if completed:
                self.server.wake_parked()
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
        if not validate.is_digits(raw):
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
        key = (dp, cp, tp, pp)
        if WAIT_PARAM in params:
            try:
                wait, seen = _long_poll_params(params, key)
            except ValueError as exc:
                self._reply(400, str(exc))
                return
            if self._park(wait, seen):
                return
        self._reply(*self._route_answer(key, texts))

    def _route_answer(self, key: RankKey, texts: list[str]) -> tuple[int, str | dict[str, Any]]:
        registry = self.server.registry
        topology = registry.topology()
        if topology is None:  # every GET, rank lookups included, as upstream
            registered, expected, _ = registry.counts()
            of = "" if expected is None else f" of {expected}"
            return 503, f"Prefill server not fully registered yet ({registered}{of} workers registered)."
        if key == TOPOLOGY_KEY:
            return 200, topology
        info = registry.lookup(key)
        if info is not None:
            return 200, info
        # upstream's text, the values as the query wrote them
        return 404, "Bootstrap info not found for dp_rank={} cp_rank={} tp_rank={} pp_rank={}".format(*texts)

    def _park(self, wait: float, seen: str | None) -> bool:
        """Hand a topology long-poll that must wait to the parking thread; False: answer it now."""
        server = self.server
        if seen is not None and seen != server.generation:
            return False  # the client resolved another server: it must learn of the restart now
        incomplete = server.registry.topology() is None
        if not incomplete and seen is None:
            return False

        def answer(timed_out: bool) -> bytes | None:  # on the parking thread, this handler done
            # Held for completion, or (complete, our generation seen) for the whole wait.
            if not timed_out and (not incomplete or server.registry.topology() is None):
                return None
            return self._render(*self._route_answer(TOPOLOGY_KEY, []))

        # Set before the hand-over: the parking thread may render at once, and its answer closes.
        closing, self.close_connection = self.close_connection, True
        if server.park(self.connection, REAL_TIME.now() + wait, answer):
            return True
        self.close_connection = closing
        return False

    def _render(self, status: int, body: str | dict[str, Any]) -> bytes:
        data, ctype = _encode(body)
        return self.render(status, data, ctype)

    def _reply(self, status: int, body: str | dict[str, Any], *header: tuple[str, str]) -> None:
        data, ctype = _encode(body)
        if not self._body_read and self._has_body():
            # Unread body bytes would be parsed as the next request on this connection.
            self.close_connection = True
        self.respond(status, data, ctype, header)

    def _has_body(self) -> bool:
        return (
            "Transfer-Encoding" in self.headers
            or self.headers.get("Content-Length", "0").strip() != "0"
        )


def _encode(body: str | dict[str, Any]) -> tuple[bytes, str]:
    if isinstance(body, dict):
        return json.dumps(body).encode(), "application/json"
    return body.encode(), "text/plain; charset=utf-8"


def _long_poll_params(params: dict[str, list[str]], key: RankKey) -> tuple[float, str | None]:
    """(wait, seen) of a long-poll query, or ValueError naming the parameter."""
    field = f"query parameter {WAIT_PARAM!r}"
    if key != TOPOLOGY_KEY:
        raise ValueError(f"{field} is only for the topology lookup (all four query values -1)")
    wait = validate.number(params[WAIT_PARAM][0], field, positive=True)
    if wait > MAX_WAIT_S:
        raise ValueError(f"{field} must be <= {MAX_WAIT_S}, got {params[WAIT_PARAM][0]!r}")
    seen = params.get(SEEN_PARAM)
    return wait, None if seen is None else validate.token(seen[0], f"query parameter {SEEN_PARAM!r}")


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
        # An identifier, not a jitter: random, so that a restart at the same address changes it.
        self._generation = secrets.token_hex(8)
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
        self._running = Running(_HTTPServer((self._host, self._port), self._registry, self._token, self._generation),
                                "bootstrap-server")
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
    def generation(self) -> str:
        """This server's id (16 hex digits), sent in every answer's ``X-Prefill-Startup-Generation``."""
        return self._generation

    @property
    def parked(self) -> int:
        """Long-polls held right now (0 unless running)."""
        return 0 if self._running is None else self._running.server.parked

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
