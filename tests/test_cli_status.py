"""``prefill-startup status``: what an SGLang instance's processes published, from a shell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator import FakeClock, Registration
from coordinator.cli import main
from coordinator.state import Publisher
from coordinator.testing import ScriptedTransport, Step, example_payload


def publish(state_dir: Path, name: str, script: list[Step]) -> None:
    reg = Registration("http://10.0.0.5:8998/route", example_payload(), name=name, clock=FakeClock(), hooks=(),
                       transport=ScriptedTransport(script), on_exhausted="return")
    Publisher(state_dir).attach(reg)
    reg.run()


def test_status_prints_the_verbose_probe_and_exits_by_readiness(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    publish(tmp_path, "rank0", [200])
    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "[+]registration rank0 ok\nreadyz check passed\n"
    publish(tmp_path, "rank1", [404])
    assert main(["status", "--state-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "[-]registration rank1 failed: FAILED (permanent), attempt 1, HTTP 404" in out
    assert main(["status", "--state-dir", str(tmp_path), "--json"]) == 1
    assert [d["name"] for d in json.loads(capsys.readouterr().out)["registrations"]] == ["rank0", "rank1"]


def test_status_with_nothing_published_has_nothing_to_wait_for(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    assert "nothing to wait for" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["status", "--state-dir", "/nonexistent/prefill-startup"], ["status"]])
def test_status_without_a_directory_exits_2_naming_the_flag(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("PREFILL_STARTUP_STATE_DIR", raising=False)
    assert main(argv) == 2
    assert "--state-dir" in capsys.readouterr().err
