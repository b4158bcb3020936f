"""Performance figures of the coordinator (prints them; not a test).

(a) time to REGISTERED against a loopback bootstrap server that is already up, vs a
    bare ``requests.put`` of the same payload (upstream's call), interleaved, one run;
(b) microseconds per state transition, driving Registrations with an instant transport;
(c) import time of ``coordinator`` (fresh interpreters);
(d) wall time of the simulator for 10,000 ranks in the default scenario.

Run: PYTHONPATH=. python scripts/bench.py [--reps N] [--sim-ranks N] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import requests

from coordinator import BootstrapServer, FakeClock, Registration, RetryPolicy
from coordinator.outcome import Cause, Failure, Outcome
from coordinator.payload import example_payload
from coordinator.sim import Scenario, draw_trials, simulate
from coordinator.testing import ScriptedTransport
from states import State

_REFUSED = Outcome.of_failure(Failure.REFUSED, Cause("ConnectionRefusedError", "refused"))
_OK = Outcome.of_status(200, "OK")


def _timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def bench_loopback(reps: int) -> dict[str, float]:
    """Median seconds to REGISTERED (fresh Registration each time) vs a bare requests.put."""
    payload = example_payload()

    def ours() -> None:
        snap = Registration(server.url, payload).run()
        assert snap.state is State.REGISTERED

    def bare() -> None:
        # Upstream's call: a new Session, hence a new connection, every time.
        assert requests.put(server.url, json=payload, timeout=5).status_code == 200

    with BootstrapServer() as server:
        for _ in range(20):  # warm both paths: imports, first-connection costs
            ours()
            bare()
        ours_s, bare_s = [], []
        for _ in range(reps):  # interleaved, so drift in the machine's load hits both alike
            ours_s.append(_timed(ours))
            bare_s.append(_timed(bare))
    o, b = statistics.median(ours_s), statistics.median(bare_s)
    return {"registration_ms": o * 1e3, "requests_put_ms": b * 1e3, "ratio": o / b}


def bench_transitions(registrations: int, refusals: int = 9) -> dict[str, float]:
    """Construction, and driving (per transition), of Registrations on a FakeClock."""
    payload, policy = example_payload(), RetryPolicy()
    regs: list[tuple[Registration, FakeClock]] = []
    began = time.perf_counter()
    for _ in range(registrations):
        clock = FakeClock()
        reg = Registration("http://127.0.0.1:8998/route", payload, policy=policy, clock=clock,
                           transport=ScriptedTransport([_REFUSED] * refusals, then=_OK), hooks=())
        regs.append((reg, clock))
    built = time.perf_counter() - began
    transitions = 0
    began = time.perf_counter()
    for reg, clock in regs:
        while not (snap := reg.poll()).terminal:
            if snap.state is State.BACKOFF and snap.next_attempt_at is not None:
                clock.set(snap.next_attempt_at)
        transitions += snap.seq  # one published snapshot per transition
    driven = time.perf_counter() - began
    return {
        "construct_us": built / registrations * 1e6,
        "transition_us": driven / transitions * 1e6,
        "transitions": transitions,
    }


def _import_us(python: str) -> float:
    """``coordinator``'s cumulative import time (µs) in a fresh interpreter, from -X importtime."""
    run = subprocess.run([python, "-X", "importtime", "-c", "import coordinator"],
                         capture_output=True, text=True, check=True)
    for line in run.stderr.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] == "coordinator":
            return float(parts[1])
    raise RuntimeError("coordinator not found in -X importtime output")


def bench_import(runs: int) -> dict[str, float]:
    cumulative = [_import_us(sys.executable) for _ in range(runs)]
    whole = [_timed(lambda: subprocess.run([sys.executable, "-c", "import coordinator"], check=True))
             for _ in range(runs)]
    bare = [_timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True)) for _ in range(runs)]
    return {
        "import_ms": statistics.median(cumulative) / 1e3,
        "interpreter_with_import_ms": statistics.median(whole) * 1e3,
        "bare_interpreter_ms": statistics.median(bare) * 1e3,
    }


def bench_simulator(ranks: int) -> dict[str, Any]:
    scenario = Scenario()
    up_at = draw_trials(scenario, ranks=1, trials=1, seed=0)[0].up_at
    out: dict[str, Any] = {"ranks": ranks, "server_up_at_s": up_at}
    for name, policy in (("ours", RetryPolicy()), ("upstream", RetryPolicy.sglang_pr25125())):
        # CPU time too: on a shared machine, wall time also counts other processes' turns.
        cpu = time.process_time()
        r = simulate(scenario, policy, ranks=ranks, trials=1, seed=0, name=name)
        cpu = time.process_time() - cpu
        attempts = (r.refused_per_rank + r.handled_per_rank + r.timeouts_per_rank) * ranks
        out[name] = {"wall_s": r.wall_s, "cpu_s": cpu, "attempts": round(attempts),
                     "cpu_us_per_attempt": cpu / attempts * 1e6}
    return out


def _table(f: dict[str, Any]) -> str:
    lo, tr, im, si = f["loopback"], f["transitions"], f["import"], f["simulator"]
    rows = [
        ("(a) time to REGISTERED, loopback (median)", f"{lo['registration_ms']:.3f} ms"),
        ("(a) bare requests.put (median)", f"{lo['requests_put_ms']:.3f} ms"),
        ("(a) ratio registration / requests.put", f"{lo['ratio']:.2f}x"),
        ("(b) Registration construction", f"{tr['construct_us']:.0f} us"),
        ("(b) per transition (driver + machine + policy)", f"{tr['transition_us']:.1f} us"),
        ("(c) import coordinator (-X importtime, median)", f"{im['import_ms']:.1f} ms"),
        ("(c) python -c 'import coordinator' / bare python", f"{im['interpreter_with_import_ms']:.0f} / "
                                                             f"{im['bare_interpreter_ms']:.0f} ms"),
    ]
    for name in ("ours", "upstream"):
        s = si[name]
        rows.append((f"(d) simulate {si['ranks']} ranks, R={si['server_up_at_s']:.1f} s, {name}",
                     f"{s['wall_s']:.2f} s wall, {s['cpu_s']:.2f} s CPU "
                     f"({s['attempts']} attempts, {s['cpu_us_per_attempt']:.0f} us CPU each)"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=500, help="loopback repetitions (default 500)")
    parser.add_argument("--registrations", type=int, default=2000, help="for (b) (default 2000)")
    parser.add_argument("--import-runs", type=int, default=7, help="for (c) (default 7)")
    parser.add_argument("--sim-ranks", type=int, default=10_000, help="for (d) (default 10000)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = {
        "loopback": bench_loopback(args.reps),
        "transitions": bench_transitions(args.registrations),
        "import": bench_import(args.import_runs),
        "simulator": bench_simulator(args.sim_ranks),
    }
    print(json.dumps(figures, indent=2) if args.json else _table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
