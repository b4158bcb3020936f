"""A testing kit for code that embeds this library: script outcomes, drive on a fake clock.

``FakeClock`` (virtual time), ``ScriptedTransport`` (outcomes from a list) and, for
tests on real sockets, ``FaultServer`` (byte-level faults) and ``TimingTransport``
(the real transport, each attempt timed). With pytest, the fixtures ``fake_clock`` and
``scripted_registration`` come from this package's plugin (registered automatically).
"""

from coordinator.clock import FakeClock
from coordinator.testing._examples import example_payload
from coordinator.testing._scripted import Call, ScriptedTransport, ScriptError, ScriptExhausted, Step, TimingTransport
from coordinator.testing.faultserver import FaultServer, free_port, http_request, ipv6_available

__all__ = ["Call", "FakeClock", "FaultServer", "ScriptError", "ScriptExhausted", "ScriptedTransport", "Step", "TimingTransport",
           "example_payload", "free_port", "http_request", "ipv6_available"]
