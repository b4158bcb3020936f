"""The public testing kit: ScriptedTransport, the pytest plugin, the README's example."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coordinator import Discovery, Outcome, Registration
from coordinator.testing import FakeClock, FaultServer, ScriptedTransport, ScriptExhausted, Step
from coordinator.testing.faultserver import respond
from states import State

README = Path(__file__).resolve().parent.parent / "README.md"


def test_done_when_four_attempts_three_sleeps(payload: dict[str, Any]) -> None:
    clock = FakeClock()
    transport = ScriptedTransport(["refused", "refused", (503, {"Retry-After": "1"}), 200], clock=clock)
    reg = Registration("http://bootstrap.test:8998/route", {**payload}, clock=clock, transport=transport)
    snap = reg.run()
    assert (snap.state, snap.attempt, len(clock.sleeps)) == (State.REGISTERED, 4, 3)
    assert clock.sleeps[2] >= 1.0  # Retry-After is a floor
    assert [c.method for c in transport.calls] == ["PUT"] * 4
    assert [c.at for c in transport.calls] == [0.0, clock.sleeps[0], sum(clock.sleeps[:2]), sum(clock.sleeps)]
    assert transport.calls[0].body == reg._body and transport.calls[0].timeout == 5.0


@pytest.mark.parametrize("item,failure_or_status", [
    ("refused", "refused"), ("dns", "dns"), ("timeout", "timeout"), ("reset", "reset"),
    ("connection", "connection"), (404, 404), ((429, {"Retry-After": "3"}), 429),
    (Outcome.of_status(503, "busy"), 503),
])
def test_script_items(item: Step, failure_or_status: str | int) -> None:
    out = ScriptedTransport([item]).attempt("u", b"", 1.0)
    if isinstance(failure_or_status, int):
        assert out.status == failure_or_status
    else:
        assert out.failure is not None and out.failure.value == failure_or_status


def test_bad_script_items_fail_at_construction() -> None:
    for bad in ("refusd", 3.5, (503, "x"), None):
        with pytest.raises(ValueError, match="script item"):
            ScriptedTransport([bad])  # type: ignore[list-item]  # the point: a bad item raises


def test_running_past_the_script_names_the_attempt(scripted_registration: Callable[..., Registration]) -> None:
    reg = scripted_registration(["refused", 503])
    with pytest.raises(ScriptExhausted, match=r"attempt 3 \(PUT http://bootstrap.test:8998/route\)"):
        reg.run()
    assert isinstance(reg.transport, ScriptedTransport) and len(reg.transport.calls) == 2


def test_fixtures(scripted_registration: Callable[..., Registration], scripted_discovery: Callable[..., Discovery],
                  fake_clock: FakeClock) -> None:
    reg = scripted_registration([404], name="rank7", on_exhausted="return")
    assert reg.run().reason == "permanent" and reg.clock is fake_clock and reg.name == "rank7"
    d = scripted_discovery([503, (200, {}, '{"attn_tp_size": 1, "attn_cp_size": 1, "dp_size": 1, "pp_size": 1, '
                                      '"page_size": 1, "kv_cache_dtype": "auto"}')])
    assert d.run().state is State.REGISTERED and d.info is not None
    assert d.info.page_size == 1 and len(fake_clock.sleeps) == 1


def test_fault_server_is_public(payload: dict[str, Any]) -> None:
    with FaultServer(respond(200)) as server:
        snap = Registration(server.url, payload, clock=FakeClock()).run()
    assert snap.state is State.REGISTERED


def test_readme_example_runs_as_written_through_the_installed_plugin(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- testing-example -->\n```python\n(.*?)```\n<!-- /testing-example -->", text, re.S)
    assert block, "README.md lost its testing example"
    (tmp_path / "test_example.py").write_text(block.group(1), encoding="utf-8")
    # A fresh pytest, outside this suite's conftest: only the entry point provides the fixtures.
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
