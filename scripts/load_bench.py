"""Load on the bootstrap server as a first wave makes it (prints figures; not a test).

(a) 1,000 PUTs from 200 concurrent clients, each PUT on a fresh TCP connection, as
    1,000 rank processes would send them; (b) the same on kept-alive connections, one per
    client; (c) the latency of one request on a kept-alive connection (a Nagle stall
    shows as ~40 ms); (d) with --late-registrations N, N real Registrations (threads)
    waiting on a server that comes up late: how many registered, how many attempts
    ended in a reset, the lag from listen to REGISTERED.

Clients run in worker processes (threads in each), so the client's GIL is not what is
measured. Run: .venv/bin/python scripts/load_bench.py [--puts 1000] [--clients 200]
[--late-registrations 512] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from coordinator import BootstrapServer, Registration, RetryPolicy, Snapshot
from coordinator.clock import SystemClock
from coordinator.protocol import ROUTE_PATH
from coordinator.testing import example_payload, free_port
from states import State

RESET_TYPES = {"ConnectionResetError", "RemoteDisconnected", "BrokenPipeError", "ConnectionAbortedError"}
HEADERS = {"Content-Type": "application/json"}


def _client_process(port: int, ranks: list[list[int]], total: int, keep_alive: bool) -> tuple[list[float], list[str]]:
    """One process: a thread per client, each PUTting its ranks; (latencies, errors)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(ranks))

    def client(mine: list[int]) -> None:
        barrier.wait()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for rank in mine:
                if not keep_alive:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                began = time.perf_counter()
                try:
                    conn.request("PUT", ROUTE_PATH, json.dumps(example_payload(rank, total)), HEADERS)
                    response = conn.getresponse()
                    response.read()
                    ok = response.status == 200
                    problem = None if ok else f"HTTP {response.status}"
                except OSError as exc:
                    problem = type(exc).__name__
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                took = time.perf_counter() - began
                with lock:
                    if problem is None:
                        latencies.append(took)
                    else:
                        errors.append(problem)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(mine,)) for mine in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def wave(puts: int, clients: int, keep_alive: bool, processes: int) -> dict[str, Any]:
    per_client = [list(range(c, puts, clients)) for c in range(clients)]
    groups = [per_client[p::processes] for p in range(processes)]
    with BootstrapServer() as server, ProcessPoolExecutor(processes) as pool:
        began = time.perf_counter()
        results = list(pool.map(_client_process, [server.port] * processes, groups, [puts] * processes,
                                [keep_alive] * processes))
        wall = time.perf_counter() - began
        registered, ready = server.registered_count, server.is_ready
    latencies = [x for lat, _ in results for x in lat]
    errors = Counter(e for _, errs in results for e in errs)
    return {"mode": "kept-alive" if keep_alive else "fresh connections", "puts": puts, "clients": clients,
            "puts_per_s": puts / wall, "errors": sum(errors.values()), "errors_by_kind": dict(errors),
            "p50_ms": _quantile(latencies, 0.5) * 1e3, "p99_ms": _quantile(latencies, 0.99) * 1e3,
            "max_ms": max(latencies, default=float("nan")) * 1e3, "registered": registered, "ready": ready}


def kept_alive_latency(requests: int) -> dict[str, float]:
    with BootstrapServer() as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        took = []
        try:
            for i in range(requests + 1):
                began = time.perf_counter()
                conn.request("PUT", ROUTE_PATH, json.dumps(example_payload(0)), HEADERS)
                conn.getresponse().read()
                took.append(time.perf_counter() - began)
        finally:
            conn.close()
    took = took[1:]  # the first pays for the connection
    return {"requests": requests, "median_ms": statistics.median(took) * 1e3, "max_ms": max(took) * 1e3}


def late_registrations(n: int) -> dict[str, Any]:
    port = free_port()
    clock = SystemClock()
    refused = threading.Semaphore(0)
    resets: list[Snapshot] = []

    def watch(snap: Snapshot) -> None:
        if snap.last_error is not None and snap.last_error.type in RESET_TYPES:
            resets.append(snap)
        if snap.attempt == 1 and snap.state is State.BACKOFF:
            refused.release()

    regs = []
    try:
        for i in range(n):
            reg = Registration(f"http://127.0.0.1:{port}/route", example_payload(i, n),
                               policy=RetryPolicy(deadline_s=60), name=f"rank{i}", hooks=(), clock=clock)
            reg.add_listener(watch)
            regs.append(reg.start())
        for _ in regs:
            refused.acquire(timeout=60)
        with BootstrapServer("127.0.0.1", port) as server:
            listening = clock.now()
            finals = [reg.wait(60) for reg in regs]
            ready = server.is_ready
    finally:
        for reg in regs:
            reg.stop(10)
    lags = sorted(f.taken_at - listening for f in finals if f.state is State.REGISTERED)
    return {"registrations": n, "registered": len(lags), "ready": ready, "reset_attempts": len(resets),
            "lag_p50_s": _quantile(lags, 0.5), "lag_p99_s": _quantile(lags, 0.99), "lag_max_s": lags[-1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--puts", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--late-registrations", type=int, default=512, metavar="N")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = {
        "fresh": wave(args.puts, args.clients, keep_alive=False, processes=args.processes),
        "kept_alive": wave(args.puts, args.clients, keep_alive=True, processes=args.processes),
        "latency": kept_alive_latency(200),
        "late": late_registrations(args.late_registrations) if args.late_registrations else None,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    for key in ("fresh", "kept_alive"):
        w = figures[key]
        print(f"{w['mode']:>17}: {w['puts']} PUTs from {w['clients']} clients: {w['puts_per_s']:.0f} PUT/s, "
              f"{w['errors']} errors {w['errors_by_kind'] or ''}, latency p50 {w['p50_ms']:.1f} ms, "
              f"p99 {w['p99_ms']:.1f} ms, max {w['max_ms']:.1f} ms; registered {w['registered']}, "
              f"ready {w['ready']}")
    lat = figures["latency"]
    print(f"kept-alive request: median {lat['median_ms']:.2f} ms, max {lat['max_ms']:.2f} ms "
          f"over {lat['requests']} (target < 2 ms)")
    late = figures["late"]
    if late:
        print(f"{late['registrations']} Registrations on a late server: {late['registered']} registered, "
              f"ready {late['ready']}, {late['reset_attempts']} attempts ended in a reset; lag from listen to "
              f"REGISTERED p50 {late['lag_p50_s']:.3f} s, p99 {late['lag_p99_s']:.3f} s, "
              f"max {late['lag_max_s']:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
