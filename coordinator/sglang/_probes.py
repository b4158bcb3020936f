"""``/startup/*`` on SGLang's own HTTP server: the probes of every driver of the instance,
read from the state directory the schedulers publish into."""

from __future__ import annotations

import logging
import sys
from typing import Any

from coordinator import health
from coordinator.state import read_published

log = logging.getLogger("coordinator.sglang")
HTTP_SERVER = "sglang.srt.entrypoints.http_server"
PREFIX = "/startup"


def app(state_dir: str) -> Any:
    """The probes' ASGI app for every driver published in ``state_dir``, read anew per request."""
    return health.asgi(lambda: read_published(state_dir))


def mount(state_dir: str) -> bool:
    """In SGLang's main process (where its FastAPI ``app`` lives), mount the probes at /startup."""
    module = sys.modules.get(HTTP_SERVER)
    fastapi_app = getattr(module, "app", None)
    if fastapi_app is None or not callable(getattr(fastapi_app, "mount", None)):
        return False  # a scheduler, the detokenizer, or an engine without an HTTP server
    fastapi_app.mount(PREFIX, app(state_dir))
    log.info("prefill_startup.probes path=%s/{livez,readyz,startupz,status,metrics} state_dir=%s", PREFIX, state_dir)
    return True
