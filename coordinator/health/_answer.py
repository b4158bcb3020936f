"""One request to the probe endpoints → (status, content type, body): what both servers serve."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

from coordinator.health._metrics import METRICS, render
from coordinator.health._probe import CHECKS, PATHS, Expected, probe, probe_all, verbose

if TYPE_CHECKING:
    from coordinator.clock import Clock
    from coordinator.driver import Driver
    from coordinator.snapshot import Snapshot


class Probed(Protocol):
    """What the probes read: a driver, or another process's published view of one."""

    @property
    def clock(self) -> Clock: ...

    def snapshot(self) -> Snapshot: ...


JSON, TEXT = "application/json", "text/plain; charset=utf-8"
# ``?exclude=`` is repeatable; a probe is no place to hand a long list (and each name is
# matched against every driver's label, and echoed back when it matches nothing).
MAX_EXCLUDES, MAX_EXCLUDE_CHARS = 64, 256


def as_list(drivers: Any) -> list[Driver[Any, Any]]:
    out = list(drivers) if isinstance(drivers, Sequence) else [drivers]
    if not out:
        raise ValueError("registration: at least one is needed")
    for d in out:
        if not (callable(getattr(d, "snapshot", None)) and hasattr(d, "clock")):
            raise TypeError(f"registration: expected a Registration or Discovery, got {type(d).__name__}")
    return out


Source = Callable[[], Sequence[Probed]]
ExpectedSource = Callable[[], "Expected | None"]


def as_source(registration: Any) -> Source:
    """A driver, a list of them, or already a callable giving the drivers anew per request."""
    if callable(registration) and not callable(getattr(registration, "snapshot", None)):
        source: Source = registration
        return source
    fixed: Sequence[Probed] = as_list(registration)
    return lambda: fixed


def as_expected(expected: ExpectedSource | None) -> ExpectedSource:
    """``expected``, or (None) a source saying readiness waits for nothing beyond the drivers."""
    return (lambda: None) if expected is None else expected


def _json(status: int, body: dict[str, Any]) -> tuple[int, str, bytes]:
    return status, JSON, json.dumps(body).encode()


def answer(drivers: Sequence[Probed], path: str, query: str, registry: Any = None,
           expected: Expected | None = None) -> tuple[int, str, bytes]:
    if path == METRICS:
        return render(registry)
    if path not in PATHS:
        return _json(404, {"error": f"unknown path; try one of {', '.join((*PATHS, METRICS))}"})
    params = parse_qs(query, keep_blank_values=True)
    exclude = params.get("exclude", [])
    if len(exclude) > MAX_EXCLUDES or any(len(x) > MAX_EXCLUDE_CHARS for x in exclude):
        return _json(400, {"error": f"exclude: at most {MAX_EXCLUDES} values of at most "
                                    f"{MAX_EXCLUDE_CHARS} characters each"})
    if not drivers and expected is None:  # e.g. a decode instance before its first request
        return _json(200, {"ok": True, "registrations": [], "note": "no driver yet: nothing to wait for"})
    now = drivers[0].clock.now() if drivers else 0.0  # no snapshot to measure against
    snapshots = [d.snapshot() for d in drivers]
    if "verbose" in params and path in CHECKS:
        status, text = verbose(path, snapshots, now, exclude, expected)
        return status, TEXT, text.encode()
    if len(snapshots) == 1 and not exclude and expected is None:
        return _json(*probe(path, snapshots[0], now))
    return _json(*probe_all(path, snapshots, now, exclude, expected))
