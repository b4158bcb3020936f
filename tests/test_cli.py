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
from coordinator.testing import example_payload, free_port

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
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


def test_register_with_token_from_env(tmp_path: Path) -> None:
    token = "s3cr3t-token-value"
    f = tmp_path / "payload.json"
    f.write_text(json.dumps(example_payload()))
    with BootstrapServer(token=token) as server:
        denied = cli("register", "--bootstrap", f"127.0.0.1:{server.port}", "--payload-file", str(f))
        ok = cli("register", "--bootstrap", f"127.0.0.1:{server.port}", "--payload-file", str(f),
                 "--token-env", "BOOT_TOKEN", env={"BOOT_TOKEN": token})
    assert denied.returncode == 1 and json.loads(denied.stderr.splitlines()[-1])["last_status"] == 401
    assert ok.returncode == 0, ok.stderr
    for r in (denied, ok):
        assert token not in r.stdout + r.stderr


def test_register_gives_up_with_exit_1() -> None:
    r = cli("--log-format", "json", "register", "--bootstrap", f"127.0.0.1:{free_port()}",
            "--payload", json.dumps(example_payload()), "--max-attempts", "2")
    assert r.returncode == 1
    assert r.stdout == "" and json.loads(r.stderr.splitlines()[-1])["reason"] == "exhausted"
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
def test_register_bad_input_exits_2_naming_it(args: list[str], needle: str) -> None:
    r = cli("register", *args, timeout=20)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_diagram_check_passes_on_the_committed_file() -> None:
    assert cli("diagram", "--check").returncode == 0


def test_diagram_check_fails_on_a_stale_file(tmp_path: Path) -> None:
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
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}/route" in line
        r = cli("register", "--bootstrap", f"127.0.0.1:{port}", "--payload", json.dumps(example_payload()))
        assert r.returncode == 0, r.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err


# -- a new user's first runs: diagram, payload files, messages (issue 15) -------------------


def test_diagram_defaults_to_the_repositorys_file_from_anywhere(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "coordinator.cli", "diagram", "--check"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "diagrams").exists()


@pytest.mark.parametrize("pyproject", [None, 'name = "someone-elses"\n'])
def test_diagram_needs_output_when_not_run_from_the_repository(tmp_path: Path, pyproject: str | None) -> None:
    # The package as if installed in a site-packages (under another project, or none).
    if pyproject is not None:
        (tmp_path / "pyproject.toml").write_text(f"[project]\n{pyproject}")
    fake = tmp_path / "venv" / "site-packages" / "coordinator" / "__init__.py"
    r = subprocess.run([sys.executable, "-c", "import sys, coordinator; coordinator.__file__ = sys.argv[1]; "
                        "from coordinator.cli import main; sys.exit(main(['diagram']))", str(fake)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--output: required" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "diagrams").exists()


def test_diagram_refuses_a_missing_directory(tmp_path: Path) -> None:
    r = cli("diagram", "--output", str(tmp_path / "nonexistent" / "d.md"))
    assert r.returncode == 2 and "--output" in r.stderr and "does not exist" in r.stderr
    assert not (tmp_path / "nonexistent").exists()


def test_diagram_check_says_missing(tmp_path: Path) -> None:
    r = cli("diagram", "--check", "--output", str(tmp_path / "d.md"))
    assert r.returncode == 1 and "missing" in r.stderr and "stale" not in r.stderr


def test_payload_file_with_a_utf8_bom_is_taken(tmp_path: Path) -> None:
    f = tmp_path / "payload.json"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps(example_payload()).encode())
    with BootstrapServer() as server:
        r = cli("register", "--bootstrap", f"127.0.0.1:{server.port}", "--payload-file", str(f))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("content", [
    json.dumps(example_payload()).encode("utf-16"),
    json.dumps({**example_payload(), "kv_cache_dtype": "é"}, ensure_ascii=False).encode("latin-1"),
], ids=["utf-16", "latin-1"])
def test_payload_file_not_utf8_names_the_flag(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "payload.json"
    f.write_bytes(content)
    r = cli("register", "--bootstrap", "h:1", "--payload-file", str(f))
    assert r.returncode == 2
    assert "--payload-file" in r.stderr and "must be UTF-8 JSON" in r.stderr and "codec" not in r.stderr


@pytest.mark.parametrize("flag", ["--payload", "--payload-file"])
def test_payload_nested_too_deep_exits_2(tmp_path: Path, flag: str) -> None:
    depth = 10_000 if flag == "--payload" else 100_000  # one argument holds at most 128 KiB
    deep = "[" * depth + "]" * depth
    f = tmp_path / "deep.json"
    f.write_text(deep)
    r = cli("register", "--bootstrap", "h:1", flag, deep if flag == "--payload" else str(f))
    assert r.returncode == 2, r.stderr[-500:]
    assert f"{flag}: JSON nested too deeply" in r.stderr and "Traceback" not in r.stderr


def test_payload_must_be_an_object_naming_the_flag() -> None:
    r = cli("register", "--bootstrap", "h:1", "--payload", "[]")
    assert r.returncode == 2 and "--payload: must be a JSON object, got list" in r.stderr


def test_wait_usage_shows_the_command() -> None:
    r = cli("wait", "--help")
    assert r.returncode == 0
    usage = r.stdout.split("\n\n")[0]
    assert usage.startswith("usage: prefill-startup wait") and usage.rstrip().endswith("[-- COMMAND ...]")


def test_no_doubled_colon_in_messages() -> None:
    r = cli("wait", "--bootstrap", "::1:8998")
    assert r.returncode == 2 and "--bootstrap: write an IPv6 address in brackets" in r.stderr and ": :" not in r.stderr
