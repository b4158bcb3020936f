"""What every command shares: exit codes, bad input, the policy and probe options, hooks, logging."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import structlog

from coordinator import health, validate
from coordinator.argtypes import bind_port, count, host, positive
from coordinator.driver import Driver
from coordinator.instrumentation import Hook, SystemdNotifier, default_hooks
from coordinator.policy import RetryPolicy
from coordinator.snapshot import Snapshot

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 124, 130


class UsageError(Exception):
    """Bad input from the command line: exit 2 with this message."""


# -- logging (the CLI's choice, never the library's) -------------------------


class _StructuredFormatter(logging.Formatter):
    """Renders ``record.structlog`` (the library's event fields) with a structlog renderer."""

    def __init__(self, renderer: Callable[..., str | bytes]) -> None:
        super().__init__()
        self._renderer = renderer
        self._stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "structlog", None)
        event: dict[str, Any] = dict(fields) if fields else {"event": record.getMessage()}
        event["level"] = record.levelname.lower()
        event["logger"] = record.name
        stamped = self._stamp(None, record.levelname.lower(), event)
        text = self._renderer(None, record.levelname.lower(), stamped)
        return text.decode() if isinstance(text, bytes) else text


def configure_logging(fmt: str, level: str = "INFO", stream: Any = None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Callable[..., str | bytes]
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_StructuredFormatter(renderer))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # transitions narrates every callback at INFO; urllib3 every connection at DEBUG.
    logging.getLogger("transitions").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


# -- shared options ------------------------------------------------------------


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


def drive(args: argparse.Namespace, driver: Driver[Any]) -> Snapshot | None:
    """Run ``driver`` in the foreground, its probes served meanwhile; None after Ctrl-C stopped it."""
    probes = serve_probes(args, driver)
    try:
        return driver.run()
    except KeyboardInterrupt:
        driver.stop()
        return None
    finally:
        if probes is not None:
            probes.close()


def serve_probes(args: argparse.Namespace, driver: Driver[Any]) -> health.HealthServer | None:
    if args.health_port is None:
        return None
    try:
        return health.serve(driver, host=args.health_host, port=args.health_port)
    except OSError as exc:  # unresolvable, not this host's, in use
        raise UsageError(f"--health-host/--health-port: cannot listen on "
                         f"{args.health_host}:{args.health_port}: {exc.strerror or exc}") from None
