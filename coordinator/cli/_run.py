"""Running a driver in the foreground, its probes served meanwhile; how a command ends.

SIGTERM and SIGINT cancel the run (``driver.stop()``): the command logs it, prints the
final snapshot where it prints failures, and exits 128 + the signal's number (143, 130).
"""

from __future__ import annotations

import argparse
import logging
import signal
from dataclasses import dataclass
from types import FrameType
from typing import Any, Generic, TypeVar

from coordinator import health
from coordinator.cli._options import UsageError
from coordinator.driver import Driver
from coordinator.instrumentation._log import StdlibLogger
from coordinator.snapshot import Snapshot

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 124, 130
CANCELLING = (signal.SIGTERM, signal.SIGINT)
POLL_S = 0.05  # how soon a signal is acted on
# stop() cuts an attempt short at once; this bounds a driver that would not end anyway.
STOP_TIMEOUT_S = 5.0

_log = StdlibLogger(logging.getLogger("coordinator.cli"))
S = TypeVar("S", bound=Snapshot)


@dataclass(frozen=True)
class Run(Generic[S]):
    """How a foreground run ended: its final snapshot, and the signal that cancelled it."""

    snapshot: S
    signal: signal.Signals | None

    @property
    def cancelled_status(self) -> int | None:
        """128 + the signal's number, as a shell reports a process the signal ended."""
        return None if self.signal is None else 128 + self.signal


class _Handler:
    """Remembers the first SIGTERM or SIGINT; later ones change nothing (the cancel is under way).

    It only records: the main thread polls for it. Raising from the handler instead would
    interrupt ``Thread.join``, which on Python 3.11 then takes the driver thread for ended."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)


def drive(args: argparse.Namespace, driver: Driver[Any, S]) -> Run[S]:
    """Run ``driver`` to its end, its probes served meanwhile; SIGTERM or SIGINT cancels it."""
    probes = serve_probes(args, driver)
    try:
        handler = _Handler()
        previous = {sig: signal.signal(sig, handler) for sig in CANCELLING}
        try:
            # On a thread of its own: the main thread, where signal handlers run, only waits.
            driver.start()
            snapshot = driver.wait(POLL_S)
            while not snapshot.settled and handler.received is None:
                snapshot = driver.wait(POLL_S)
        finally:
            # From here a signal has its usual effect again: none is recorded and then missed.
            for sig, old in previous.items():
                signal.signal(sig, signal.SIG_DFL if old is None else old)  # None: not set from Python
        if handler.received is not None:
            snapshot = driver.stop(STOP_TIMEOUT_S)
            _log.info("cli.cancelled", signal=handler.received.name, kind=driver.kind, state=snapshot.state.value)
        return Run(snapshot, handler.received)
    finally:
        if probes is not None:
            probes.close()


def serve_probes(args: argparse.Namespace, driver: Driver[Any, Any]) -> health.HealthServer | None:
    if args.health_port is None:
        return None
    try:
        return health.serve(driver, host=args.health_host, port=args.health_port)
    except OSError as exc:  # unresolvable, not this host's, in use
        raise UsageError(f"--health-host/--health-port: cannot listen on "
                         f"{args.health_host}:{args.health_port}: {exc.strerror or exc}") from None
