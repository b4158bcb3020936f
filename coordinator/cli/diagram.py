"""``prefill-startup diagram``: the state diagram, rendered from the ``states`` table (never drawn by hand)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from coordinator.cli._options import UsageError
from coordinator.cli._run import EXIT_FAILED, EXIT_OK
from states import TERMINAL, TRANSITIONS, State

DEFAULT_PATH = Path("diagrams") / "state_machine.md"


def render_mermaid() -> str:
    """A Markdown page holding a Mermaid ``stateDiagram-v2`` of every transition."""
    lines = [
        "# Startup state machine",
        "",
        "Generated from `states/_table.py` by `prefill-startup diagram`; do not edit by hand.",
        "",
        "```mermaid",
        "stateDiagram-v2",
        f"    [*] --> {State.INIT.value}",
    ]
    for t in TRANSITIONS:
        label = t.trigger.value + (f" [{t.guard}]" if t.guard else "")
        lines.append(f"    {t.source.value} --> {t.dest.value}: {label}")
    lines += [f"    {s.value} --> [*]" for s in State if s in TERMINAL]
    lines += ["```", ""]
    return "\n".join(lines)


def write(path: Path = DEFAULT_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_mermaid(), encoding="utf-8")
    return path



def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    dg = sub.add_parser("diagram", parents=[common], help="regenerate the state diagram from the states table")
    dg.add_argument("--output", default=str(DEFAULT_PATH), metavar="PATH")
    dg.add_argument("--check", action="store_true", help="exit 1 when PATH is stale")
    dg.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = Path(args.output)
    try:
        if args.check:
            current = path.read_text(encoding="utf-8") if path.exists() else ""
            if current != render_mermaid():
                print(f"{path} is stale: run 'prefill-startup diagram'", file=sys.stderr)
                return EXIT_FAILED
            return EXIT_OK
        print(write(path))
    except OSError as exc:  # a directory, not writable, not there
        raise UsageError(f"--output: cannot use {path}: {exc.strerror or exc}") from None
    return EXIT_OK
