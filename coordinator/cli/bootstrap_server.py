"""``prefill-startup bootstrap-server``: an SGLang-compatible bootstrap server."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from coordinator.cli._argtypes import bind_port, host
from coordinator.cli._options import UsageError, token_from_env
from coordinator.cli._run import EXIT_OK
from coordinator.server import BootstrapServer


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    bs = sub.add_parser("bootstrap-server", parents=[common], help="run an SGLang-compatible bootstrap server")
    bs.add_argument("--host", type=host, default="127.0.0.1", metavar="H",
                    help="bind address (default 127.0.0.1; 0.0.0.0 or :: for every interface)")
    bs.add_argument("--port", type=bind_port, default=8998, metavar="P",
                    help="port, 0 for any free one (default 8998, as SGLang's)")
    bs.add_argument("--token-env", metavar="VAR", help="require 'Authorization: Bearer $VAR' on PUT")
    bs.set_defaults(func=run)


def _wait_for_signal() -> None:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.is_set():
        done.wait(1.0)


def run(args: argparse.Namespace) -> int:
    server = BootstrapServer(args.host, args.port, token=token_from_env(args.token_env))
    try:
        server.start()
    except OSError as exc:  # unresolvable, not this host's, in use
        raise UsageError(f"--host/--port: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    try:
        print(f"bootstrap server listening: PUT/GET {server.url}, GET {server.base_url}/health",
              flush=True)
        _wait_for_signal()
    finally:
        server.close()
    return EXIT_OK
