"""Running a driver in the foreground, its probes served meanwhile; how a command ends."""

from __future__ import annotations

import argparse
from typing import Any

from coordinator import health
from coordinator.cli._options import UsageError
from coordinator.driver import Driver
from coordinator.snapshot import Snapshot

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 124, 130


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
