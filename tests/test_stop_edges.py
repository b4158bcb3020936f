"""stop() is immediate in every case, and a background run's test failure ends the driver."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from coordinator import Registration, RetryPolicy, Snapshot
from coordinator.outcome import Failure, Reason
from coordinator.testing import ScriptedTransport, ScriptExhausted, example_payload
from coordinator.transport import HttpTransport
from states import State


@pytest.fixture
def stalled_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: a new connect() hangs in the handshake."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers: list[socket.socket] = []
    port = listener.getsockname()[1]
    try:
        for _ in range(8):  # the kernel admits backlog + 1; the rest wait in SYN_SENT
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            with pytest.raises(OSError):
                probe.connect(("127.0.0.1", port))
        finally:
            probe.close()
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_stop_during_a_stalled_connect_is_immediate(stalled_port: int) -> None:
    policy = RetryPolicy(attempt_timeout_s=5.0, deadline_s=30.0)
    reg = Registration(f"http://127.0.0.1:{stalled_port}/route", example_payload(), policy=policy,
                       on_exhausted="return", hooks=())
    reg.start()
    time.sleep(0.3)  # a real connect is in its handshake
    assert reg.state is State.REGISTERING
    began = time.monotonic()
    snap = reg.stop(timeout=5.0)
    took = time.monotonic() - began
    assert (snap.state, snap.reason) == (State.FAILED, Reason.CANCELLED)
    assert took < 0.5, f"stop() took {took:.2f} s of a 5 s attempt"


def test_an_abort_before_the_attempt_is_armed_is_not_lost() -> None:
    transport = HttpTransport()
    transport.abort()  # lands before the attempt begins
    began = time.monotonic()
    outcome = transport.attempt("http://127.0.0.1:9/route", b"{}", 5.0)
    assert outcome.failure is Failure.CANCELLED
    assert time.monotonic() - began < 0.5
    transport.close()


def test_stop_from_a_listener_ends_the_run_without_a_listener_error(caplog: pytest.LogCaptureFixture) -> None:
    reg = Registration("http://bootstrap.test:8998/route", example_payload(),
                       transport=ScriptedTransport([], then="refused"), on_exhausted="return", hooks=())

    def stop_on_backoff(s: Snapshot) -> None:
        if s.state is State.BACKOFF:
            reg.stop()

    reg.add_listener(stop_on_backoff)
    reg.start()
    snap = reg.wait(10)
    assert (snap.state, snap.reason) == (State.FAILED, Reason.CANCELLED)
    assert "listener_error" not in caplog.text


def test_an_assertion_in_a_background_run_ends_it_failed_and_reaches_wait() -> None:
    reg = Registration("http://bootstrap.test:8998/route", example_payload(),
                       transport=ScriptedTransport(["refused"]), on_exhausted="return", hooks=(),
                       policy=RetryPolicy(refused=None, deadline_s=None))
    done = threading.Event()

    def on_change(s: Snapshot) -> None:
        if s.settled:
            done.set()

    reg.add_listener(on_change)
    reg.start()
    assert done.wait(10)
    snap = reg.snapshot()
    assert (snap.state, snap.reason) == (State.FAILED, Reason.INTERNAL)
    assert snap.last_error is not None and snap.last_error.type == "ScriptExhausted"
    with pytest.raises(ScriptExhausted):
        reg.wait(10)


def test_attempt_timeout_is_bounded_at_construction() -> None:
    with pytest.raises(ValueError, match="attempt_timeout_s"):
        RetryPolicy(attempt_timeout_s=1e10, deadline_s=None)


@pytest.mark.parametrize("name", ["a\nreadyz check passed", "x" * 129, "", " padded", "tab\there"])
def test_driver_names_are_printable_and_bounded(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        Registration("http://bootstrap.test:8998/route", example_payload(), name=name,
                     transport=ScriptedTransport([200]))


def test_zoned_ipv6_hosts_are_rejected_at_validation() -> None:
    with pytest.raises(ValueError, match="zoned"):
        Registration("http://[fe80::1%25eth0]:8998/route", example_payload())
