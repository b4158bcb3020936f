"""The Prometheus hook: attempts, state and time to a terminal state, as metric families.

Label sets are bounded: the driver's name, the lane, the outcome label, the state,
the terminal reason; never an attempt number or a URL. ``prometheus_client`` is the
optional extra ``metrics``; it is imported when the first hook is made.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coordinator.instrumentation._records import AttemptRecord, Record
from states import TERMINAL, State

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

# From a rank that finds its server up (ms) to a long model load (minutes).
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, float("inf"))


@dataclass(frozen=True)
class _Families:
    attempts: Any
    state: Any
    seconds: Any


_lock = threading.Lock()
# One set of families per registry: prometheus_client refuses to register a name twice.
_by_registry: weakref.WeakKeyDictionary[Any, _Families] = weakref.WeakKeyDictionary()


def _families(registry: CollectorRegistry) -> _Families:
    from prometheus_client import Counter, Gauge, Histogram

    with _lock:
        fam = _by_registry.get(registry)
        if fam is None:
            fam = _by_registry[registry] = _Families(
                Counter("prefill_startup_attempts", "Attempts, by lane and outcome label",
                        ["registration", "lane", "outcome"], registry=registry),
                Gauge("prefill_startup_state", "1 for the current state of each registration, 0 for the others",
                      ["registration", "state"], registry=registry),
                Histogram("prefill_startup_registration_seconds",
                          "Seconds from the first attempt to the terminal state, by result",
                          ["registration", "result"], buckets=BUCKETS, registry=registry),
            )
        return fam


class PrometheusHook:
    """Feeds ``registry`` (prometheus_client's default registry when None).

    The ``registration`` label is the driver's ``name`` (or its kind when unnamed):
    name your drivers when a process holds several.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            from prometheus_client import REGISTRY

            registry = REGISTRY
        self.registry = registry
        self._f = _families(registry)

    def __repr__(self) -> str:
        return f"PrometheusHook(registry={self.registry!r})"

    def __call__(self, record: Record) -> None:
        s = record.snapshot
        name = s.name or s.kind.value
        if isinstance(record, AttemptRecord):
            lane = record.decision.lane.value if record.decision.lane else "none"
            self._f.attempts.labels(name, lane, record.label).inc()
            return
        for state in State:
            self._f.state.labels(name, state.value).set(1 if state is record.to_state else 0)
        if record.to_state in TERMINAL:
            self._f.seconds.labels(name, s.reason.value if s.reason else "unknown").observe(s.elapsed_s)
