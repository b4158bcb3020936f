"""The options several commands share (policy, probes, token), and bad input (exit 2)."""

from __future__ import annotations

import argparse
import dataclasses
import os

from coordinator import validate
from coordinator.cli._argtypes import bind_port, count, host, positive
from coordinator.instrumentation import Hook, SystemdNotifier, default_hooks
from coordinator.policy import RetryPolicy


class UsageError(Exception):
    """Bad input from the command line: exit 2 with this message."""


def token_from_env(var: str | None) -> str | None:
    if var is None:
        return None
    token = os.environ.get(var)
    if not token:
        raise UsageError(f"--token-env: environment variable {var} is not set or empty")
    try:
        return validate.token(token, f"--token-env: the value of {var}")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def policy_from(args: argparse.Namespace, base: RetryPolicy | None = None) -> RetryPolicy:
    deadline = None if args.no_deadline else args.deadline
    return dataclasses.replace(
        base or RetryPolicy(),
        max_attempts=args.max_attempts, deadline_s=deadline, attempt_timeout_s=args.attempt_timeout,
    )


def add_health_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--health-port", type=bind_port, metavar="P", help="serve the probes on P (0: any free port)")
    p.add_argument("--health-host", type=host, default="127.0.0.1", metavar="H",
                   help="probe bind address (default 127.0.0.1)")


def add_policy_args(p: argparse.ArgumentParser, *, deadline: float) -> None:
    p.add_argument("--deadline", type=positive, default=deadline, metavar="S",
                   help=f"total budget in seconds from the first attempt (default {deadline:g})")
    p.add_argument("--no-deadline", action="store_true", help="retry without a time budget")
    p.add_argument("--max-attempts", type=count, default=None, metavar="N",
                   help="give up after N attempts (default: unlimited, the deadline rules)")
    p.add_argument("--attempt-timeout", type=positive, default=5.0, metavar="S",
                   help="timeout of one attempt (default 5)")


def hooks() -> list[Hook]:
    """The default hooks, and sd_notify when systemd started us (``Type=notify`` units)."""
    notifier = SystemdNotifier.from_env()
    return [*default_hooks(), *([notifier] if notifier else [])]
