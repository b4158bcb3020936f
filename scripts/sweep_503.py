"""The 503 storm against the late-start lag: a sweep of refused-lane paces (prints a table).

Each candidate policy runs on the simulator's identical draws in two scenarios: a late
start (R ~ U[0, 60] s), where p99 lag after R must stay <= 0.5 s with every rank
registered, and the same followed by 10 s of 503s, where the peak of answers per
100 ms should be <= 1/4 of upstream's. Candidates run in worker processes.

Run: .venv/bin/python scripts/sweep_503.py [--ranks 512] [--trials 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

from coordinator import Backoff, RetryPolicy
from coordinator.sim import Scenario, simulate
from coordinator.sim.upstream import sglang_pr25125

# The refused lane: (initial s, cap s, its jitter, spread_first). The previous default first.
CANDIDATES: tuple[tuple[float, float, float, bool], ...] = (
    (0.1, 0.5, 0.5, False),
    (0.1, 0.5, 0.3, False),
    (0.25, 0.5, 0.5, False),
    (0.5, 0.5, 0.5, False),
    (0.5, 0.5, 0.1, True),
    (0.5, 0.5, 0.05, True),
    (0.5, 0.5, 0.0, True),
    (0.48, 0.48, 0.0, True),
)


def _policy(initial: float, cap: float, jitter: float, spread_first: bool) -> RetryPolicy:
    return replace(RetryPolicy(), refused=Backoff(initial, cap, jitter=jitter, spread_first=spread_first))


def _run(job: tuple[str, tuple[float, float, float, bool] | None, int, int]) -> dict[str, Any]:
    scenario_name, candidate, ranks, trials = job
    scenario = Scenario(unavailable_s=10.0) if scenario_name == "503" else Scenario()
    policy = sglang_pr25125() if candidate is None else _policy(*candidate)
    r = simulate(scenario, policy, ranks=ranks, trials=trials, seed=0)
    return {"scenario": scenario_name, "candidate": candidate, "success": r.success_rate,
            "p99": r.lag_p99_s, "peak": r.peak_handled_per_100ms, "handled": r.handled_per_rank}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=512)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    jobs = [("503", None, args.ranks, args.trials)]
    jobs += [(s, c, args.ranks, args.trials) for c in CANDIDATES for s in ("late", "503")]
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(_run, jobs))
    upstream_peak = results[0]["peak"]
    rows = []
    for c in CANDIDATES:
        late = next(r for r in results if r["candidate"] == c and r["scenario"] == "late")
        storm = next(r for r in results if r["candidate"] == c and r["scenario"] == "503")
        spread = ", spread_first=True" if c[3] else ""
        rows.append({"refused": f"Backoff({c[0]:g}, {c[1]:g}, jitter={c[2]:g}{spread})", "jitter": c[2],
                     "late_success": late["success"], "late_p99_s": late["p99"], "storm_peak": storm["peak"],
                     "ratio": storm["peak"] / upstream_peak, "storm_p99_s": storm["p99"],
                     "both": late["success"] == 1.0 and (late["p99"] or 9) <= 0.5
                     and storm["peak"] <= upstream_peak / 4})
    if args.json:
        print(json.dumps({"upstream_peak": upstream_peak, "rows": rows}, indent=2))
        return 0
    print(f"{args.ranks} ranks x {args.trials} trials, seed 0; upstream peak {upstream_peak} per 100 ms "
          f"(target <= {upstream_peak / 4:g})")
    print("| refused lane | late start: registered | late start: p99 lag | 503 storm: peak / 100 ms "
          "| ratio to upstream | 503 storm: p99 lag after ready | both targets |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['refused']} | {r['late_success']:.1%} | {r['late_p99_s']:.3f} s | "
              f"{r['storm_peak']} | {r['ratio']:.2f}x | {r['storm_p99_s']:.2f} s | {'yes' if r['both'] else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
