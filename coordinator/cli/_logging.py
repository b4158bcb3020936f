"""The CLI's logging: the only place that configures it. Stdlib handlers render the
library's structured events with structlog's console renderer (on a terminal) or as JSON."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import structlog


class _StructuredFormatter(logging.Formatter):
    """Renders ``record.structlog`` (the library's event fields) with a structlog renderer."""

    def __init__(self, renderer: Callable[..., str | bytes]) -> None:
        super().__init__()
        self._renderer = renderer
        self._stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "structlog", None)
        event: dict[str, Any] = dict(fields) if fields else {"event": record.getMessage()}
        event["level"] = record.levelname.lower()
        event["logger"] = record.name
        stamped = self._stamp(None, record.levelname.lower(), event)
        text = self._renderer(None, record.levelname.lower(), stamped)
        return text.decode() if isinstance(text, bytes) else text


def configure_logging(fmt: str, level: str = "INFO", stream: Any = None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Callable[..., str | bytes]
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_StructuredFormatter(renderer))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # transitions narrates every callback at INFO; urllib3 every connection at DEBUG.
    logging.getLogger("transitions").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
