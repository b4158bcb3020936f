"""``prefill-startup wait``: the decode side, for init containers and launch scripts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from coordinator.cli._argtypes import bootstrap, count, kv_cache_dtype, target
from coordinator.cli._options import UsageError, add_health_args, add_policy_args, hooks, policy_from
from coordinator.cli._run import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_TIMEOUT, drive
from coordinator.discovery import DEFAULT_DEADLINE_S, Discovery
from coordinator.discovery import default_policy as discovery_policy
from states import State


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    wait = sub.add_parser("wait", parents=[common],
                          help="wait for a prefill instance to be complete (decode side, init containers)",
                          epilog="after '--', a COMMAND to run once the prefill instance is complete; "
                                 "exit 0, 1 (permanent failure), 2 (bad input), 124 (deadline), "
                                 "or COMMAND's status")
    wait.add_argument("--bootstrap", type=bootstrap, required=True, metavar="HOST:PORT",
                      help="the prefill instance's bootstrap server ('[v6]:port' for IPv6, or a URL)")
    wait.add_argument("--target", type=target, action="append", metavar="DP,CP,TP,PP",
                      help="a prefill rank whose address to resolve (repeatable)")
    wait.add_argument("--expect-page-size", type=count, metavar="N", help="fail at once if the prefill's differs")
    wait.add_argument("--expect-kv-cache-dtype", type=kv_cache_dtype, metavar="D",
                      help="fail at once if the prefill's differs")
    add_health_args(wait)
    add_policy_args(wait, deadline=DEFAULT_DEADLINE_S)
    wait.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    expect: dict[str, Any] = {}
    if args.expect_page_size is not None:
        expect["page_size"] = args.expect_page_size
    if args.expect_kv_cache_dtype is not None:
        expect["kv_cache_dtype"] = args.expect_kv_cache_dtype
    try:
        discovery = Discovery(
            args.bootstrap,
            policy=policy_from(args, discovery_policy()),
            targets=args.target,
            expect=expect,
            on_exhausted="return",
            hooks=hooks(),
        )
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    snapshot = drive(args, discovery)
    if snapshot is None:
        return EXIT_INTERRUPTED
    if snapshot.state is not State.REGISTERED or snapshot.info is None:
        print(json.dumps(snapshot.to_dict()), file=sys.stderr)
        return EXIT_TIMEOUT if snapshot.reason in ("deadline", "exhausted") else EXIT_FAILED
    info = json.dumps(snapshot.info.to_dict())
    print(info, flush=True)
    if not args.command_argv:
        return EXIT_OK
    try:  # the launcher's job is done: the command's status is ours
        return subprocess.run(args.command_argv, env={**os.environ, "PREFILL_STARTUP_INFO": info}).returncode
    except OSError as exc:
        print(f"prefill-startup wait: cannot run {args.command_argv[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
