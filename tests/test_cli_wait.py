"""``prefill-startup wait``: the decode side for init containers and launch scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator import BootstrapServer
from coordinator.cli import main
from coordinator.testing import free_port

ROOT = Path(__file__).resolve().parents[1]


# The fixtures restore_logging and complete_prefill are in conftest.py: test_edges_cli_server uses them too.
pytestmark = pytest.mark.usefixtures("restore_logging")


def test_exit_0_prints_the_prefill_info(complete_prefill: BootstrapServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["wait", "--bootstrap", f"127.0.0.1:{complete_prefill.port}", "--target", "0,0,3,0",
                 "--target", "0,0,1,0", "--expect-page-size", "16", "--expect-kv-cache-dtype", "auto"])
    out = capsys.readouterr().out
    assert code == 0
    info = json.loads(out)
    assert (info["attn_tp_size"], info["page_size"], info["kv_cache_dtype"]) == (4, 16, "auto")
    assert {(r["tp"], r["rank_port"]) for r in info["ranks"]} == {(1, 17001), (3, 17003)}


def test_exit_124_when_the_deadline_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["wait", "--bootstrap", f"127.0.0.1:{free_port()}", "--deadline", "1"])
    err = capsys.readouterr().err
    assert code == 124
    assert json.loads(err.strip().splitlines()[-1])["reason"] == "deadline"


def test_exit_1_on_a_mismatch_after_one_lookup(complete_prefill: BootstrapServer,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["wait", "--bootstrap", f"127.0.0.1:{complete_prefill.port}", "--expect-page-size", "64"])
    final = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert code == 1
    assert (final["reason"], final["attempt"]) == ("permanent", 1)
    assert "page_size" in final["last_error"]["message"]


@pytest.mark.parametrize("args,needle", [
    (["--bootstrap", "nohost"], "--bootstrap"),
    (["--bootstrap", "h:+1"], "--bootstrap"),
    (["--bootstrap", "::1:8998"], "--bootstrap"),
    (["--bootstrap", "h:1", "--target", "1,2,3"], "--target"),
    (["--bootstrap", "h:1", "--target", "a,b,c,d"], "--target"),
    (["--bootstrap", "h:1", "--target", "-1,0,0,0"], "--target"),
    (["--bootstrap", "h:1", "--target", "+1,0,0,0"], "--target"),
    (["--bootstrap", "h:1", "--expect-page-size", "0"], "--expect-page-size"),
    (["--bootstrap", "h:1", "--expect-page-size", "١٦"], "--expect-page-size"),
    (["--bootstrap", "h:1", "--deadline", "inf"], "--deadline"),
    (["--bootstrap", "h:1", "--deadline", "-3"], "--deadline"),
])
def test_exit_2_on_bad_input(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        code = main(["wait", *args])
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert needle in err and "Traceback" not in err


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coordinator.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ})


def test_command_runs_after_success_with_the_info_and_its_status_is_ours(complete_prefill: BootstrapServer) -> None:
    r = _cli("wait", "--bootstrap", f"127.0.0.1:{complete_prefill.port}", "--",
             sys.executable, "-c", "import json, os, sys; "
             "print('page', json.loads(os.environ['PREFILL_STARTUP_INFO'])['page_size']); sys.exit(3)")
    assert r.returncode == 3, r.stderr
    assert r.stdout.splitlines()[-1] == "page 16"


def test_command_is_not_run_on_failure(complete_prefill: BootstrapServer, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    r = _cli("wait", "--bootstrap", f"127.0.0.1:{complete_prefill.port}", "--expect-page-size", "64", "--",
             sys.executable, "-c", f"open({str(marker)!r}, 'w').close()")
    assert r.returncode == 1 and not marker.exists()


def test_dashdash_is_only_for_wait(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["diagram", "--check", "--", "true"])
    assert exit_info.value.code == 2 and "'-- COMMAND' is for 'wait'" in capsys.readouterr().err
