"""Edges of the CLI and the bootstrap server (issue 20, part 7): the simulator's unbounded
flags, ``wait -- COMMAND`` with a COMMAND no exec can run and with COMMAND's stdout, and a
long-poll whose client half-closes."""

from __future__ import annotations

import argparse
import queue
import socket
import sys
import time
from collections.abc import Callable

import pytest

from coordinator import BootstrapServer
from coordinator.cli import build_parser, main
from coordinator.cli import simulate as cli_sim
from coordinator.cli._argtypes import CORES
from coordinator.server import _parking
from coordinator.sim import MAX_LATENCY_S, MAX_RANK_RUNS, MAX_TRIALS, Scenario, check_counts
from coordinator.testing import free_port

# Their helpers, rather than copies; the fixtures (complete_prefill, server, half) are in conftest.py.
from tests.test_cli_wait import _cli
from tests.test_server_long_poll import NOT_YET, WAIT_S, answer_of, long_poll, put, send, until

pytestmark = pytest.mark.usefixtures("restore_logging")

# -- simulate: every flag whose work grows with its value is bounded ---------------------------

UNBOUNDED_BEFORE = [
    ("--latency", "1e9"),
    ("--latency", str(MAX_LATENCY_S + 0.001)),
    ("--trials", str(MAX_TRIALS + 1)),
    ("--workers", str(CORES + 1)),
    ("--workers", "100000"),
]


