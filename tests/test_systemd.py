"""sd_notify: the datagrams a systemd unit would get, on a real AF_UNIX socket the test binds."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

import pytest

from coordinator import BootstrapServer, FakeClock, Registration, RetryPolicy
from coordinator.cli import main
from coordinator.instrumentation import SystemdNotifier
from coordinator.testing import ScriptedTransport, example_payload
from states import State


def received(sock: socket.socket) -> list[dict[str, str]]:
    sock.setblocking(False)
    out: list[dict[str, str]] = []
    while True:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return out
        out.append(dict(line.split("=", 1) for line in data.decode().splitlines()))


def test_status_extend_and_ready(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    clock = FakeClock()
    reg = Registration("http://h:1/route", example_payload(), clock=clock, name="rank0",
                       policy=RetryPolicy(deadline_s=120), hooks=[SystemdNotifier(path)],
                       transport=ScriptedTransport(["refused", "refused", 200], clock=clock, latency=0.01))
    reg.run()
    messages = received(sock)
    assert [m["STATUS"].split(":", 1)[1].split(",")[0].strip() for m in messages] == [
        "REGISTERING", "BACKOFF", "REGISTERING", "BACKOFF", "REGISTERING", "REGISTERED after 3 attempt(s)"]
    assert messages[1]["STATUS"].startswith("rank0: BACKOFF, attempt 1, ConnectionRefusedError, next attempt in ")
    extensions = [int(m["EXTEND_TIMEOUT_USEC"]) for m in messages[:-1]]
    # What is left of the 120 s deadline, plus a margin: shrinking as time passes.
    assert extensions[0] == 130_000_000
    assert extensions == sorted(extensions, reverse=True) and extensions[-1] < extensions[0]
    elapsed = reg.snapshot().elapsed_s
    assert abs(extensions[-1] - (120 - elapsed + 10) * 1e6) < 0.1e6
    assert messages[-1].get("READY") == "1" and "EXTEND_TIMEOUT_USEC" not in messages[-1]


def test_failed_names_the_reason(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    reg = Registration("http://h:1/route", example_payload(), clock=FakeClock(), hooks=[SystemdNotifier(path)],
                       transport=ScriptedTransport([404]), on_exhausted="return")
    reg.run()
    last = received(sock)[-1]
    assert last["STATUS"] == "FAILED (permanent), attempt 1, HTTP 404" and "READY" not in last


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux's")
def test_abstract_socket() -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind("\0prefill-startup-test-notify")
        reg = Registration("http://h:1/route", example_payload(), clock=FakeClock(),
                           hooks=[SystemdNotifier("@prefill-startup-test-notify")], transport=ScriptedTransport([200]))
        reg.run()
        assert received(sock)[-1]["READY"] == "1"
    finally:
        sock.close()


def test_a_missing_socket_does_not_break_the_registration(tmp_path: Path) -> None:
    reg = Registration("http://h:1/route", example_payload(), clock=FakeClock(),
                       hooks=[SystemdNotifier(str(tmp_path / "gone"))], transport=ScriptedTransport(["refused", 200]))
    assert reg.run().state is State.REGISTERED


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert SystemdNotifier.from_env() is None
    with pytest.raises(ValueError, match="socket_path"):
        SystemdNotifier()
    monkeypatch.setenv("NOTIFY_SOCKET", "@x")
    notifier = SystemdNotifier.from_env()
    assert notifier is not None and notifier.socket_path == "@x"


def test_register_command_notifies_systemd(notify_socket: tuple[str, socket.socket],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        with BootstrapServer() as server:
            code = main(["register", "--bootstrap", f"127.0.0.1:{server.port}", "--payload",
                         '{"attn_tp_size": 1, "attn_tp_rank": 0, "attn_cp_size": 1, "attn_cp_rank": 0, '
                         '"attn_dp_size": 1, "attn_dp_rank": 0, "pp_size": 1, "pp_rank": 0, "system_dp_size": 1, '
                         '"system_dp_rank": 0, "rank_ip": "127.0.0.1", "rank_port": 17000, "page_size": 1, '
                         '"kv_cache_dtype": "auto"}'])
    finally:
        root.handlers[:], root.level = saved
    assert code == 0
    assert received(sock)[-1]["READY"] == "1"
