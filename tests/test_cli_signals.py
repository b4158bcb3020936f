"""The CLI under SIGTERM and SIGINT, as a process manager sends them: real subprocesses.

``register`` and ``wait`` cancel the run and exit 143 / 130 with the final snapshot;
``wait -- COMMAND`` becomes COMMAND (exec), so signals reach it and its end is wait's.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from coordinator import BootstrapServer, Registration
from coordinator.testing import example_payload, free_port

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = json.dumps(example_payload())
BOUND_S = 20.0  # every wait on a process or a line is bounded by this


class Proc:
    """A CLI subprocess whose stdout and stderr lines are read as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "coordinator.cli", "--log-format", "json", *args], cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
        )
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._new: queue.Queue[tuple[str, str]] = queue.Queue()
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self._readers = [threading.Thread(target=self._read, args=(name, stream), daemon=True)
                         for name, stream in (("stdout", self.popen.stdout), ("stderr", self.popen.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str, stream: IO[str]) -> None:
        for line in stream:
            self.lines[name].append(line)
            self._new.put((name, line))

    def wait_for(self, stream: str, needle: str) -> str:
        """The first line of ``stream`` holding ``needle``; fails after BOUND_S."""
        for line in self.lines[stream]:
            if needle in line:
                return line
        while True:
            name, line = self._new.get(timeout=BOUND_S)
            if name == stream and needle in line:
                return line

    def end(self) -> int:
        code = self.popen.wait(timeout=BOUND_S)
        for reader in self._readers:
            reader.join(BOUND_S)
        return code

    @property
    def out(self) -> str:
        return "".join(self.lines["stdout"])

    @property
    def err(self) -> str:
        return "".join(self.lines["stderr"])

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.end()
        for stream in (self.popen.stdout, self.popen.stderr):
            assert stream is not None
            stream.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.kill()


@pytest.fixture
def complete_prefill() -> Iterator[BootstrapServer]:
    with BootstrapServer() as server:
        for rank in range(2):
            Registration(server.url, example_payload(rank, 2), hooks=()).run()
        yield server


def last_json(text: str) -> dict[str, object]:
    final: dict[str, object] = json.loads(text.strip().splitlines()[-1])
    return final


COMMANDS = {
    "register": ["register", "--payload", PAYLOAD],
    "wait": ["wait"],
}


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("command", ["register", "wait"])
def test_a_signal_cancels_the_run(command: str, sig: signal.Signals, status: int, procs: list[Proc]) -> None:
    # Nothing listens on the port: the driver keeps retrying until the signal comes.
    proc = Proc(*COMMANDS[command], "--bootstrap", f"127.0.0.1:{free_port()}", "--name", "the-one")
    procs.append(proc)
    proc.wait_for("stderr", ".attempt_failed")
    proc.popen.send_signal(sig)
    assert proc.end() == status, proc.err
    assert "Traceback" not in proc.err
    cancelled = [json.loads(line) for line in proc.lines["stderr"] if '"cli.cancelled"' in line]
    assert [(e["signal"], e["state"], e["level"]) for e in cancelled] == [(sig.name, "FAILED", "info")]
    # The final snapshot where both commands print failures: stderr; stdout stays empty.
    final = last_json(proc.err)
    assert (final["state"], final["reason"], final["name"]) == ("FAILED", "cancelled", "the-one")
    assert proc.out == ""


# COMMAND: says who it is, then waits for a signal (bounded).
COMMAND = """
import os, signal, sys, time
marker = sys.argv[1]
if marker != "-":
    def on_term(signum, frame):
        open(marker, "w").write(signal.Signals(signum).name)
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
print("command-pid", os.getpid(), flush=True)
time.sleep(30)
sys.exit(3)
"""


def test_wait_becomes_command_whose_handler_gets_sigterm(complete_prefill: BootstrapServer, tmp_path: Path,
                                                         procs: list[Proc]) -> None:
    marker = tmp_path / "handled"
    proc = Proc("wait", "--bootstrap", f"127.0.0.1:{complete_prefill.port}", "--",
                sys.executable, "-c", COMMAND, str(marker))
    procs.append(proc)
    pid_line = proc.wait_for("stdout", "command-pid")
    assert int(pid_line.split()[1]) == proc.popen.pid  # exec: the same process, now COMMAND
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.end() == 0, proc.err  # COMMAND's status
    assert marker.read_text() == "SIGTERM"
    assert proc.out == pid_line  # COMMAND's stdout is its own: no PrefillInfo ahead of it
    assert "Traceback" not in proc.err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_command_killed_by_a_signal_ends_wait_the_same_way(sig: signal.Signals, complete_prefill: BootstrapServer,
                                                             procs: list[Proc]) -> None:
    # COMMAND keeps the default action: wait, being COMMAND, dies of the signal; a
    # shell reports that as 128 + N (143, 130), a Popen as -N.
    proc = Proc("wait", "--bootstrap", f"127.0.0.1:{complete_prefill.port}", "--",
                sys.executable, "-c", "import signal; signal.signal(signal.SIGINT, signal.SIG_DFL)\n" + COMMAND, "-")
    procs.append(proc)
    proc.wait_for("stdout", "command-pid")
    proc.popen.send_signal(sig)
    assert proc.end() == -sig
    assert "Traceback" not in proc.err


def test_a_shell_sees_128_plus_n(complete_prefill: BootstrapServer, tmp_path: Path) -> None:
    script = tmp_path / "command.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    cli = [sys.executable, "-m", "coordinator.cli", "wait", "--bootstrap", f"127.0.0.1:{complete_prefill.port}",
           "--", sys.executable, str(script)]
    r = subprocess.run(["sh", "-c", '"$@"; echo "status $?"', "sh", *cli], cwd=ROOT, capture_output=True, text=True,
                       timeout=BOUND_S)
    assert r.stdout.splitlines()[-1] == "status 143", r.stderr


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()


def datagrams(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


@pytest.mark.parametrize("notify_command", [False, True], ids=["default", "--notify-command"])
def test_notify_socket_reaches_command_only_when_asked(notify_command: bool, complete_prefill: BootstrapServer,
                                                       notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    flags = ["--notify-command"] if notify_command else []
    r = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "wait", "--bootstrap", f"127.0.0.1:{complete_prefill.port}",
         *flags, "--", sys.executable, "-c", "import os; print(os.environ.get('NOTIFY_SOCKET', '-'))"],
        cwd=ROOT, capture_output=True, text=True, timeout=BOUND_S, env={**os.environ, "NOTIFY_SOCKET": path},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == (path if notify_command else "-")
    sent = datagrams(sock)
    # wait reported its progress, and left READY=1 to COMMAND, the service.
    assert any(d.startswith("STATUS=") for d in sent)
    assert not any("READY=1" in d.splitlines() for d in sent)


def test_without_a_command_wait_itself_is_ready(complete_prefill: BootstrapServer,
                                                notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    r = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "wait", "--bootstrap", f"127.0.0.1:{complete_prefill.port}"],
        cwd=ROOT, capture_output=True, text=True, timeout=BOUND_S, env={**os.environ, "NOTIFY_SOCKET": path},
    )
    assert r.returncode == 0, r.stderr
    assert any("READY=1" in d.splitlines() for d in datagrams(sock))


@pytest.mark.parametrize("make,status", [("missing", 127), ("not-executable", 126)])
def test_a_command_that_cannot_run_gives_one_message(make: str, status: int, complete_prefill: BootstrapServer,
                                                     tmp_path: Path) -> None:
    command = tmp_path / "command"
    if make == "not-executable":
        command.write_text("#!/bin/sh\n")
    r = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "wait", "--bootstrap", f"127.0.0.1:{complete_prefill.port}",
         "--", str(command)], cwd=ROOT, capture_output=True, text=True, timeout=BOUND_S,
    )
    assert r.returncode == status
    messages = [line for line in r.stderr.splitlines() if line.startswith("prefill-startup wait:")]
    assert len(messages) == 1 and f"cannot run {str(command)!r}" in messages[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["register", "wait"])
def test_name_labels_the_status_lines(command: str, complete_prefill: BootstrapServer,
                                      notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    # register: a rank of the complete instance again (the server counts it once).
    args = ["register", "--payload", json.dumps(example_payload(1, 2))] if command == "register" else ["wait"]
    r = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *args, "--bootstrap", f"127.0.0.1:{complete_prefill.port}",
         "--name", "rank7"],
        cwd=ROOT, capture_output=True, text=True, timeout=BOUND_S, env={**os.environ, "NOTIFY_SOCKET": path},
    )
    assert r.returncode == 0, r.stderr
    status = [line for d in datagrams(sock) for line in d.splitlines() if line.startswith("STATUS=")]
    assert status and all(line.startswith("STATUS=rank7: ") for line in status), status
