"""Handing upstream's own lookup code an answer we already have, with no network I/O.

``try_ensure_parallel_info`` fetches the topology with ``requests.get`` and then runs
SGLang's sanity checks and builds ``PrefillServerInfo`` itself. To keep all of that
SGLang's, the plugin stands a :class:`CannedRequests` in for the ``requests`` name of
that module. While the plugin calls upstream's body on the scheduler thread, ``get()``
answers the one request it expects (that address's topology: ``GET /route`` with all
four query values -1, in any order) from the completed Discovery, and refuses any other at
once (a ``ConnectionError``, which upstream's body takes as "not yet"): the scheduler
thread never waits on the network. Every other thread (upstream's heartbeat) gets the
real ``requests``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from coordinator.protocol import QUERY_FIELDS, ROUTE_PATH

_OFFLINE = ("", b"")  # answering nothing: every get() is refused
_TOPOLOGY = {field: ["-1"] for field in QUERY_FIELDS}


def _topology_of(url: str) -> str | None:
    """The ``host:port`` whose topology ``url`` asks for, or None when it asks something else."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.path != ROUTE_PATH or parse_qs(parts.query) != _TOPOLOGY:
        return None
    return parts.netloc


class CannedRequests:
    def __init__(self, real: Any) -> None:
        self._real = real
        self._local = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get(self, url: str, *args: Any, **kwargs: Any) -> Any:
        canned: tuple[str, bytes] | None = getattr(self._local, "answer", None)
        if canned is None:
            return self._real.get(url, *args, **kwargs)
        addr, body = canned
        if not addr or _topology_of(url) != addr:
            raise requests.ConnectionError(f"prefill-startup: no network I/O on the scheduler thread ({url})")
        response = requests.Response()
        response.status_code, response.url, response.encoding = 200, url, "utf-8"
        response.headers["Content-Type"] = "application/json"
        response._content = body  # how requests itself builds a response from bytes
        return response

    @contextlib.contextmanager
    def answering(self, addr: str, data: dict[str, Any]) -> Iterator[None]:
        """Within the block, on this thread, a ``get()`` of ``addr``'s topology answers 200 with
        ``data``; any other URL is refused."""
        with self._canned((addr, json.dumps(data).encode())):
            yield

    def offline(self) -> contextlib.AbstractContextManager[None]:
        """Within the block, on this thread, every ``get()`` is refused."""
        return self._canned(_OFFLINE)

    @contextlib.contextmanager
    def _canned(self, answer: tuple[str, bytes]) -> Iterator[None]:
        self._local.answer = answer
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
