"""``prefill-startup register``: register one rank with a running bootstrap server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from coordinator.cli._argtypes import host_port, host_port_text
from coordinator.cli._options import (
    UsageError,
    add_health_args,
    add_name_arg,
    add_policy_args,
    hooks,
    policy_from,
    token_from_env,
)
from coordinator.cli._run import EXIT_FAILED, EXIT_OK, drive
from coordinator.policy import REGISTER_DEADLINE_S
from coordinator.protocol import bootstrap_url
from coordinator.registration import Registration
from states import State


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    reg = sub.add_parser("register", parents=[common], help="register one rank with a running bootstrap server",
                         epilog="exit 0 (registered), 1 (failed), 2 (bad input), 143/130 (SIGTERM/SIGINT); "
                                "the final snapshot as JSON on stdout")
    reg.add_argument("--bootstrap", type=host_port, required=True, metavar="HOST:PORT",
                     help="the serving host and bootstrap port ('[v6]:port' for IPv6)")
    reg.add_argument("--dist-init-addr", type=host_port_text, metavar="A",
                     help="multi-node: its host is the bootstrap host (as in SGLang)")
    src = reg.add_mutually_exclusive_group(required=True)
    src.add_argument("--payload", metavar="JSON", help="the PUT /route body, a JSON object")
    src.add_argument("--payload-file", metavar="F", help="a file holding the PUT /route body (UTF-8 JSON)")
    add_name_arg(reg, default="none")
    add_health_args(reg)
    reg.add_argument("--token-env", metavar="VAR", help="send 'Authorization: Bearer $VAR'")
    add_policy_args(reg, deadline=REGISTER_DEADLINE_S)
    reg.set_defaults(func=run)


def _load_payload(args: argparse.Namespace) -> Any:
    if args.payload_file is not None:
        source = "--payload-file"
        try:
            # utf-8-sig: a BOM (as some editors write) is no reason to refuse the file.
            text = Path(args.payload_file).read_bytes().decode("utf-8-sig")
        except OSError as exc:
            raise UsageError(f"{source}: cannot read {args.payload_file}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise UsageError(f"{source}: {args.payload_file} must be UTF-8 JSON "
                             f"({exc.reason} at byte {exc.start})") from None
    else:
        text, source = args.payload, "--payload"
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source} is not valid JSON: {exc}") from None
    except RecursionError:
        raise UsageError(f"{source}: JSON nested too deeply") from None
    if not isinstance(payload, dict):
        raise UsageError(f"{source}: must be a JSON object, got {type(payload).__name__}")
    return payload


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
            name=args.name,
        )
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    ended = drive(args, registration)
    # The final snapshot: on stdout when registered; where wait puts its failures (stderr) otherwise.
    registered = ended.snapshot.state is State.REGISTERED
    print(json.dumps(ended.snapshot.report(ended.snapshot.taken_at)), file=sys.stdout if registered else sys.stderr)
    if ended.cancelled_status is not None:
        return ended.cancelled_status
    return EXIT_OK if ended.snapshot.state is State.REGISTERED else EXIT_FAILED
