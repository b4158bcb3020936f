"""One request to the probe endpoints → (status, content type, body): what both servers serve."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from coordinator.health._metrics import render
from coordinator.health._probe import CHECKS, PATHS, probe, probe_all, verbose

if TYPE_CHECKING:
    from coordinator.driver import Driver

JSON, TEXT = "application/json", "text/plain; charset=utf-8"


def as_list(drivers: Any) -> list[Driver[Any]]:
    out = list(drivers) if isinstance(drivers, Sequence) else [drivers]
    if not out:
        raise ValueError("registration: at least one is needed")
    for d in out:
        if not (callable(getattr(d, "snapshot", None)) and hasattr(d, "clock")):
            raise TypeError(f"registration: expected a Registration or Discovery, got {type(d).__name__}")
    return out


def answer(drivers: Sequence[Driver[Any]], path: str, query: str, registry: Any = None) -> tuple[int, str, bytes]:
    if path == "/metrics":
        return render(registry)
    if path not in PATHS:
        body = {"error": f"unknown path; try one of {', '.join((*PATHS, '/metrics'))}"}
        return 404, JSON, json.dumps(body).encode()
    now = drivers[0].clock.now()
    snapshots = [d.snapshot() for d in drivers]
    params = parse_qs(query, keep_blank_values=True)
    if "verbose" in params and path in CHECKS:
        status, text = verbose(path, snapshots, now, params.get("exclude", []))
        return status, TEXT, text.encode()
    status, body = probe(path, snapshots[0], now) if len(snapshots) == 1 else probe_all(path, snapshots, now)
    return status, JSON, json.dumps(body).encode()
