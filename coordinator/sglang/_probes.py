"""The probes of an SGLang instance, in its main process: on a port of their own from plugin
load on (SGLang's HTTP port opens only once every scheduler is up), and at ``/startup`` on
SGLang's FastAPI app once it exists."""

from __future__ import annotations

import logging
import sys
from typing import Any

from coordinator import health
from coordinator.instance import Board
from coordinator.server._base import Running
from coordinator.sglang._targets import HTTP_SERVER

log = logging.getLogger("coordinator.sglang")
PREFIX = "/startup"
# SGLang's own ports: 30000 (HTTP), 8998 (the KV bootstrap server); 8990 sits beside the
# bootstrap port, below it so that a second instance's bootstrap port (8999) never meets it.
DEFAULT_PORT = 8990
_mounted: set[int] = set()  # the apps already given /startup (by id): mounting twice would shadow


def serve(board: Board, host: str, port: int | None) -> Running | None:
    """The probe port; None (one WARNING) when it cannot be bound: SGLang runs on regardless."""
    port = DEFAULT_PORT if port is None else port
    try:
        running = health.serve(board.members, host, port, expected=board.expected)
    except OSError as exc:
        log.warning("prefill_startup.probes_unavailable host=%s port=%d: %s; set PREFILL_STARTUP_HEALTH_PORT "
                    "to a free port (the probes are also at %s on SGLang's HTTP server once it listens)",
                    host, port, exc, PREFIX)
        return None
    log.info("prefill_startup.probes url=%s/{livez,readyz,startupz,status,metrics}", running.url)
    return running


def mount(board: Board) -> bool:
    """Mount the probes at /startup on SGLang's FastAPI ``app``, if it exists (once)."""
    module = sys.modules.get(HTTP_SERVER)
    app: Any = getattr(module, "app", None)
    if app is None or not callable(getattr(app, "mount", None)):
        return False  # not imported yet, or an engine without an HTTP server
    if id(app) not in _mounted:
        _mounted.add(id(app))
        try:
            app.mount(PREFIX, health.asgi(board.members, expected=board.expected))
        except Exception as exc:  # noqa: BLE001 - SGLang's launch goes on whatever its app makes of it
            log.warning("prefill_startup.probes_not_mounted: %s: %s; the probe port still serves them",
                        type(exc).__name__, exc)
            return False
        log.info("prefill_startup.probes path=%s/{livez,readyz,startupz,status,metrics} on SGLang's HTTP server",
                 PREFIX)
    return True
