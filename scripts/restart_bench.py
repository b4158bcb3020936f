"""The restart scenario in one run (prints figures; not a test).

(a) The simulator (``coordinator.sim.compare_restart``) for D = 0.5, 3 and 20 s: a prefill
    instance restarts under a watching decode instance; ours polling, ours long-polling (a
    real ``Discovery(watch=True)`` on a FakeClock) and upstream's heartbeat, on identical
    draws, as one Markdown table; and ours polling once more against a server that keeps no
    connection open (so only the checks' pace, not the connection's close, finds it down).
    The stale window is issue 20's "prefill instance down and refusing" (target p99 <= 1 s).
(b) Our bootstrap server with 1,000 watchers: a real ``BootstrapServer`` on loopback,
    complete with 4 ranks, and 1,000 watchers at the default polling pace (a topology GET
    every 1 s x U[0.5, 1.5] after the previous answer, each on a fresh connection), spread
    over client processes (--clients threads in all, 20 watchers each) for --seconds: GETs
    answered per second, latency, errors. Then, if the server advertises long-polls, 1,000
    held long-polls and the server's thread count while they wait.

Run: .venv/bin/python scripts/restart_bench.py [--trials 1000] [--seed 0] [--watchers 1000]
     [--clients 50] [--seconds 5] [--processes 2] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import select
import socket
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

from coordinator import BootstrapServer
from coordinator.protocol import LONG_POLL_HEADER, ROUTE_PATH, TOPOLOGY_KEY, WAIT_PARAM, route_query
from coordinator.sim import RestartResult, RestartScenario, compare_restart, describe_restart
from coordinator.sim._restart_model import POLLING
from coordinator.testing import example_payload
from coordinator.watch import DEFAULT_WATCH_INTERVAL_S, LONG_POLL_S

DOWN_S = (0.5, 3.0, 20.0)
NOT_KEPT = f"{POLLING}, no kept connection"
RANKS = 4
TOPOLOGY_PATH = f"{ROUTE_PATH}?{route_query(TOPOLOGY_KEY)}"


def simulate(trials: int, seed: int) -> dict[float, dict[str, RestartResult]]:
    out = {}
    for down in DOWN_S:
        scenario = RestartScenario(down_s=down, trials=trials, seed=seed)
        results = {model.value: r for model, r in compare_restart(scenario).items()}
        results[NOT_KEPT] = compare_restart(replace(scenario, keep_alive=False), (POLLING,))[POLLING]
        out[down] = results
    return out


def markdown(results: dict[float, dict[str, RestartResult]]) -> str:
    first = next(iter(next(iter(results.values())).values()))
    labels = [label for label, _ in first.cells()]
    lines = ["| D | model | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for down, by_model in results.items():
        for model, r in by_model.items():
            lines.append(f"| {down:g} s | {model} | " + " | ".join(text for _, text in r.cells()) + " |")
    return "\n".join(lines)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _watchers_process(port: int, threads: int, per_thread: int, begin: float, seconds: float,
                      seed: int) -> tuple[list[float], list[str], list[float]]:
    """One client process: ``threads`` threads, each polling for ``per_thread`` watchers as a
    watching Discovery paces its checks; (latencies of the GETs answered in the window, errors,
    how late each GET was sent: the clients' own lag on a shared machine)."""
    latencies: list[float] = []
    late: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    end = begin + seconds

    def client(k: int) -> None:
        rng = random.Random(f"{seed}/{k}")
        due = [begin + rng.random() * DEFAULT_WATCH_INTERVAL_S for _ in range(per_thread)]
        while True:
            i = min(range(per_thread), key=due.__getitem__)
            if due[i] >= end:
                return
            time.sleep(max(0.0, due[i] - time.monotonic()))
            began = time.monotonic()
            late.append(began - due[i])
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", TOPOLOGY_PATH)
                response = conn.getresponse()
                response.read()
                problem = None if response.status == 200 else f"HTTP {response.status}"
            except OSError as exc:
                problem = type(exc).__name__
            finally:
                conn.close()
            done = time.monotonic()
            with lock:
                if problem is not None:
                    errors.append(problem)
                elif done <= end:
                    latencies.append(done - began)
            due[i] = done + DEFAULT_WATCH_INTERVAL_S * (0.5 + rng.random())  # Discovery's jittered pause

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return latencies, errors, late


def _register(port: int) -> None:
    for rank in range(RANKS):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("PUT", ROUTE_PATH, json.dumps(example_payload(rank, RANKS)),
                         {"Content-Type": "application/json"})
            assert conn.getresponse().status == 200
        finally:
            conn.close()


def _advertised_long_poll(port: int) -> str | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", TOPOLOGY_PATH)
        response = conn.getresponse()
        response.read()
        return response.getheader(LONG_POLL_HEADER)
    finally:
        conn.close()


def _held_long_polls(port: int, count: int, wait: float) -> dict[str, Any]:
    """``count`` long-poll GETs held open at once; the server's threads while they wait."""
    threads_before = threading.active_count()  # the server runs in this process; the clients are sockets
    request = (f"GET {TOPOLOGY_PATH}&{WAIT_PARAM}={wait:g} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               "Connection: close\r\n\r\n").encode()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(request)
            socks.append(s)
        time.sleep(1.0)  # let the server take every request in
        threads_held = threading.active_count()
        answered, _, _ = select.select(socks, [], [], 0)
    finally:
        for s in socks:
            s.close()
    return {"held": count, "answered_early": len(answered), "threads_before": threads_before,
            "threads_while_held": threads_held}


def server_load(watchers: int, clients: int, seconds: float, processes: int, seed: int) -> dict[str, Any]:
    per_thread = max(1, watchers // clients)
    per_process = [clients // processes + (p < clients % processes) for p in range(processes)]
    with BootstrapServer() as server, ProcessPoolExecutor(processes) as pool:
        _register(server.port)
        assert server.is_ready
        begin = time.monotonic() + 1.0  # every client process is up by then
        runs = list(pool.map(_watchers_process, [server.port] * processes, per_process, [per_thread] * processes,
                             [begin] * processes, [seconds] * processes, [seed + p for p in range(processes)]))
        latencies = [x for lat, _, _ in runs for x in lat]
        errors = [e for _, errs, _ in runs for e in errs]
        late = [x for _, _, lates in runs for x in lates]
        advertised = _advertised_long_poll(server.port)
        held = None
        if advertised is not None:
            held = _held_long_polls(server.port, watchers, min(float(advertised), LONG_POLL_S))
    return {"watchers": per_thread * clients, "clients": clients, "seconds": seconds,
            "gets_per_s": len(latencies) / seconds, "errors": len(errors),
            "p50_ms": _quantile(latencies, 0.5) * 1e3, "p99_ms": _quantile(latencies, 0.99) * 1e3,
            "client_late_p50_ms": _quantile(late, 0.5) * 1e3, "client_late_p99_ms": _quantile(late, 0.99) * 1e3,
            "long_poll_advertised": advertised, "long_polls": held}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = simulate(args.trials, args.seed)
    load = server_load(args.watchers, args.clients, args.seconds, args.processes, args.seed)
    polling = results[DOWN_S[1]][POLLING].requests_per_s
    generated = None if polling is None else polling * load["watchers"]
    if args.json:
        print(json.dumps({"simulation": {f"{d:g}": {m: r.to_dict() for m, r in by.items()}
                                         for d, by in results.items()},
                          "server": {**load, "generated_gets_per_s": generated}}, indent=2))
        return 0
    for down in DOWN_S:
        print(describe_restart(RestartScenario(down_s=down, trials=args.trials, seed=args.seed)))
    print()
    print(markdown(results))
    print()
    print(f"our server, {load['watchers']:,} watchers polling ({load['clients']} client threads, fresh connection per "
          f"GET, {load['seconds']:g} s): {load['gets_per_s']:.0f} GET/s answered (they generate "
          f"{generated or float('nan'):.0f} GET/s at steady state), {load['errors']} errors, latency "
          f"p50 {load['p50_ms']:.2f} ms, p99 {load['p99_ms']:.2f} ms; the clients sent their GETs late by "
          f"p50 {load['client_late_p50_ms']:.1f} ms, p99 {load['client_late_p99_ms']:.1f} ms")
    held = load["long_polls"]
    if held is None:
        print(f"our server does not advertise long-polls yet (no {LONG_POLL_HEADER} header): "
              f"{load['watchers']:,} held long-polls not measured")
    else:
        print(f"our server, {held['held']:,} long-polls held (advertised {load['long_poll_advertised']} s): "
              f"threads {held['threads_before']} before, {held['threads_while_held']} while held, "
              f"{held['answered_early']} answered before the wait was over")
    return 0


if __name__ == "__main__":
    sys.exit(main())
