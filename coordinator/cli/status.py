"""``prefill-startup status``: the drivers an SGLang instance's processes published, from a shell."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from coordinator.cli._options import UsageError
from coordinator.cli._run import EXIT_FAILED, EXIT_OK
from coordinator.health._answer import answer
from coordinator.sglang._runtime import STATE_DIR_VAR
from coordinator.state import read_published


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    st = sub.add_parser("status", parents=[common],
                        help="what an SGLang instance's drivers published (the /startup probes, from a shell)",
                        epilog="exit 0 when every driver is ready (or none has published), 1 otherwise, "
                               "2 for a directory that is not there")
    st.add_argument("--state-dir", metavar="DIR", default=os.environ.get(STATE_DIR_VAR),
                    help=f"the instance's state directory (default ${STATE_DIR_VAR}; SGLang's log names it "
                         "in its prefill_startup.probes line)")
    st.add_argument("--json", action="store_true", help="the /status JSON instead of the /readyz?verbose text")
    st.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.state_dir:
        raise UsageError(f"--state-dir: none given and {STATE_DIR_VAR} is not set")
    directory = Path(args.state_dir)
    if not directory.is_dir():
        raise UsageError(f"--state-dir: {directory} is not a directory")
    drivers = read_published(directory)
    if not drivers:
        print("no driver has published yet: nothing to wait for")
        return EXIT_OK
    ready, _, _ = answer(drivers, "/readyz", "")
    if args.json:
        print(json.dumps(json.loads(answer(drivers, "/status", "")[2]), indent=2))
    else:
        print(answer(drivers, "/readyz", "verbose")[2].decode(), end="")
    return EXIT_OK if ready == 200 else EXIT_FAILED
