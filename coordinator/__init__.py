"""Startup registration of SGLang prefill workers, as an explicit, observable state machine.

The public API is what this module names; everything else is private to the package.
"""

import importlib
import os
from typing import TYPE_CHECKING


def _check_states() -> None:
    # ``states`` is a generic name: a user's states.py earlier on sys.path (the current
    # directory, a script's own) would be imported instead, and fail far from the cause.
    import states

    shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "states")
    found = getattr(states, "__file__", None)
    if found is None or os.path.dirname(os.path.realpath(found)) != shipped:
        raise ImportError(
            f"'import states' found {found or 'a namespace package'}, not the 'states' package shipped "
            f"beside coordinator ({shipped}): a module or package of yours named 'states' shadows it "
            "(it comes first on sys.path, e.g. from the current directory). Rename yours.",
            name="states",
        )


_check_states()

__all__ = [
    "Backoff",
    "BootstrapServer",
    "Cause",
    "Clock",
    "Discovery",
    "DiscoveryFailed",
    "DiscoverySnapshot",
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


# Each imported on first use (after the check above: they import states): a prefill
# scheduler needs neither the decode side nor the server (http.server), and whoever
# imports a submodule alone (the pytest plugin, in every pytest run where the package is
# installed; the SGLang plugin, in every SGLang process) pays for nothing else.
_LAZY = {
    "Backoff": "coordinator.policy",
    "BootstrapServer": "coordinator.server",
    "Cause": "coordinator.outcome",
    "Clock": "coordinator.clock",
    "Discovery": "coordinator.discovery",
    "DiscoveryFailed": "coordinator.discovery",
    "DiscoverySnapshot": "coordinator.snapshot",
    "FakeClock": "coordinator.clock",
    "Failure": "coordinator.outcome",
    "Lane": "coordinator.policy",
    "Outcome": "coordinator.outcome",
    "PayloadError": "coordinator.protocol",
    "PrefillInfo": "coordinator.protocol",
    "Reason": "coordinator.outcome",
    "Registration": "coordinator.registration",
    "RegistrationFailed": "coordinator.registration",
    "RetryPolicy": "coordinator.policy",
    "Snapshot": "coordinator.snapshot",
    "StartupFailed": "coordinator.driver",
    "SystemClock": "coordinator.clock",
    "bootstrap_url": "coordinator.protocol",
    "validate_payload": "coordinator.protocol",
}

if TYPE_CHECKING:
    __version__: str
    from coordinator.clock import Clock, FakeClock, SystemClock
    from coordinator.discovery import Discovery, DiscoveryFailed
    from coordinator.driver import StartupFailed
    from coordinator.outcome import Cause, Failure, Outcome, Reason
    from coordinator.policy import Backoff, Lane, RetryPolicy
    from coordinator.protocol import PayloadError, PrefillInfo, bootstrap_url, validate_payload
    from coordinator.registration import Registration, RegistrationFailed
    from coordinator.server import BootstrapServer
    from coordinator.snapshot import DiscoverySnapshot, Snapshot


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prefill-startup")
    except PackageNotFoundError:  # run from a source tree, not installed
        return "0+unknown"


def __getattr__(name: str) -> object:
    if name == "__version__":  # importlib.metadata costs import time: only on demand
        return _version()
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'coordinator' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
