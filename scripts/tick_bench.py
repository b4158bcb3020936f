"""A decode scheduler's tick while its prefill's bootstrap server hangs (prints figures; not a test).

A loopback server accepts every connection and never answers, so each lookup runs into
its 5 s timeout. (a) ours: a Discovery started in the background; the "scheduler loop"
reads ``snapshot()`` and ``info`` every tick. (b) upstream's way: the loop itself makes a
blocking ``requests.get(..., timeout=5)`` once a second. Each tick also does ~50 us of
busy work, standing in for a scheduler step. Figures: ticks, p50 / p99 / max tick.

Run: .venv/bin/python scripts/tick_bench.py [--seconds 12] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests

from coordinator import Discovery, RetryPolicy
from coordinator.protocol import ROUTE_PATH, TOPOLOGY_KEY, route_query

WORK_S = 50e-6
QUERY = f"{ROUTE_PATH}?{route_query(TOPOLOGY_KEY)}"


@contextlib.contextmanager
def hanging_server() -> Iterator[int]:
    """Accepts, reads, never answers; shuts every connection down on exit."""
    listener = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conns.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        listener.close()


def _loop(seconds: float, tick: Callable[[float], None]) -> list[float]:
    durations = []
    end = time.perf_counter() + seconds
    while (began := time.perf_counter()) < end:
        tick(began)
        spin_until = time.perf_counter() + WORK_S
        while time.perf_counter() < spin_until:
            pass
        durations.append(time.perf_counter() - began)
    return durations


def _figures(durations: list[float]) -> dict[str, Any]:
    ordered = sorted(durations)
    return {"ticks": len(ordered), "p50_ms": statistics.median(ordered) * 1e3,
            "p99_ms": ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] * 1e3, "max_ms": ordered[-1] * 1e3}


def ours(port: int, seconds: float) -> dict[str, Any]:
    discovery = Discovery(f"127.0.0.1:{port}", policy=RetryPolicy(attempt_timeout_s=5, deadline_s=None),
                          hooks=()).start()
    try:
        seen: list[object] = []
        durations = _loop(seconds, lambda _: seen.append((discovery.snapshot().state, discovery.info)))
        snap = discovery.snapshot()
    finally:
        discovery.stop(10)
    return {**_figures(durations), "attempts": snap.attempt, "state": snap.state.value,
            "last_error": str(snap.last_error)}


def upstream(port: int, seconds: float) -> dict[str, Any]:
    last = [float("-inf")]
    with requests.Session() as http:
        http.trust_env = False

        def tick(now: float) -> None:
            if now - last[0] >= 1.0:  # upstream: at most one lookup per second, on the scheduler thread
                last[0] = now
                with contextlib.suppress(requests.RequestException):
                    http.get(f"http://127.0.0.1:{port}{QUERY}", timeout=5)

        return _figures(_loop(seconds, tick))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with hanging_server() as port:
        figures = {"ours": ours(port, args.seconds), "upstream": upstream(port, args.seconds)}
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    for name, f in figures.items():
        extra = f", discovery: {f['state']} after {f['attempts']} lookups ({f['last_error']})" if "state" in f else ""
        print(f"{name:>8}: {f['ticks']} ticks in {args.seconds:g} s, tick p50 {f['p50_ms']:.3f} ms, "
              f"p99 {f['p99_ms']:.3f} ms, max {f['max_ms']:.1f} ms{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
