"""The probes as a dependency-free ASGI 3 application, to mount in SGLang's FastAPI server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from coordinator.health._answer import ExpectedSource, Probed, answer, as_expected, as_source
from coordinator.health._metrics import METRICS

if TYPE_CHECKING:
    from coordinator.driver import Driver

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def asgi(registration: Driver[Any, Any] | Sequence[Driver[Any, Any]] | Callable[[], Sequence[Probed]], *,
         registry: Any = None, expected: ExpectedSource | None = None) -> ASGIApp:
    """``app.mount("/startup", health.asgi(reg))``: /livez /readyz /startupz /status /metrics.

    ``registration``: a driver, a list of them, or a callable giving the drivers anew for
    each request (an SGLang instance's, from :class:`coordinator.instance.Board`);
    ``expected``: a callable giving what readiness waits for beyond them, if anything.

    ``registration`` and ``expected`` read memory only, so the probes answer straight from the event loop;
    ``/metrics`` collects a registry (seconds, with a big one or a slow custom collector),
    so it runs on the loop's default executor, never blocking the application's requests.
    """
    source, expect = as_source(registration), as_expected(expected)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served on its own, the app has nothing to start
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # Starlette's Mount keeps the full path and sets root_path
            path = path[len(root):] or "/"
        if scope["method"] not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain; charset=utf-8", b"method not allowed\n"
            extra = [(b"allow", b"GET, HEAD")]
        else:
            query = scope.get("query_string", b"").decode("latin-1")
            if path == METRICS:
                status, ctype, body = await asyncio.get_running_loop().run_in_executor(
                    None, answer, source(), path, query, registry)
            else:
                status, ctype, body = answer(source(), path, query, registry, expect())
            extra = []
        headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store"), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return app
