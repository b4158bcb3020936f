"""The options several commands share (policy, probes, token, the PREFILL_STARTUP_*
settings), and bad input (exit 2)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from coordinator import settings, validate
from coordinator.cli._argtypes import argtype, name
from coordinator.instrumentation import Hook, SystemdNotifier, default_hooks
from coordinator.policy import RetryPolicy

SETTINGS = {s.field: s for s in settings.TABLE}


class UsageError(Exception):
    """Bad input from the command line: exit 2 with this message."""


def add_setting(p: argparse.ArgumentParser, field: str, *, default: Any = settings.UNSET, **kwargs: Any) -> None:
    """The flag of the setting ``field``: the flag wins over its variable, the variable over
    ``default`` (the table's unless given; ``argparse.SUPPRESS`` for a copy of a global flag)."""
    setting = SETTINGS[field]
    assert setting.flag is not None, f"{setting.var} has no flag"
    if default is settings.UNSET:
        default = setting.default
    if default is not argparse.SUPPRESS:
        default = settings.read(fields=(field,)).get(field, default)  # its own variable only
    p.add_argument(setting.flag, type=argtype(setting.parse, field.removesuffix("_s")), default=default,
                   help=f"{setting.help}; env {setting.var}", **kwargs)


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
    return settings.over(base or RetryPolicy(), {
        "deadline_s": None if args.no_deadline else args.deadline,
        "attempt_timeout_s": args.attempt_timeout, "max_attempts": args.max_attempts,
    })


def add_health_args(p: argparse.ArgumentParser) -> None:
    add_setting(p, "health_port", metavar="P")
    add_setting(p, "health_host", metavar="H")


def add_policy_args(p: argparse.ArgumentParser, *, deadline: float) -> None:
    add_setting(p, "deadline_s", default=deadline, metavar="S")
    p.add_argument("--no-deadline", action="store_true", help="retry without a time budget (as --deadline none)")
    add_setting(p, "max_attempts", metavar="N")
    add_setting(p, "attempt_timeout_s", metavar="S")


def add_name_arg(p: argparse.ArgumentParser, *, default: str) -> None:
    p.add_argument("--name", type=name, metavar="NAME",
                   help=f"label in logs, metrics, probes and sd_notify STATUS lines (default: {default})")


class _StatusOnly(SystemdNotifier):
    """sd_notify without READY=1: the COMMAND that ``wait`` runs next is the service."""

    def notify(self, message: str) -> None:
        super().notify("\n".join(line for line in message.split("\n") if line != "READY=1"))


def hooks(*, ready: bool = True) -> list[Hook]:
    """The default hooks, and sd_notify when systemd started us (``Type=notify`` units);
    without ``ready``, STATUS and EXTEND_TIMEOUT_USEC only."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return default_hooks()
    return [*default_hooks(), SystemdNotifier() if ready else _StatusOnly()]
