"""``prefill-startup wait``: the decode side, for init containers and launch scripts.

With ``-- COMMAND``, ``wait`` becomes COMMAND once the prefill instance is complete
(``execvpe``, as wait-for-it does): same process, so every signal reaches COMMAND and
its status is the status. Until then, SIGTERM and SIGINT cancel the wait (143, 130).
COMMAND's stdout is its own: the PrefillInfo reaches it in ``PREFILL_STARTUP_INFO``,
never as a line ahead of its output.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from coordinator.cli._argtypes import bootstrap, count, kv_cache_dtype, target
from coordinator.cli._options import (
    UsageError,
    add_health_args,
    add_name_arg,
    add_policy_args,
    hooks,
    policy_from,
)
from coordinator.cli._run import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, drive
from coordinator.discovery import DEFAULT_DEADLINE_S, Discovery
from coordinator.discovery import default_policy as discovery_policy
from states import State

# What COMMAND must start with: Python ignores SIGPIPE and SIGXFSZ, and exec keeps an ignored signal ignored.
_DEFAULT_DISPOSITIONS = (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    wait = sub.add_parser("wait", parents=[common],
                          help="wait for a prefill instance to be complete (decode side, init containers)",
                          epilog="after '--', a COMMAND that wait becomes (exec) once the prefill instance is "
                                 "complete, with PREFILL_STARTUP_INFO (the JSON) in its environment and "
                                 "nothing of wait's on its stdout; "
                                 "exit 0, 1 (permanent failure), 2 (bad input, an empty COMMAND too), 124 (deadline), "
                                 "143/130 (SIGTERM/SIGINT while waiting), 127/126 (COMMAND not found / "
                                 "cannot run), or COMMAND's status")
    wait.add_argument("--bootstrap", type=bootstrap, required=True, metavar="HOST:PORT",
                      help="the prefill instance's bootstrap server ('[v6]:port' for IPv6, or a URL)")
    wait.add_argument("--target", type=target, action="append", metavar="DP,CP,TP,PP",
                      help="a prefill rank whose address to resolve (repeatable)")
    wait.add_argument("--expect-page-size", type=count, metavar="N", help="fail at once if the prefill's differs")
    wait.add_argument("--expect-kv-cache-dtype", type=kv_cache_dtype, metavar="D",
                      help="fail at once if the prefill's differs")
    add_name_arg(wait, default="the bootstrap address")
    wait.add_argument("--notify-command", action="store_true",
                      help="pass NOTIFY_SOCKET on to COMMAND, which then sends READY=1 itself; by default "
                           "COMMAND does not get it, and wait never sends READY=1 when a COMMAND follows")
    add_health_args(wait)
    add_policy_args(wait, deadline=DEFAULT_DEADLINE_S)
    wait.set_defaults(func=run)
    # argparse cannot show what follows '--' (main() splits it off): say it.
    wait.usage = wait.format_usage().removeprefix("usage: ").rstrip() + " [-- COMMAND ...]"


def run(args: argparse.Namespace) -> int:
    if args.command_argv is not None:
        _check_command(args.command_argv)
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
            # With a COMMAND to follow, that command is the service: it is ready, not us.
            hooks=hooks(ready=not args.command_argv),
            name=args.name,
        )
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    ended = drive(args, discovery)
    snapshot = ended.snapshot
    if ended.cancelled_status is not None or snapshot.state is not State.REGISTERED or snapshot.info is None:
        print(json.dumps(snapshot.report(snapshot.taken_at)), file=sys.stderr)  # stdout holds only the PrefillInfo
        if ended.cancelled_status is not None:
            return ended.cancelled_status
        return EXIT_TIMEOUT if snapshot.reason in ("deadline", "exhausted") else EXIT_FAILED
    info = json.dumps(snapshot.info.to_dict())
    if args.command_argv is None:
        print(info)
        return EXIT_OK
    # Not printed: COMMAND's stdout is COMMAND's (a line of ours ahead of it would corrupt
    # output that is parsed), as wait-for-it keeps out of it. COMMAND has the info in its
    # environment, and the completion is logged on stderr (discovery.registered).
    return _become(args.command_argv, info, notify=args.notify_command)


def _check_command(argv: list[str]) -> None:
    """Refuse, before any wait, a COMMAND no exec could run whatever the file system holds.
    Not found and not executable are known only at the exec (127, 126, as a shell)."""
    if not argv:
        raise UsageError("'--' must be followed by a COMMAND")
    if not argv[0]:
        raise UsageError("COMMAND is empty ('' names no program)")
    if any("\0" in arg for arg in argv):
        raise UsageError(f"COMMAND {argv[0]!r}: an argument holds a NUL byte, which no exec can pass")


def _become(argv: list[str], info: str, *, notify: bool) -> int:
    """exec COMMAND; return only when that fails: 127 not found, 126 cannot run."""
    env = {**os.environ, "PREFILL_STARTUP_INFO": info}
    if not notify:
        env.pop("NOTIFY_SOCKET", None)
    sys.stderr.flush()
    # From here a signal has its default effect: it ends wait, as it would end COMMAND.
    previous = {sig: signal.signal(sig, signal.SIG_DFL) for sig in _DEFAULT_DISPOSITIONS}
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)  # None: not set from Python
        print(f"prefill-startup wait: cannot run {argv[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
