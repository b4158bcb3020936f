"""``prefill-startup status``: an SGLang instance's main process asked over its channel, from a shell."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from coordinator import FakeClock, Registration
from coordinator.cli import main
from coordinator.health._probe import Expected
from coordinator.instance._board import Board
from coordinator.instance._channel import Receiver
from coordinator.testing import ScriptedTransport, Step, example_payload

ME = str(os.getpid())


@pytest.fixture
def instance() -> Iterator[Board]:
    """This process as an instance's main process (its channel bound, its board empty)."""
    receiver = Receiver(Board())
    yield receiver.board
    receiver.close()
    receiver.board.close()


def publish(board: Board, n: int, name: str, script: list[Step]) -> None:
    reg = Registration("http://10.0.0.5:8998/route", example_payload(), name=name, clock=FakeClock(), hooks=(),
                       transport=ScriptedTransport(script), on_exhausted="return")
    reg.run()
    board.put(os.getpid(), n, reg.snapshot())


def test_status_prints_the_verbose_probe_and_exits_by_readiness(instance: Board,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    publish(instance, 1, "rank0", [200])
    assert main(["status", "--instance", ME]) == 0
    assert capsys.readouterr().out == "[+]registration rank0 ok\nreadyz check passed\n"
    publish(instance, 2, "rank1", [404])
    assert main(["status", "--instance", ME]) == 1
    out = capsys.readouterr().out
    assert "[-]registration rank1 failed: FAILED (permanent), attempt 1, HTTP 404" in out
    assert main(["status", "--instance", ME, "--json"]) == 1
    assert [d["name"] for d in json.loads(capsys.readouterr().out)["registrations"]] == ["rank0", "rank1"]


def test_status_names_the_ranks_it_still_waits_for(instance: Board, capsys: pytest.CaptureFixture[str]) -> None:
    instance.expect(Expected(2))
    publish(instance, 1, "rank0", [200])
    assert main(["status", "--instance", ME]) == 1
    assert capsys.readouterr().out.startswith("[-]ranks waiting for 1 of 2 ranks on this node\n")


def test_status_with_nothing_published_has_nothing_to_wait_for(instance: Board,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--instance", ME]) == 0
    assert "nothing to wait for" in capsys.readouterr().out


@pytest.mark.parametrize("pid", ["1", "999999"])
def test_status_of_a_process_with_no_instance_exits_2_naming_the_flag(pid: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--instance", pid]) == 2
    assert "--instance" in capsys.readouterr().err
