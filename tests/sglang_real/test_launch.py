"""The plugin through SGLang 0.5.23's real entry points, in their real order, on a CPU.

`python -m sglang.launch_server`, `sglang serve` and `sglang.Engine(...)` run for real up
to Engine._launch_subprocesses, whose GPU part is stood in (tests/sglang_real/_boundary.py):
two scheduler processes that load plugins and register one rank each through the hooked
CommonKVManager._register_topology_row, against the real CommonKVBootstrapServer that the
real start_disagg_service() starts once the test says so. Asserted: the probe port answers
from plugin load on, while the ranks wait; readiness names what it waits for; /startup is
mounted on SGLang's real FastAPI app; no `transitions` line at INFO.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.instance import channels, owner
from coordinator.testing import free_port
from tests.sglang_real.conftest import Launch

RANKS = ("dp0-cp0-tp0-pp0", "dp0-cp0-tp1-pp0")


def server_args(model_dir: Path) -> list[str]:
    return ["--model-path", str(model_dir), "--disaggregation-mode", "prefill", "--tp-size", "2", "--device", "cpu",
            "--skip-tokenizer-init", "--host", "127.0.0.1", "--port", str(free_port()),
            "--disaggregation-bootstrap-port", str(free_port())]


def both_ranks_waiting(status: int, body: str) -> bool:
    return all(f"[-]registration {rank} failed: BACKOFF" in body for rank in RANKS)


def startup_is_shown_while_it_happens(run: Launch) -> None:
    # Inside Engine._launch_subprocesses: schedulers started, no bootstrap server yet.
    status, body = run.until("/readyz?verbose", both_ranks_waiting)
    assert status == 503
    assert body.startswith("[-]ranks waiting for 2 of 2 ranks of the instance\n")
    assert run.probe("/livez")[0] == 200  # waiting is alive
    startupz = json.loads(run.probe("/startupz")[1])
    assert (startupz["ok"], startupz["waiting"]) == (False, "waiting for 2 of 2 ranks of the instance")
    run.send("bootstrap")
    status, body = run.until("/readyz?verbose", lambda s, b: s == 200)
    # The bootstrap server now runs in this process: its own table names every rank.
    assert body == ("[+]ranks 2 of 2 ranks registered of the instance\n"
                    "[+]rank dp0-cp0-tp0-pp0 registered\n[+]rank dp0-cp0-tp1-pp0 registered\n"
                    "[+]registration dp0-cp0-tp0-pp0 ok\n[+]registration dp0-cp0-tp1-pp0 ok\nreadyz check passed\n")
    assert run.event("schedulers_ready")["ready"] == ["ready", "ready"]


@pytest.mark.parametrize("entry", ["launch_server", "serve"])
def test_the_probe_port_shows_startup_and_the_app_gets_startup_mounted(
        entry: str, launch: Callable[..., Launch], model_dir: Path, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    run = launch(entry, server_args(model_dir), TMPDIR=str(tmp))
    main_pid = run.event("launching")["pid"]
    assert any(owner(name) == main_pid for name in channels())
    startup_is_shown_while_it_happens(run)
    # Past _launch_subprocesses, SGLang's own app (whose port opens only now) has /startup too.
    answers = run.event("http_app")["answers"]
    status, body = answers["/startup/readyz?verbose"]
    assert status == 200 and body.startswith("[+]ranks 2 of 2 ranks registered")
    assert answers["/startup/livez"][0] == 200
    assert run.probe("/readyz")[0] == 200  # the port stays
    run.send("stop")
    run.event("exited")
    assert run.wait() == 0
    stderr = run.stderr()
    assert "Finished processing state" not in stderr and "transitions.core" not in stderr
    assert stderr.count("prefill_startup.probes") == 1  # the mount; the port's line is logged before SGLang's logging
    # Nothing of ours left behind: no file, and the channel's name went with the process.
    assert not [p for p in tmp.rglob("*") if "prefill-startup" in p.name]
    assert not any(owner(name) == main_pid for name in channels())


def test_engine_keeps_the_probe_port_and_mounts_nothing(launch: Callable[..., Launch], model_dir: Path) -> None:
    args = {"model_path": str(model_dir), "disaggregation_mode": "prefill", "tp_size": 2, "device": "cpu",
            "skip_tokenizer_init": True, "port": free_port(), "disaggregation_bootstrap_port": free_port(),
            "log_level": "info"}
    run = launch("engine", [json.dumps(args)])
    run.event("launching")
    startup_is_shown_while_it_happens(run)
    assert run.event("engine_ready")["http_server_imported"] is False
    assert run.probe("/readyz")[0] == 200  # the port stays: an Engine has no HTTP server to mount on


def test_a_rank_that_fails_is_named_with_its_root_cause(launch: Callable[..., Launch], model_dir: Path) -> None:
    run = launch("launch_server", server_args(model_dir), PREFILL_STARTUP_DEADLINE="2")
    run.event("launching")
    run.send("no bootstrap server")
    status, body = run.until("/readyz?verbose", lambda s, b: b.count("FAILED (deadline)") == 2)
    assert status == 503
    assert "ConnectionRefusedError" in body  # the root cause, not "not ready"
    assert run.probe("/livez")[0] == 503  # given up for good
    assert "ready" not in run.event("schedulers_ready", timeout=60)["ready"]
    assert run.wait() != 0  # SGLang's launch fails, as with a scheduler that dies in its init
