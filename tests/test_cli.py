"""The CLI, run as a subprocess the way an operator runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator import BootstrapServer
from coordinator.testing import example_payload

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


def test_demo_registers_every_rank() -> None:
    r = cli("demo", "--ranks", "3", "--server-delay", "0.6", "--log-format", "json")
    assert r.returncode == 0, r.stderr
    assert "demo: every rank REGISTERED, and the decode side found them" in r.stdout
    assert "GET /readyz -> 200" in r.stdout
    assert 'decode: {"attn_tp_size": 3' in r.stdout and "GET /metrics -> 200" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.startswith("rank") and "REGISTERED" in line]
    assert len(rows) == 3
    events = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "registration.attempt_failed" and e["error_type"] == "ConnectionRefusedError"
               for e in events)
    assert sum(e["event"] == "registration.registered" for e in events) == 3


def test_register_against_a_running_server() -> None:
    with BootstrapServer() as server:
        r = cli("register", "--bootstrap", f"127.0.0.1:{server.port}", "--payload", json.dumps(example_payload()))
        assert server.registered_count == 1
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "REGISTERED"


def test_register_with_token_from_env(tmp_path) -> None:  # type: ignore[no-untyped-def]
    token = "s3cr3t-token-value"
    f = tmp_path / "payload.json"
    f.write_text(json.dumps(example_payload()))
    with BootstrapServer(token=token) as server:
        denied = cli("register", "--bootstrap", f"127.0.0.1:{server.port}", "--payload-file", str(f))
        ok = cli("register", "--bootstrap", f"127.0.0.1:{server.port}", "--payload-file", str(f),
                 "--token-env", "BOOT_TOKEN", env={"BOOT_TOKEN": token})
    assert denied.returncode == 1 and json.loads(denied.stdout)["last_status"] == 401
    assert ok.returncode == 0, ok.stderr
    for r in (denied, ok):
        assert token not in r.stdout + r.stderr


def test_register_gives_up_with_exit_1() -> None:
    r = cli("--log-format", "json", "register", "--bootstrap", f"127.0.0.1:{free_port()}",
            "--payload", json.dumps(example_payload()), "--max-attempts", "2")
    assert r.returncode == 1
    assert json.loads(r.stdout)["reason"] == "exhausted"
    assert '"error_type": "ConnectionRefusedError"' in r.stderr


@pytest.mark.parametrize("args,needle", [
    (["--bootstrap", "nohost", "--payload", "{}"], "--bootstrap"),
    (["--bootstrap", "h:99999", "--payload", "{}"], "--bootstrap"),
    (["--bootstrap", "h:8998", "--payload", "{not json"], "--payload is not valid JSON"),
    (["--bootstrap", "h:8998", "--payload", json.dumps({**example_payload(), "rank_port": "x"})], "rank_port"),
    (["--bootstrap", "h:8998", "--payload", json.dumps({"attn_tp_size": 1})], "attn_tp_rank"),
    (["--bootstrap", "h:8998", "--payload", "[]"], "payload"),
    (["--bootstrap", "h:8998", "--payload-file", "/nonexistent/p.json"], "--payload-file"),
    (["--bootstrap", "h:8998", "--payload", "{}", "--deadline", "-1"], "--deadline"),
    (["--bootstrap", "h:8998", "--payload", "{}", "--max-attempts", "0"], "--max-attempts"),
    (["--bootstrap", "h:8998", "--payload", "{}", "--attempt-timeout", "nan"], "--attempt-timeout"),
    (["--bootstrap", "h:8998", "--payload", json.dumps(example_payload()), "--token-env", "UNSET_VAR_X"],
     "UNSET_VAR_X"),
    (["--bootstrap", "h:8998", "--dist-init-addr", "bad", "--payload", json.dumps(example_payload())],
     "--dist-init-addr"),
    (["--payload", "{}"], "--bootstrap"),
])
def test_register_bad_input_exits_2_naming_it(args, needle) -> None:  # type: ignore[no-untyped-def]
    r = cli("register", *args, timeout=20)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_diagram_check_passes_on_the_committed_file() -> None:
    assert cli("diagram", "--check").returncode == 0


def test_diagram_check_fails_on_a_stale_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stale = tmp_path / "d.md"
    stale.write_text("stateDiagram-v2\n")
    assert cli("diagram", "--check", "--output", str(stale)).returncode == 1
    assert cli("diagram", "--output", str(stale)).returncode == 0
    assert cli("diagram", "--check", "--output", str(stale)).returncode == 0


def test_bootstrap_server_command_serves_until_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "coordinator.cli", "bootstrap-server", "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert f"127.0.0.1:{port}/route" in line
        r = cli("register", "--bootstrap", f"127.0.0.1:{port}", "--payload", json.dumps(example_payload()))
        assert r.returncode == 0, r.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
