"""``prefill-startup register``: register one rank with a running bootstrap server."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from coordinator.protocol import bootstrap_url
from coordinator.cli._argtypes import host_port, host_port_text
from coordinator.cli._options import UsageError, add_health_args, add_policy_args, hooks, policy_from, token_from_env
from coordinator.cli._run import EXIT_FAILED, EXIT_OK, drive
from coordinator.registration import Registration
from states import State


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    reg = sub.add_parser("register", parents=[common], help="register one rank with a running bootstrap server")
    reg.add_argument("--bootstrap", type=host_port, required=True, metavar="HOST:PORT",
                     help="the serving host and bootstrap port ('[v6]:port' for IPv6)")
    reg.add_argument("--dist-init-addr", type=host_port_text, metavar="A",
                     help="multi-node: its host is the bootstrap host (as in SGLang)")
    src = reg.add_mutually_exclusive_group(required=True)
    src.add_argument("--payload", metavar="JSON", help="the PUT /route body")
    src.add_argument("--payload-file", metavar="F", help="a file holding the PUT /route body")
    add_health_args(reg)
    reg.add_argument("--token-env", metavar="VAR", help="send 'Authorization: Bearer $VAR'")
    add_policy_args(reg, deadline=120.0)
    reg.set_defaults(func=run)


def _load_payload(args: argparse.Namespace) -> Any:
    if args.payload_file is not None:
        try:
            text = Path(args.payload_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--payload-file: cannot read {args.payload_file}: {exc.strerror}") from None
        source = "--payload-file"
    else:
        text, source = args.payload, "--payload"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source} is not valid JSON: {exc}") from None


def run(args: argparse.Namespace) -> int:
    try:
        name, port = args.bootstrap
        url = bootstrap_url(name, port, args.dist_init_addr)
        registration = Registration(
            url,
            _load_payload(args),
            policy=policy_from(args),
            token=token_from_env(args.token_env),
            on_exhausted="return",
            hooks=hooks(),
        )
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    snapshot = drive(args, registration) or registration.snapshot()  # cancelled by Ctrl-C: FAILED
    print(json.dumps(snapshot.to_dict()))
    return EXIT_OK if snapshot.state is State.REGISTERED else EXIT_FAILED
