"""``/metrics``: the Prometheus text exposition of a registry, when prometheus_client is installed."""

from __future__ import annotations

import os
from typing import Any

METRICS = "/metrics"
MISSING = b"metrics need prometheus_client: pip install 'prefill-startup[metrics]'\n"


def render(registry: Any = None) -> tuple[int, str, bytes]:
    """(status, content type, body) for ``registry``; when None, prometheus_client's default
    registry, or with ``PROMETHEUS_MULTIPROC_DIR`` set, what every process wrote there.

    This collects: it may take a while with a big or slow registry. The ASGI app runs it
    off its event loop.
    """
    try:  # optional, and imported only by whoever scrapes
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    except ImportError:
        return 404, "text/plain; charset=utf-8", MISSING
    if registry is None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Multiprocess mode (as SGLang's own /metrics): this process's registry holds only
        # its own share; the merge of every process's files goes on a fresh registry per scrape.
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
    return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY if registry is None else registry)
