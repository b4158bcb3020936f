"""Handing upstream's own lookup code an answer we already have, with no network I/O.

``try_ensure_parallel_info`` fetches the topology with ``requests.get`` and then runs
SGLang's sanity checks and builds ``PrefillServerInfo`` itself. To keep all of that
SGLang's, the plugin stands a :class:`CannedRequests` in for the ``requests`` name of
that module: on the thread that asked for it, and for that one URL, ``get()`` answers
from the completed Discovery; every other call is the real ``requests``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import requests


class CannedRequests:
    def __init__(self, real: Any) -> None:
        self._real = real
        self._local = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get(self, url: str, *args: Any, **kwargs: Any) -> Any:
        canned: tuple[str, bytes] | None = getattr(self._local, "answer", None)
        if canned is not None and url.startswith(canned[0]):
            response = requests.Response()
            response.status_code, response.url, response.encoding = 200, url, "utf-8"
            response.headers["Content-Type"] = "application/json"
            response._content = canned[1]  # how requests itself builds a response from bytes
            return response
        return self._real.get(url, *args, **kwargs)

    @contextlib.contextmanager
    def answering(self, url_prefix: str, data: dict[str, Any]) -> Iterator[None]:
        """Within the block, on this thread, ``get(url_prefix…)`` answers 200 with ``data``."""
        self._local.answer = (url_prefix, json.dumps(data).encode())
        try:
            yield
        finally:
            self._local.answer = None


def install(module: ModuleType) -> CannedRequests:
    """Stand a CannedRequests in for ``module.requests`` (once)."""
    current = getattr(module, "requests")
    if isinstance(current, CannedRequests):
        return current
    canned = CannedRequests(current)
    setattr(module, "requests", canned)
    return canned