@pytest.mark.parametrize("flag,value", UNBOUNDED_BEFORE, ids=[f"{f}={v}" for f, v in UNBOUNDED_BEFORE])
def test_a_simulate_flag_past_its_bound_is_refused_at_parse_time(flag: str, value: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # Parsed only: were it accepted, running it would be the unbounded work itself.
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["simulate", flag, value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {flag}: must be <=" in err, err


def test_the_bounds_themselves_are_taken() -> None:
    args = build_parser().parse_args(["simulate", "--latency", str(MAX_LATENCY_S), "--trials", str(MAX_TRIALS),
                                      "--workers", str(CORES)])
    assert (args.latency, args.trials, args.workers) == (MAX_LATENCY_S, MAX_TRIALS, CORES)


def test_the_library_bounds_the_latency_too() -> None:
    Scenario(latency_s=MAX_LATENCY_S)
    with pytest.raises(ValueError, match="Scenario.latency_s must be <= 1 s"):
        Scenario(latency_s=1e9)


def test_ranks_times_trials_is_bounded_in_the_library() -> None:
    check_counts(1000, MAX_RANK_RUNS // 1000)
    with pytest.raises(ValueError, match="ranks x trials must be <= 1,000,000"):
        check_counts(1000, MAX_RANK_RUNS // 1000 + 1)


def _refuse_to_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("the simulation ran")


@pytest.mark.parametrize("argv,names", [
    (["--ranks", "512", "--trials", "2000"], "--ranks x --trials"),
    (["--decode", "--ranks", "1", "--decode-ranks", "48536", "--trials", "21"], "--decode-ranks x --trials"),
])
def test_ranks_times_trials_past_the_bound_exits_2_before_running(argv: list[str], names: str,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_sim, "compare", _refuse_to_run)
    monkeypatch.setattr(cli_sim, "compare_decode", _refuse_to_run)
    assert main(["simulate", *argv]) == 2
    assert f"{names} must be <= 1,000,000" in capsys.readouterr().err


def test_the_simulate_help_states_the_new_bounds() -> None:
    parser = argparse.ArgumentParser()
    cli_sim.add_arguments(parser)
    helps = {a.option_strings[0]: a.help or "" for a in parser._actions if a.option_strings}
    assert "at most 1 " in helps["--latency"]
    assert f"at most {MAX_TRIALS}" in helps["--trials"] and f"at most {MAX_RANK_RUNS}" in helps["--trials"]
    assert "at most one per core" in helps["--workers"]


# -- wait -- COMMAND: a COMMAND no exec can run -------------------------------------------------

NO_PROGRAM = [[""], ["", "arg"], ["true", "a\0b"], []]


@pytest.mark.parametrize("command", NO_PROGRAM, ids=["empty", "empty-with-args", "nul", "nothing-after-dashdash"])
def test_a_command_no_exec_can_run_exits_2_before_any_wait(command: list[str],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens there: were the COMMAND checked only after the wait, this would be a 124.
    began = time.monotonic()
    code = main(["wait", "--bootstrap", f"127.0.0.1:{free_port()}", "--deadline", "3", "--", *command])
    err = capsys.readouterr().err
    assert code == 2, err
    assert time.monotonic() - began < 2.0
    lines = [line for line in err.splitlines() if line.startswith("prefill-startup wait: error:")]
    assert len(lines) == 1 and "COMMAND" in lines[0], err
    assert "attempt" not in err  # no lookup was made


def test_wait_dashdash_empty_string_is_one_line_and_exit_2_not_a_traceback(
        complete_prefill: BootstrapServer) -> None:
    r = _cli("--log-level", "error", "wait", "--bootstrap", f"127.0.0.1:{complete_prefill.port}", "--", "")
    assert r.returncode == 2, r.stderr
    assert r.stderr == "prefill-startup wait: error: COMMAND is empty ('' names no program)\n"
    assert r.stdout == ""


# -- wait -- COMMAND: COMMAND's stdout is COMMAND's own -----------------------------------------

def test_command_stdout_holds_only_the_commands_output(complete_prefill: BootstrapServer) -> None:
    r = _cli("wait", "--bootstrap", f"127.0.0.1:{complete_prefill.port}", "--",
             sys.executable, "-c",
             "import json, os; print(json.loads(os.environ['PREFILL_STARTUP_INFO'])['page_size'])")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "16\n"  # no PrefillInfo line ahead of it: the info is in the environment
    assert "discovery.registered" in r.stderr  # the completion is still told, on stderr


def test_without_a_command_stdout_is_the_prefill_info(complete_prefill: BootstrapServer) -> None:
    r = _cli("wait", "--bootstrap", f"127.0.0.1:{complete_prefill.port}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('{"attn_tp_size": 4') and r.stdout.count("\n") == 1


# -- a long-poll whose client half-closes --------------------------------------------------------

@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> queue.Queue[None]:
    """One item each time the parking thread has read a held connection (a FIN, a reset, a request)."""
    done: queue.Queue[None] = queue.Queue()
    original: Callable[[_parking.Parking, _parking._Held], None] = _parking.Parking._readable

    def readable(self: _parking.Parking, held: _parking._Held) -> None:
        original(self, held)
        done.put(None)

    monkeypatch.setattr(_parking.Parking, "_readable", readable)
    return done


def test_a_half_closed_long_poll_is_answered_when_its_wait_ends(half: BootstrapServer) -> None:
    sock = send(half.port, long_poll(0.3))
    sock.shutdown(socket.SHUT_WR)  # sends no more; still reads
    began = time.monotonic()
    status, headers, body = answer_of(sock)
    took = time.monotonic() - began
    assert (status, body, headers["Connection"]) == (503, NOT_YET, "close")
    assert 0.2 < took < 2.0, took
    until(lambda: half.parked == 0)


def test_a_half_closed_long_poll_is_answered_at_completion_and_read_once(half: BootstrapServer,
                                                                        reads: queue.Queue[None]) -> None:
    sock = send(half.port, long_poll(10))
    until(lambda: half.parked == 1)
    sock.shutdown(socket.SHUT_WR)
    reads.get(timeout=WAIT_S)  # the server has seen the FIN...
    assert half.parked == 1  # ...and holds the long-poll
    assert put(half.port, 1) == 200
    status, _, body = answer_of(sock)
    assert status == 200 and b'"attn_tp_size": 2' in body
    until(lambda: half.parked == 0)
    assert reads.empty()  # the FIN was read once: no loop on a socket that stays readable


def test_our_generation_seen_half_closed_is_held_until_wait_then_answered_200(server: BootstrapServer) -> None:
    assert put(server.port, 0, total=1) == 200
    sock = send(server.port, long_poll(0.3, seen=server.generation))
    sock.shutdown(socket.SHUT_WR)
    began = time.monotonic()
    status, _, _ = answer_of(sock)
    assert status == 200 and 0.2 < time.monotonic() - began < 2.0


def test_a_closed_clients_long_poll_is_released_when_its_wait_ends(half: BootstrapServer,
                                                                   reads: queue.Queue[None]) -> None:
    # A FIN from close() looks like a half-close: held until its answer is due, not for ever.
    sock = send(half.port, long_poll(0.3))
    until(lambda: half.parked == 1)
    sock.close()
    reads.get(timeout=WAIT_S)
    until(lambda: half.parked == 0)
