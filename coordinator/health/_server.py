"""The probes on a stdlib server, on a daemon thread."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from coordinator import validate
from coordinator.health._answer import ExpectedSource, Probed, Source, answer, as_expected, as_source
from coordinator.server._base import Handler, Running, Server

if TYPE_CHECKING:
    from coordinator.driver import Driver

HealthServer = Running


class _Server(Server):
    def __init__(self, address: tuple[str, int], source: Source, registry: Any, expected: ExpectedSource) -> None:
        self.source, self.registry, self.expected = source, registry, expected
        super().__init__(address, _Handler)


class _Handler(Handler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        path, _, query = self.path.partition("?")
        status, ctype, body = answer(self.server.source(), path, query, self.server.registry, self.server.expected())
        self.respond(status, body, ctype, [("Cache-Control", "no-store")])

    do_HEAD = do_GET

    def _not_allowed(self) -> None:
        self.respond(405, b"method not allowed\n", "text/plain; charset=utf-8", [("Allow", "GET, HEAD")])

    do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # probes hit every few seconds; an access line each would drown the real events


def serve(registration: Driver[Any, Any] | Sequence[Driver[Any, Any]] | Callable[[], Sequence[Probed]],
          host: str = "127.0.0.1", port: int = 0, *, registry: Any = None,
          expected: ExpectedSource | None = None) -> Running:
    """Serve the probes (and ``/metrics`` from ``registry``) for one driver or all of a
    process's, on a daemon thread. Binds loopback unless told otherwise: the probes
    show internal addresses and errors.

    ``registration`` may also be a callable giving the drivers anew for each request, and
    ``expected`` one giving what readiness waits for beyond them (as :func:`asgi`)."""
    source = as_source(registration)
    validate.port(port, "port", allow_zero=True)
    return Running(_Server((validate.host(host, "host"), port), source, registry, as_expected(expected)),
                   "prefill-startup-health")
