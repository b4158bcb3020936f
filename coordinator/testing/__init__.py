"""A testing kit for code that embeds this library: script outcomes, drive on a fake clock.

``FakeClock`` (virtual time), ``ScriptedTransport`` (outcomes from a list) and, for
tests on real sockets, ``FaultServer`` (byte-level faults) and ``TimingTransport``
(the real transport, each attempt timed). With pytest, the fixtures ``fake_clock`` and
``scripted_registration`` come from this package's plugin (registered automatically).
"""

import importlib
from typing import TYPE_CHECKING

# Imported on first use: pytest loads this package's plugin in every run where it is installed.
_LAZY = {
    "FakeClock": "coordinator.clock",
    "example_payload": "coordinator.protocol",
    **{name: "coordinator.testing._scripted"
       for name in ("Call", "ScriptedTransport", "ScriptError", "ScriptExhausted", "Step", "TimingTransport")},
    **{name: "coordinator.testing.faultserver"
       for name in ("FaultServer", "free_port", "http_request", "ipv6_available")},
}

if TYPE_CHECKING:
    from coordinator.clock import FakeClock
    from coordinator.protocol import example_payload
    from coordinator.testing._scripted import (
        Call,
        ScriptedTransport,
        ScriptError,
        ScriptExhausted,
        Step,
        TimingTransport,
    )
    from coordinator.testing.faultserver import FaultServer, free_port, http_request, ipv6_available

__all__ = ["Call", "FakeClock", "FaultServer", "ScriptError", "ScriptExhausted", "ScriptedTransport", "Step",
           "TimingTransport", "example_payload", "free_port", "http_request", "ipv6_available"]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'coordinator.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
