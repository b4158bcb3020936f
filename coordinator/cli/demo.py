"""``prefill-startup demo``: a prefill group racing a late bootstrap server, and a decode side waiting."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import requests

from coordinator import health
from coordinator.cli._argtypes import non_negative, positive, ranks
from coordinator.cli._run import EXIT_FAILED, EXIT_OK
from coordinator.clock import SystemClock
from coordinator.discovery import Discovery
from coordinator.discovery import default_policy as discovery_policy
from coordinator.policy import RetryPolicy
from coordinator.protocol import bootstrap_url, example_payload
from coordinator.registration import Registration
from coordinator.server import BootstrapServer
from coordinator.server._ports import free_port
from coordinator.sim import MAX_RANKS
from coordinator.snapshot import Snapshot
from states import State


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    demo = sub.add_parser("demo", parents=[common], help="a prefill group racing a late bootstrap server")
    demo.add_argument("--ranks", type=ranks, default=4, help=f"prefill ranks (default 4, at most {MAX_RANKS})")
    demo.add_argument("--server-delay", type=non_negative, default=3.0, metavar="S",
                      help="seconds before the bootstrap server listens (default 3)")
    demo.add_argument("--deadline", type=positive, default=30.0, metavar="S",
                      help="each rank's registration budget (default 30)")
    demo.set_defaults(func=run)


def _progress(elapsed: float, snaps: Sequence[Snapshot], now: float) -> str:
    if len(snaps) <= 8:
        cells = []
        for i, s in enumerate(snaps):
            wait = s.seconds_to_next_attempt(now)
            cell = f"rank{i} {s.state.value:<11} #{s.attempt:<3}"
            cells.append(cell + (f" next {wait:4.2f}s" if wait is not None else " " * 11))
        return f"{elapsed:6.2f}s  " + " | ".join(cells)
    counts = {st.value: sum(s.state is st for s in snaps) for st in State}
    return f"{elapsed:6.2f}s  " + "  ".join(f"{k}={v}" for k, v in counts.items() if v)


def run(args: argparse.Namespace) -> int:
    clock = SystemClock()
    port = free_port()
    url = bootstrap_url("127.0.0.1", port)
    registrations = [
        Registration(url, example_payload(rank, args.ranks), name=f"rank{rank}",
                     policy=RetryPolicy(deadline_s=args.deadline), on_exhausted="return")
        for rank in range(args.ranks)
    ]
    print(f"demo: {args.ranks} prefill ranks register with {url}; "
          f"the bootstrap server starts listening after {args.server_delay:g} s", flush=True)
    # The decode side of the same instance: waits until every rank is registered.
    decode = Discovery(f"127.0.0.1:{port}", name="decode0", targets=[(0, 0, rank, 0) for rank in range(args.ranks)],
                       policy=dataclasses.replace(discovery_policy(), deadline_s=args.deadline), on_exhausted="return")
    probes = health.serve([*registrations, decode])
    print(f"demo: probes on {probes.url}/livez /readyz /startupz /status", flush=True)
    server: BootstrapServer | None = None
    t0 = clock.now()
    listen_at = t0
    try:
        for r in registrations:
            r.start()
        decode.start()
        while True:
            now = clock.now()
            if server is None and now - t0 >= args.server_delay:
                server = BootstrapServer("127.0.0.1", port).start()
                # One time for every line of the iteration, read once the server listens:
                # the timeline never runs backwards.
                now = listen_at = clock.now()
                print(f"{now - t0:6.2f}s  bootstrap server listening on {server.url}", flush=True)
            snaps = [r.snapshot() for r in registrations]
            print(_progress(now - t0, snaps, now), flush=True)
            if all(s.settled for s in snaps) and decode.snapshot().settled:
                break
            clock.sleep(0.25)
        return _demo_summary(registrations, decode, probes, t0, listen_at)
    finally:
        decode.stop()
        for r in registrations:
            r.stop()
        probes.close()
        if server is not None:
            server.close()


def _demo_summary(registrations: Sequence[Registration], decode: Discovery,
                  probes: health.HealthServer, t0: float, listen_at: float) -> int:
    print("\nrank    state        attempts  registered_at_s  lag_after_listen_s  reason")
    for i, r in enumerate(registrations):
        s = r.snapshot()
        done = s.state is State.REGISTERED
        at = f"{s.state_since - t0:15.3f}" if done else f"{'-':>15}"
        lag = f"{s.state_since - listen_at:18.3f}" if done else f"{'-':>18}"
        print(f"rank{i:<3} {s.state.value:<12} {s.attempt:8d}  {at}  {lag}  {s.reason}")
    with requests.Session() as http:
        http.trust_env = False
        readyz = http.get(f"{probes.url}/readyz", timeout=5)
        print(f"\nprobe: GET /readyz -> {readyz.status_code}")
        print("probe: GET /readyz?verbose ->\n  " + http.get(f"{probes.url}/readyz?verbose", timeout=5).text
              .strip().replace("\n", "\n  "))
        metrics = http.get(f"{probes.url}/metrics", timeout=5)
        attempts = [line for line in metrics.text.splitlines() if line.startswith("prefill_startup_attempts_total")]
        print(f"probe: GET /metrics -> {metrics.status_code}"
              + ("".join(f"\n  {line}" for line in attempts) if attempts else f" ({metrics.text.strip()})"))
    d = decode.snapshot()
    last = max((r.snapshot().state_since for r in registrations), default=t0)
    print(f"decode: Discovery {d.state.value} after {d.attempt} lookups, "
          f"{d.state_since - last:.3f} s after the last rank registered")
    if d.info is not None:
        print(f"decode: {json.dumps(d.info.to_dict())}")
    ok = all(r.state is State.REGISTERED for r in registrations) and d.state is State.REGISTERED
    print("demo: every rank REGISTERED, and the decode side found them" if ok
          else "demo: some ranks did NOT register")
    return EXIT_OK if ok else EXIT_FAILED
