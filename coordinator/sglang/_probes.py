"""``/startup/*`` on SGLang's own HTTP server: the probes of every driver of the instance,
read from the state directory the schedulers publish into."""

from __future__ import annotations

import logging
import sys
from typing import Any

from coordinator.health._answer import answer
from coordinator.state import read_published

log = logging.getLogger("coordinator.sglang")
HTTP_SERVER = "sglang.srt.entrypoints.http_server"
PREFIX = "/startup"


def app(state_dir: str) -> Any:
    """An ASGI app answering ``/livez /readyz /startupz /status /metrics`` (``?verbose``,
    ``?exclude``) for every driver published in ``state_dir``, read anew per request."""

    async def serve(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        query = scope.get("query_string", b"").decode("latin-1")
        status, ctype, body = answer(read_published(state_dir), path, query)
        headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
                   (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return serve


def mount(state_dir: str) -> bool:
    """In SGLang's main process (where its FastAPI ``app`` lives), mount the probes at /startup."""
    module = sys.modules.get(HTTP_SERVER)
    fastapi_app = getattr(module, "app", None)
    if fastapi_app is None or not callable(getattr(fastapi_app, "mount", None)):
        return False  # a scheduler, the detokenizer, or an engine without an HTTP server
    fastapi_app.mount(PREFIX, app(state_dir))
    log.info("prefill_startup.probes path=%s/{livez,readyz,startupz,status,metrics} state_dir=%s", PREFIX, state_dir)
    return True
