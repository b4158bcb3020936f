"""Instrumentation: the driver hands one immutable record per attempt and per transition
to each of its hooks. Built in: :class:`LogHook` (structlog events),
:class:`PrometheusHook` (metrics, with the ``metrics`` extra) and
:class:`SystemdNotifier` (sd_notify); any callable taking a record is a hook too.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

from coordinator.instrumentation._log import LogHook
from coordinator.instrumentation._records import AttemptRecord, Hook, Record, TransitionRecord, outcome_label
from coordinator.instrumentation._systemd import SystemdNotifier

if TYPE_CHECKING:
    from coordinator.instrumentation._prometheus import PrometheusHook

__all__ = [
    "AttemptRecord",
    "Hook",
    "LogHook",
    "PrometheusHook",
    "Record",
    "SystemdNotifier",
    "TransitionRecord",
    "default_hooks",
    "outcome_label",
]

_default_prometheus: list[Hook] | None = None  # the process-wide hook on the default registry, made once


def __getattr__(name: str) -> object:
    # Lazy: prometheus_client is optional, and costs import time only to those who use it.
    if name == "PrometheusHook":
        from coordinator.instrumentation._prometheus import PrometheusHook

        return PrometheusHook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_hooks(logger: Any = None) -> list[Hook]:
    """What a driver uses without ``hooks=``: structlog events through ``logger`` (stdlib
    ``coordinator`` by default) and, when prometheus_client is installed, metrics in its
    default registry (as stamina does)."""
    global _default_prometheus
    if _default_prometheus is None:
        _default_prometheus = []
        if find_spec("prometheus_client") is not None:
            from coordinator.instrumentation._prometheus import PrometheusHook

            _default_prometheus.append(PrometheusHook())
    return [LogHook(logger), *_default_prometheus]
