"""The Prometheus hook: attempts, state and time to a terminal state, as metric families.

Label sets are bounded: the driver's name and kind, the lane, the outcome label, the
state, the terminal reason; never an attempt number or a URL. Names are bounded too: a
registry gives its own series to the first ``max_names`` distinct names (256 by default)
and counts every later one under ``name="_overflow"``, with one WARNING the first time.
A name keeps its series for the life of the process, terminal or not: the FAILED state
is what an alert reads, and a counter that vanished would restart from zero.
``prometheus_client`` is the optional extra ``metrics``; it is imported when the first
hook is made.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coordinator import validate
from coordinator.instrumentation._log import default_logger
from coordinator.instrumentation._records import AttemptRecord, Record
from coordinator.snapshot import Snapshot
from states import SETTLED, State

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

# From a rank that finds its server up (ms) to a long model load (minutes).
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, float("inf"))
MAX_NAMES = 256
OVERFLOW = "_overflow"


@dataclass
class _Families:
    attempts: Any
    state: Any
    seconds: Any
    invalidations: Any
    names: set[str] = field(default_factory=set)  # the names given series of their own
    overflowed: bool = False


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
                        ["name", "kind", "lane", "outcome"], registry=registry),
                # A count of drivers (0 or 1 for a name of its own). In multiprocess mode
                # the live processes' counts add up: several decode ranks discovering one
                # prefill instance under one name, and none of a process that died.
                Gauge("prefill_startup_state", "Drivers of this name and kind in each state",
                      ["name", "kind", "state"], registry=registry, multiprocess_mode="livesum"),
                Histogram("prefill_startup_duration_seconds",
                          "Seconds from the first attempt to the terminal state, by result",
                          ["name", "kind", "result"], buckets=BUCKETS, registry=registry),
                Counter("prefill_startup_invalidations", "Times a watching driver left REGISTERED, by cause",
                        ["name", "kind", "cause"], registry=registry),
            )
        return fam


class PrometheusHook:
    """Feeds ``registry`` (prometheus_client's default registry when None).

    The ``name`` label is the driver's ``name`` (or its kind when unnamed; a discovery's
    defaults to its bootstrap address), ``kind`` is ``registration`` or ``discovery``: name
    your drivers when a process holds several. A hook gives a new name series of its own
    while the registry holds fewer than ``max_names`` names (counted over all its hooks);
    later names share ``name="_overflow"``. Give a driver one hook per registry: two
    would count it twice.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, max_names: int = MAX_NAMES) -> None:
        self.max_names = validate.int_in(max_names, "max_names", low=1)
        if registry is None:
            from prometheus_client import REGISTRY

            registry = REGISTRY
        self.registry = registry
        self._f = _families(registry)

    def __repr__(self) -> str:
        return f"PrometheusHook(registry={self.registry!r}, max_names={self.max_names})"

    def _name(self, s: Snapshot) -> str:
        name = s.name or s.kind.value
        f = self._f
        if name in f.names:  # an admitted name, the usual case: no lock
            return name
        with _lock:
            if name in f.names or len(f.names) < self.max_names:
                f.names.add(name)
                return name
            first, f.overflowed = not f.overflowed, True
        if first:
            default_logger().warning("metrics.names_overflow", max_names=self.max_names, label=OVERFLOW,
                                     first_overflowed=name)
        return OVERFLOW

    def __call__(self, record: Record) -> None:
        s = record.snapshot
        name, kind = self._name(s), s.kind.value
        if isinstance(record, AttemptRecord):
            lane = record.decision.lane.value if record.decision.lane else "none"
            self._f.attempts.labels(name, kind, lane, record.label).inc()
            return
        state = self._f.state
        if record.from_state is State.INIT:
            for each in State:  # the first record: every state shows, 0 but the current one
                state.labels(name, kind, each.value)
        else:  # INIT was never counted: a driver has no record before it starts
            state.labels(name, kind, record.from_state.value).dec()
        state.labels(name, kind, record.to_state.value).inc()
        if record.cause is not None:
            self._f.invalidations.labels(name, kind, record.cause).inc()
        if record.to_state in SETTLED:
            self._f.seconds.labels(name, kind, s.reason.value if s.reason else "unknown").observe(s.elapsed_s)
