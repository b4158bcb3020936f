"""Startup registration of SGLang prefill workers, as an explicit, observable state machine.

The public API is what this module names; everything else is private to the package.
"""

from coordinator.address import bootstrap_url
from coordinator.clock import Clock, FakeClock, SystemClock
from coordinator.discovery import Discovery, DiscoveryFailed
from coordinator.driver import StartupFailed
from coordinator.outcome import Cause, Failure, Outcome
from coordinator.payload import PayloadError, validate_payload
from coordinator.policy import Backoff, Lane, Reason, RetryPolicy
from coordinator.prefill_info import PrefillInfo
from coordinator.registration import Registration, RegistrationFailed
from coordinator.snapshot import Snapshot

__all__ = [
    "Backoff",
    "BootstrapServer",
    "Cause",
    "Clock",
    "Discovery",
    "DiscoveryFailed",
    "FakeClock",
    "Failure",
    "Lane",
    "Outcome",
    "PayloadError",
    "PrefillInfo",
    "Reason",
    "Registration",
    "RegistrationFailed",
    "RetryPolicy",
    "Snapshot",
    "StartupFailed",
    "SystemClock",
    "bootstrap_url",
    "validate_payload",
]


def __getattr__(name: str) -> object:
    # The server pulls in http.server; a scheduler that only registers need not pay for it.
    if name == "BootstrapServer":
        from coordinator.server import BootstrapServer

        return BootstrapServer
    raise AttributeError(f"module 'coordinator' has no attribute {name!r}")
