"""``prefill-startup status``: what an SGLang instance's main process knows of its drivers, from
a shell on the host (asked over the instance's channel, as its probes would answer)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from coordinator.cli._argtypes import pid
from coordinator.cli._options import UsageError
from coordinator.cli._run import EXIT_FAILED, EXIT_OK
from coordinator.health._answer import answer
from coordinator.health._probe import Expected
from coordinator.instance import BadMessage, Member, channels, owner, query


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    st = sub.add_parser("status", parents=[common],
                        help="what an SGLang instance's processes published (the /startup probes, from a shell)",
                        epilog="exit 0 when the instance is ready, 1 when it is not (or does not answer), "
                               "2 when no instance is found, or several without --instance")
    st.add_argument("--instance", metavar="PID", type=pid,
                    help="the instance's main process (needed when several run on the host; SGLang's log "
                         "names it in its prefill_startup.probes line)")
    st.add_argument("--json", action="store_true", help="the /status JSON instead of the /readyz?verbose text")
    st.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = channels()
    if args.instance is not None:
        names = [n for n in names if owner(n) == args.instance]
        if not names:
            raise UsageError(f"--instance: process {args.instance} runs no SGLang instance with this plugin "
                             "(as this user, on this host)")
    if not names:
        raise UsageError("no SGLang instance with this plugin runs on this host (as this user)")
    if len(names) > 1:
        pids = ", ".join(str(owner(n)) for n in names)
        raise UsageError(f"--instance: {len(names)} instances run on this host (main processes {pids}): name one")
    try:
        report = query(names[0])
    except (OSError, BadMessage) as exc:
        print(f"prefill-startup status: the instance of process {owner(names[0])} did not answer: {exc}",
              file=sys.stderr)
        return EXIT_FAILED
    drivers = [Member(p, n, snapshot, True) for n, (p, snapshot) in enumerate(report.members)]
    expected = None if report.expected_ranks is None else Expected(report.expected_ranks, report.where)
    if not drivers and expected is None:
        print("no driver has published yet: nothing to wait for")
        return EXIT_OK
    ready, _, _ = answer(drivers, "/readyz", "", expected=expected)
    if args.json:
        print(json.dumps(json.loads(answer(drivers, "/status", "", expected=expected)[2]), indent=2))
    else:
        print(answer(drivers, "/readyz", "verbose", expected=expected)[2].decode(), end="")
    if report.truncated:
        print(f"(the first {len(drivers)} drivers only: the answer was cut to fit one datagram)", file=sys.stderr)
    return EXIT_OK if ready == 200 else EXIT_FAILED
