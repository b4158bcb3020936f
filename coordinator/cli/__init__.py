"""``prefill-startup``: one module per command; this one assembles them and runs one.

The only place that configures logging: stdlib handlers rendering the library's
structured events with structlog's console renderer (on a terminal) or as JSON.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import coordinator
from coordinator.cli import bootstrap_server, demo, diagram, register, simulate, status, wait
from coordinator.cli._logging import configure_logging
from coordinator.cli._options import UsageError, add_setting
from coordinator.cli._run import EXIT_INTERRUPTED, EXIT_USAGE
from coordinator.protocol import PayloadError
from coordinator.settings import SettingError

COMMANDS = (demo, register, wait, status, bootstrap_server, diagram, simulate)


def _add_log_args(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # Without defaults, a subcommand's copy leaves the global value alone unless given.
    keep: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    add_setting(parser, "log_format", metavar="FORMAT", **keep)
    add_setting(parser, "log_level", metavar="LEVEL", **keep)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; its defaults read the PREFILL_STARTUP_* variables (SettingError)."""
    parser = argparse.ArgumentParser(
        prog="prefill-startup",
        description="Startup of SGLang's prefill/decode disaggregation as an explicit state machine.",
        epilog="A flag wins over its PREFILL_STARTUP_* variable, the variable over the default.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {coordinator.__version__}")
    _add_log_args(parser, defaults=True)
    # Accepted after the command too (``prefill-startup demo --log-format json``).
    common = argparse.ArgumentParser(add_help=False)
    _add_log_args(common, defaults=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except SettingError as exc:
        print(f"prefill-startup: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is a command for "wait" to run, never our options;
    # None without "--", so that "wait --" (an empty COMMAND) is told apart from no COMMAND.
    command = argv[argv.index("--") + 1:] if "--" in argv else None
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if command and args.command != "wait":
        parser.error(f"'-- COMMAND' is for 'wait', not '{args.command}'")
    args.command_argv = command
    configure_logging(args.log_format, args.log_level)
    try:
        return int(args.func(args))
    except (UsageError, PayloadError) as exc:
        print(f"prefill-startup {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C outside a driver's run (demo, simulate): no traceback
        return EXIT_INTERRUPTED
