"""Startup registration of SGLang prefill workers, as an explicit, observable state machine.

The public API is what this module names; everything else is private to the package.
"""

import importlib
from typing import TYPE_CHECKING

from coordinator.protocol import bootstrap_url
from coordinator.clock import Clock, FakeClock, SystemClock
from coordinator.driver import StartupFailed
from coordinator.outcome import Cause, Failure, Outcome
from coordinator.protocol import PayloadError, validate_payload
from coordinator.policy import Backoff, Lane, Reason, RetryPolicy
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


# Imported on first use: a prefill scheduler needs neither the decode side nor the server
# (http.server), and a decode scheduler needs no server.
_LAZY = {
    "BootstrapServer": "coordinator.server",
    "Discovery": "coordinator.discovery",
    "DiscoveryFailed": "coordinator.discovery",
    "PrefillInfo": "coordinator.protocol",
}

if TYPE_CHECKING:
    from coordinator.discovery import Discovery, DiscoveryFailed
    from coordinator.protocol import PrefillInfo
    from coordinator.server import BootstrapServer


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'coordinator' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
