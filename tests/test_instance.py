"""An instance's channel: datagrams from its processes to the main process's board.

Real: AF_UNIX datagram sockets in the abstract namespace, SO_PASSCRED, child processes
(python -c) that send; the board's liveness through pidfds. Nothing here touches a file.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from coordinator import FakeClock, Registration, health
from coordinator.health._probe import Expected
from coordinator.instance import CHANNEL_VAR, Board, channels, join, query
from coordinator.instance._channel import Receiver, Sender
from coordinator.instance._wire import MAX_DATAGRAM, BadMessage, decode, encode
from coordinator.testing import ScriptedTransport, example_payload
from states import State

URL = "http://10.0.0.5:8998/route"


def registered(name: str = "rank0", script: list[Any] | None = None) -> Registration:
    reg = Registration(URL, example_payload(), name=name, clock=FakeClock(), hooks=(),
                       transport=ScriptedTransport(script or [200]), on_exhausted="return")
    reg.run()
    return reg


def until(check: Any, what: str) -> None:
    """Wait (10 s at most) for another process and the receiver's thread: real I/O, its own pace."""
    pause = threading.Event()
    for _ in range(2000):
        if check():
            return
        pause.wait(0.005)
    raise AssertionError(f"never: {what}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(Board())
    yield r
    r.close()
    r.board.close()


# -- the wire: every field checked -------------------------------------------

def test_a_snapshot_crosses_the_wire_whole() -> None:
    snap = registered().snapshot()
    message = decode(encode(7, snap))
    assert message.driver == 7
    assert message.snapshot == snap
    assert decode(encode(7, None)).snapshot is None  # a retirement


DEEP = b"[" * (MAX_DATAGRAM - 10)


@pytest.mark.parametrize("data", [
    b"", b"[]", b"null", b"1", b"\xff\xfe", b'"text"', DEEP, b"{" * (MAX_DATAGRAM + 1),
    b'{"format":2,"driver":1}', b'{"format":1}', b'{"format":1,"driver":-1}', b'{"format":1,"driver":1e999}',
    b'{"format":1,"driver":1000000000000000000000000000000}', b'{"format":1,"driver":true}',
    b'{"format":1,"driver":1,"snapshot":[]}', b'{"format":1,"driver":1,"snapshot":1}',
])
def test_anything_else_is_a_bad_message_never_an_exception_from_deeper(data: bytes) -> None:
    with pytest.raises(BadMessage):
        decode(data)


@pytest.mark.parametrize("field,value", [
    ("state", "HAPPY"), ("state", []), ("attempt", 10**30), ("attempt", -1), ("attempt", 1.5), ("attempt", "1"),
    ("taken_at", float("nan")), ("taken_at", "now"), ("state_since", None), ("last_status", 99),
    ("last_status", 700), ("url", "x" * 5000), ("url", 5), ("name", ["a"]), ("kind", "both"),
    ("reason", "because"), ("last_error", "boom"), ("last_error", {"type": "X"}), ("invalidations", None),
    ("max_attempts", {}), ("deadline_s", float("inf")),
])
def test_each_field_is_checked(field: str, value: Any) -> None:
    body = json.loads(encode(1, registered().snapshot()))
    body["snapshot"][field] = value
    with pytest.raises(BadMessage, match=field):
        decode(json.dumps(body).encode())


# -- the board ---------------------------------------------------------------

def test_the_board_keeps_the_latest_and_forgets_the_retired() -> None:
    board = Board()
    first = registered().snapshot()
    later = first.__class__(**{**first.__dict__, "seq": first.seq + 1, "attempt": 9})
    board.put(os.getpid(), 1, later)
    board.put(os.getpid(), 1, first)  # reordered: older than held, ignored
    [member] = board.members()
    assert member.snapshot().attempt == 9
    board.put(os.getpid(), 1, None)
    assert board.members() == []
    board.close()


def test_a_member_whose_process_exited_reads_failed_gone_never_healthy() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    board = Board()
    board.put(child.pid, 1, registered().snapshot())
    assert board.members()[0].snapshot().state is State.REGISTERED  # pinned by pidfd: alive until reaped
    child.wait()
    snap = board.members()[0].snapshot()
    assert (snap.state, snap.reason and snap.reason.value) == (State.FAILED, "gone")
    assert f"process {child.pid} exited; its last state was REGISTERED" in str(snap.last_error)
    board.close()


def test_the_board_is_bounded() -> None:
    from coordinator.instance._board import MAX_PER_PROCESS, Full

    board = Board()
    snap = registered().snapshot()
    for n in range(MAX_PER_PROCESS):
        board.put(os.getpid(), n, snap)
    with pytest.raises(Full):
        board.put(os.getpid(), MAX_PER_PROCESS, snap)
    board.close()


# -- the channel, across processes -----------------------------------------

SEND = """
import sys
from coordinator import FakeClock, Registration
from coordinator.instance import join
from coordinator.testing import ScriptedTransport, example_payload
joined = join(__import__("os").environ)
assert not joined.main, "a descendant of the main process sends"
reg = Registration("http://10.0.0.5:8998/route", example_payload(), name=sys.argv[1], clock=FakeClock(), hooks=(),
                   transport=ScriptedTransport(["refused", 200]), on_exhausted="return")
joined.publish.attach(reg)
reg.run()
if sys.argv[2] == "retire":
    joined.publish.attach(reg)()
sys.stdin.read()  # stay alive until told
"""


def child(name: str, env: dict[str, str], then: str = "stay") -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", SEND, name, then], env=env, stdin=subprocess.PIPE, text=True)


def test_a_child_process_publishes_to_the_main_process_and_its_death_reads_as_gone() -> None:
    env = dict(os.environ)
    joined = join(env)
    assert joined.main and joined.board is not None and joined.receiver is not None
    assert env[CHANNEL_VAR] == joined.receiver.name
    board = joined.board
    proc = child("rank0", env)
    try:
        until(lambda: any(m.snapshot().state is State.REGISTERED for m in board.members()), "rank0 REGISTERED")
        [member] = board.members()
        assert (member.pid, member.snapshot().name, member.snapshot().attempt) == (proc.pid, "rank0", 2)
        status, _, body = health._answer.answer(board.members(), "/readyz", "", expected=Expected(1))
        assert status == 200
    finally:
        proc.communicate("")
    until(lambda: board.members()[0].snapshot().state is State.FAILED, "gone")
    joined.close()


def test_a_retired_driver_leaves_the_board(receiver: Receiver) -> None:
    env = {**os.environ, CHANNEL_VAR: receiver.name}
    proc = child("rank0", env, then="retire")
    try:
        until(lambda: len(receiver.board.members()) == 1 and receiver.board.members()[0].snapshot().settled,
              "registered")
        # The second attach() numbered the driver anew and retired that number: the first stays.
        assert receiver.board.members()[0].snapshot().name == "rank0"
    finally:
        proc.communicate("")


def test_a_process_not_of_the_instance_is_not_heard() -> None:
    # The main process is a child of this one; the sender its sibling, not its descendant.
    main = subprocess.Popen([sys.executable, "-c", MAIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert main.stdout is not None
    name = main.stdout.readline().strip()
    # join() would make the sibling a main process of its own: it sends by hand.
    subprocess.run([sys.executable, "-c", INTRUDER, name], check=True)
    out, _ = main.communicate("report\n")
    report = json.loads(out)
    assert report["members"] == 0
    assert report["log"] == ["prefill_startup.datagram_ignored reason=not of this instance count=1"]


INTRUDER = """
import sys
from coordinator.instance._channel import Sender
from tests.test_instance import registered
Sender(sys.argv[1]).send(1, registered("intruder").snapshot())
"""
MAIN = """
import json, logging, sys
from coordinator.instance._board import Board
from coordinator.instance._channel import Receiver
lines = []
class Keep(logging.Handler):
    def emit(self, record): lines.append(record.getMessage().split(":")[0])
logging.getLogger("coordinator.instance").addHandler(Keep())
r = Receiver(Board())
print(r.name, flush=True)
sys.stdin.readline()
r.close()
print(json.dumps({"members": len(r.board.members()), "log": lines}))
"""


def test_a_flood_of_bad_datagrams_is_bounded_in_log_lines(receiver: Receiver,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "coordinator.instance"):
        sender = Sender(receiver.name)
        for _ in range(500):
            sender._sock.sendto(b"[]", "\0" + receiver.name)
        sender.send(1, registered().snapshot())  # a good one after them still counts
        until(lambda: len(receiver.board.members()) == 1, "the good one")
        sender.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "reason=BadMessage count=1" in lines[0]


def test_a_sender_that_cannot_publish_logs_once_and_is_not_ready(caplog: pytest.LogCaptureFixture) -> None:
    sender = Sender("prefill-startup/1/999")  # nobody is bound there
    with caplog.at_level(logging.ERROR, "coordinator.instance"):
        reg = registered()
        sender.attach(reg)
        sender.send(1, reg.snapshot())
    assert sender.errors == 2
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("prefill_startup.publish_failed channel=prefill-startup/1/999")
    sender.close()
    # What the main process sees of it: nothing, so readiness waits for that rank.
    status, _, body = health._answer.answer([], "/readyz", "", expected=Expected(1))
    assert (status, json.loads(body)["waiting"]) == (503, "waiting for 1 of 1 ranks on this node")


def test_nothing_is_left_behind_when_the_main_process_closes() -> None:
    env: dict[str, str] = {}
    joined = join(env)
    name = env[CHANNEL_VAR]
    assert name in channels()
    joined.close()
    assert name not in channels()


def test_a_variable_naming_no_ancestor_makes_this_process_main() -> None:
    env = {CHANNEL_VAR: "prefill-startup/1/1"}  # pid 1 is no parent of ours in the sense kept here
    joined = join(env)
    try:
        assert joined.main and env[CHANNEL_VAR] != "prefill-startup/1/1"
    finally:
        joined.close()


def test_status_query_answers_what_the_probes_read(receiver: Receiver) -> None:
    receiver.board.expect(Expected(2))
    receiver.board.put(os.getpid(), 1, registered("rank0").snapshot())
    report = query(receiver.name)
    assert report.expected_ranks == 2
    assert [s.name for _, s in report.members] == ["rank0"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
def test_another_user_is_not_heard_even_from_a_descendant(receiver: Receiver,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    data = encode(1, registered("intruder").snapshot())
    with caplog.at_level(logging.WARNING, "coordinator.instance"):
        pid = os.fork()  # nobody can run this interpreter (it lives under /root): no exec
        if pid == 0:
            try:
                os.setuid(65534)
                Sender(receiver.name)._sock.sendto(data, "\0" + receiver.name)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        until(lambda: bool(caplog.records), "the complaint")
    assert receiver.board.members() == []
    assert "reason=another user count=1" in caplog.records[0].getMessage()


def test_the_probes_read_no_file_on_the_event_loop(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_asgi import call

    child_proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        receiver.board.put(child_proc.pid, 1, registered().snapshot())
        receiver.board.expect(Expected(2))
        app = health.asgi(receiver.board.members, expected=receiver.board.expected)

        def no_files(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"a file read on the event loop: {args}")

        monkeypatch.setattr("builtins.open", no_files)
        monkeypatch.setattr(os, "open", no_files)
        monkeypatch.setattr(os, "stat", no_files)
        status, _, body = call(app, "GET", "/readyz", b"verbose")
    finally:
        monkeypatch.undo()
        child_proc.communicate(b"")
    assert status == 503 and body.startswith(b"[-]ranks waiting for 1 of 2 ranks on this node\n")
