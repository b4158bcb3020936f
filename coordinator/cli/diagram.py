"""``prefill-startup diagram``: the state diagram, rendered from the ``states`` table (never drawn by hand)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import coordinator
from coordinator.cli._options import UsageError
from coordinator.cli._run import EXIT_FAILED, EXIT_OK
from states import SETTLED, TRANSITIONS, State

DEFAULT_PATH = Path("diagrams") / "state_machine.md"  # within the repository
_PROJECT_NAME = re.compile(r'^name\s*=\s*"prefill-startup"\s*$', re.MULTILINE)


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
    lines += [f"    {s.value} --> [*]" for s in State if s in SETTLED]
    lines += ["```", ""]
    return "\n".join(lines)


def default_path() -> Path | None:
    """The repository's ``diagrams/state_machine.md`` when this package runs from its
    repository (a clone, an editable install), else None: an installed copy has none."""
    for directory in Path(coordinator.__file__).resolve().parents:
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file():
            text = pyproject.read_text(encoding="utf-8", errors="replace")
            return directory / DEFAULT_PATH if _PROJECT_NAME.search(text) else None
    return None


def write(path: Path) -> Path:
    path.write_text(render_mermaid(), encoding="utf-8")
    return path


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    dg = sub.add_parser("diagram", parents=[common], help="regenerate the state diagram from the states table")
    dg.add_argument("--output", metavar="PATH",
                    help="the Markdown file to write (or --check); its directory must exist (default: "
                         "diagrams/state_machine.md of the prefill-startup repository this runs from; "
                         "required elsewhere)")
    dg.add_argument("--check", action="store_true", help="write nothing; exit 1 when PATH is missing or stale")
    dg.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.output is not None:
        path = Path(args.output)
    elif (found := default_path()) is not None:
        path = found
    else:
        raise UsageError("--output: required when not run from the prefill-startup repository")
    try:
        if args.check:
            if not path.exists():
                print(f"{path} is missing: run 'prefill-startup diagram'", file=sys.stderr)
                return EXIT_FAILED
            if path.read_text(encoding="utf-8") != render_mermaid():
                print(f"{path} is stale: run 'prefill-startup diagram'", file=sys.stderr)
                return EXIT_FAILED
            return EXIT_OK
        if not path.parent.is_dir():
            raise UsageError(f"--output: the directory {path.parent} does not exist")
        print(write(path))
    except OSError as exc:  # a directory, not writable
        raise UsageError(f"--output: cannot use {path}: {exc.strerror or exc}") from None
    return EXIT_OK
