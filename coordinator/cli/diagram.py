"""``prefill-startup diagram``: the state diagram, generated from the states table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from coordinator import diagram
from coordinator.cli._common import EXIT_FAILED, EXIT_OK, UsageError


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    dg = sub.add_parser("diagram", parents=[common], help="regenerate the state diagram from the states table")
    dg.add_argument("--output", default=str(diagram.DEFAULT_PATH), metavar="PATH")
    dg.add_argument("--check", action="store_true", help="exit 1 when PATH is stale")
    dg.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = Path(args.output)
    try:
        if args.check:
            current = path.read_text(encoding="utf-8") if path.exists() else ""
            if current != diagram.render_mermaid():
                print(f"{path} is stale: run 'prefill-startup diagram'", file=sys.stderr)
                return EXIT_FAILED
            return EXIT_OK
        print(diagram.write(path))
    except OSError as exc:  # a directory, not writable, not there
        raise UsageError(f"--output: cannot use {path}: {exc.strerror or exc}") from None
    return EXIT_OK
