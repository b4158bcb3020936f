"""``prefill-startup simulate``: the fleet simulator's command line (see :mod:`coordinator.sim`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from coordinator.cli._argtypes import CORES, count, latency, ranks, seed, span, trials, workers
from coordinator.cli._run import EXIT_OK, EXIT_USAGE
from coordinator.sim import (
    DEFAULT_RANKS,
    DEFAULT_TRIALS,
    MAX_LATENCY_S,
    MAX_RANK_RUNS,
    MAX_RANKS,
    MAX_SPAN_S,
    MAX_TRIALS,
    RestartScenario,
    Scenario,
    check_counts,
    compare,
    compare_decode,
    compare_restart,
    describe,
    describe_restart,
    format_decode_table,
    format_restart_table,
    format_table,
    write_plot,
)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("simulate", parents=[common],
                            help="simulate a fleet: ours vs upstream on the same draws")
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options, on ``parser``."""
    up_to = f"at most {MAX_SPAN_S:g}"
    parser.add_argument("--ranks", type=ranks, default=DEFAULT_RANKS, metavar="N",
                        help=f"ranks per trial, at most {MAX_RANKS} (default {DEFAULT_RANKS})")
    parser.add_argument("--trials", type=trials, default=DEFAULT_TRIALS, metavar="T",
                        help=f"trials, each with its own R; figures aggregate them; at most {MAX_TRIALS}, and "
                             f"ranks x trials at most {MAX_RANK_RUNS} (default {DEFAULT_TRIALS}; the time grows "
                             "with ranks x trials: the defaults take 15-30 s on 2 cores)")
    parser.add_argument("--seed", type=seed, default=0, help="same seed, same figures (default 0)")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--late-start", type=span, nargs=2, metavar=("MIN", "MAX"), default=(0.0, 60.0),
                      help=f"the server listens at R ~ U[MIN, MAX] s, one R per trial; {up_to} (default 0 60)")
    when.add_argument("--server-up-at", type=span, metavar="S", help=f"the server listens at exactly S s; {up_to}")
    parser.add_argument("--unavailable", type=span, default=0.0, metavar="S",
                        help=f"then answers 503 for S s; {up_to} (default 0)")
    parser.add_argument("--hang", type=span, default=0.0, metavar="S",
                        help=f"after R, accepts but never answers for S s (before any 503 phase); {up_to} (default 0)")
    parser.add_argument("--capacity", type=count, metavar="K",
                        help="answers at most K requests per second; beyond, 503")
    parser.add_argument("--start-window", type=span, default=0.05, metavar="S",
                        help=f"ranks start uniformly within S s; {up_to} (default 0.05)")
    parser.add_argument("--latency", type=latency, default=0.001, metavar="S",
                        help=f"duration of a refused or answered attempt; at most {MAX_LATENCY_S:g} (default 0.001)")
    parser.add_argument("--decode", action="store_true",
                        help="the decode side: decode ranks wait for the prefill group to be complete")
    parser.add_argument("--decode-ranks", type=ranks, default=64, metavar="D",
                        help=f"with --decode: decode ranks per trial, at most {MAX_RANKS}, and decode ranks x "
                             f"trials at most {MAX_RANK_RUNS} (default 64); --ranks is the prefill group")
    parser.add_argument("--workers", type=workers, default=CORES, metavar="N",
                        help=f"worker processes, at most one per core ({CORES}; default: as many); "
                             "the figures do not depend on it")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG (needs prefill-startup[plot])")
    parser.add_argument("--restart", type=span, metavar="D",
                        help="instead: the prefill instance restarts and is down D s under a watching decode "
                             "instance; ours (polling, long-poll) vs upstream's heartbeat, with --trials, --seed, "
                             "--latency, --json (1000 trials for a p99 worth reading)")


def scenario_from(args: argparse.Namespace) -> Scenario:
    late = (args.server_up_at, args.server_up_at) if args.server_up_at is not None else tuple(args.late_start)
    return Scenario(
        late_start=late,
        unavailable_s=args.unavailable,
        hang_s=args.hang,
        capacity=args.capacity,
        start_window_s=args.start_window,
        latency_s=args.latency,
    )


def run(args: argparse.Namespace) -> int:
    """Compare ours and upstream; print the table (or JSON); optionally write the PNG."""
    if args.restart is not None:
        try:
            if args.decode or args.plot:
                raise ValueError("--restart takes neither --decode nor --plot")
            restart = RestartScenario(down_s=args.restart, trials=args.trials, seed=args.seed, latency_s=args.latency)
        except (TypeError, ValueError) as exc:
            print(f"simulate: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        found = compare_restart(restart)
        if args.json:
            print(json.dumps({"scenario": restart.to_dict(),
                              "results": {name: r.to_dict() for name, r in found.items()}}, indent=2))
        else:
            print(describe_restart(restart))
            print(format_restart_table(found))
        return EXIT_OK
    try:
        scenario = scenario_from(args)
        check_counts(args.ranks, args.trials, ("--ranks", "--trials"))
        if args.decode:
            check_counts(args.decode_ranks, args.trials, ("--decode-ranks", "--trials"))
    except (TypeError, ValueError) as exc:
        print(f"simulate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.plot:
        try:  # before the simulation: a missing extra should not cost its run time
            import matplotlib  # noqa: F401
        except ImportError:
            print("simulate: --plot needs matplotlib: pip install 'prefill-startup[plot]'", file=sys.stderr)
            return EXIT_USAGE
    if args.decode:
        decode = compare_decode(scenario, prefill_ranks=args.ranks, decode_ranks=args.decode_ranks, seed=args.seed,
                                trials=args.trials, workers=args.workers)
        if args.json:
            print(json.dumps({"scenario": scenario.to_dict(), "prefill_ranks": args.ranks,
                              "decode_ranks": args.decode_ranks, "trials": args.trials, "seed": args.seed,
                              "results": {name: r.to_dict() for name, r in decode.items()}}, indent=2))
        else:
            print(f"decode side: {args.decode_ranks} decode ranks wait for a prefill group of "
                  + describe(scenario, args.ranks, args.trials, args.seed))
            print(format_decode_table(decode))
        return EXIT_OK
    results = compare(scenario, ranks=args.ranks, seed=args.seed, trials=args.trials, workers=args.workers)
    if args.json:
        print(json.dumps({
            "scenario": scenario.to_dict(),
            "ranks": args.ranks,
            "trials": args.trials,
            "seed": args.seed,
            "results": {name: r.to_dict() for name, r in results.items()},
        }, indent=2))
    else:
        print(describe(scenario, args.ranks, args.trials, args.seed))
        print(format_table(results))
    if args.plot:
        write_plot(results, scenario, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return EXIT_OK
