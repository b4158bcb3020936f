"""``/metrics``: the Prometheus text exposition of a registry, when prometheus_client is installed."""

from __future__ import annotations

from typing import Any

MISSING = b"metrics need prometheus_client: pip install 'prefill-startup[metrics]'\n"


def render(registry: Any = None) -> tuple[int, str, bytes]:
    """(status, content type, body) for ``registry`` (prometheus_client's default when None)."""
    try:  # optional, and imported only by whoever scrapes
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
    except ImportError:
        return 404, "text/plain; charset=utf-8", MISSING
    return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY if registry is None else registry)
