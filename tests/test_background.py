"""Background mode: start/wait/stop on a daemon thread."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from coordinator import FakeClock, Registration, RetryPolicy, SystemClock
from coordinator.testing import Call, ScriptedTransport
from coordinator.transport import HttpTransport
from states import State

URL = "http://127.0.0.1:8998/route"


def test_start_returns_at_once_and_wait_gives_the_terminal_snapshot(payload: dict[str, Any]) -> None:
    gate = threading.Event()

    def gated(call: Call) -> int:
        gate.wait(10)
        return 200

    reg = Registration(URL, payload, clock=FakeClock(), transport=ScriptedTransport([gated]), name="rank7")
    assert reg.start() is reg
    assert reg.wait(timeout=0.05).state is State.REGISTERING  # still in flight: the current snapshot
    assert any(t.name == "prefill-startup-rank7" and t.daemon for t in threading.enumerate())
    gate.set()
    assert reg.wait(timeout=10).state is State.REGISTERED
    with pytest.raises(RuntimeError, match="already started"):
        reg.start()
    with pytest.raises(RuntimeError, match="background"):
        reg.run()


def test_listeners_get_each_snapshot_on_the_driver_thread(payload: dict[str, Any]) -> None:
    reg = Registration(URL, payload, clock=FakeClock(), transport=ScriptedTransport(["refused", "refused"], then=200))
    seen: list[tuple[str, int]] = []
    reg.add_listener(lambda s: seen.append((threading.current_thread().name, s.seq)))
    reg.start().wait(timeout=10)
    assert [seq for _, seq in seen] == list(range(1, len(seen) + 1))
    assert {name for name, _ in seen} == {"prefill-startup-registration"}


def test_stop_is_idempotent_and_keeps_a_terminal_state(payload: dict[str, Any]) -> None:
    reg = Registration(URL, payload, clock=FakeClock(), transport=ScriptedTransport([], then=200))
    reg.start().wait(timeout=10)
    assert reg.stop().state is State.REGISTERED
    assert reg.stop().state is State.REGISTERED


def test_stop_before_start_cancels_from_init(payload: dict[str, Any]) -> None:
    reg = Registration(URL, payload, clock=FakeClock(), transport=ScriptedTransport([], then=200))
    snap = reg.stop()
    assert (snap.state, snap.reason, snap.attempt) == (State.FAILED, "cancelled", 0)


def test_stop_cuts_an_attempt_in_flight_short(payload: dict[str, Any]) -> None:
    # A listener that never accepts: the kernel completes the handshake, nobody answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/route"
        transport = HttpTransport()
        reg = Registration(url, payload, clock=SystemClock(), policy=RetryPolicy(attempt_timeout_s=30.0),
                           on_exhausted="return", transport=transport)
        reg.start()
        clock = SystemClock()
        t_start = clock.now()
        while not transport.in_flight and clock.now() - t_start < 10:
            clock.sleep(0.01)  # wait until the PUT is on the wire
        t0 = clock.now()
        snap = reg.stop(timeout=10)
        latency = clock.now() - t0
    assert (snap.state, snap.reason, snap.attempt) == (State.FAILED, "cancelled", 1)
    assert latency < 2.0, latency  # far below the 30 s attempt timeout
