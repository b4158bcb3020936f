"""Log levels: what is expected on the way up is INFO, what an operator must look at is
WARNING; no raw monotonic time in events; the demo's timeline and its warnings."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import pytest

from coordinator import Discovery, FakeClock, Registration, RetryPolicy
from coordinator.testing import ScriptedTransport, example_payload

URL = "http://10.1.2.3:8998/route"
TOPOLOGY = ('{"attn_tp_size": 1, "attn_cp_size": 1, "dp_size": 1, "pp_size": 1, "page_size": 1, '
            '"kv_cache_dtype": "auto"}')


@pytest.fixture(autouse=True)
def every_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "coordinator")


def event_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structlog event LogHook attaches to a record (``extra={"structlog": ...}``)."""
    event: dict[str, Any] = getattr(record, "structlog")  # an attribute LogRecord does not declare
    return event


def failures(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, Any]]]:
    """(level, fields) of each attempt_failed event."""
    return [(r.levelname, event_of(r)) for r in caplog.records
            if getattr(r, "structlog", {}).get("event", "").endswith(".attempt_failed")]


def register(script: list[Any], **kw: Any) -> None:
    clock = FakeClock()
    Registration(URL, example_payload(), clock=clock, transport=ScriptedTransport(script, clock=clock),
                 on_exhausted="return", **kw).run()


def test_refused_is_info_trouble_is_warning(caplog: pytest.LogCaptureFixture) -> None:
    register(["refused", "refused", 503, "timeout", "reset", 200])
    assert [(level, f["lane"]) for level, f in failures(caplog)] == [
        ("INFO", "refused"), ("INFO", "refused"),
        ("WARNING", "trouble"), ("WARNING", "trouble"), ("WARNING", "trouble")]


def test_a_discoverys_not_yet_is_info(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    Discovery("10.0.0.5:8998", clock=clock,
              transport=ScriptedTransport(["refused", 503, 503, (200, {}, TOPOLOGY)], clock=clock)).run()
    assert [(level, f["lane"]) for level, f in failures(caplog)] == [
        ("INFO", "refused"), ("INFO", "pending"), ("INFO", "pending")]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_giving_up_is_still_an_error(caplog: pytest.LogCaptureFixture) -> None:
    register(["refused", 404])
    [failed] = [r for r in caplog.records if event_of(r)["event"] == "registration.failed"]
    assert failed.levelname == "ERROR"


def test_no_monotonic_time_in_events(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(2324.0)  # a monotonic clock's value: seconds since boot
    Registration(URL, example_payload(), clock=clock, name="rank0", transport=ScriptedTransport(["refused", 200],
                 clock=clock)).run()
    [(_, fields)] = failures(caplog)
    assert "next_attempt_at" not in fields and 0 < fields["delay_s"] <= 0.5  # relative: "retry in"
    for r in caplog.records:
        assert not any(isinstance(v, float) and v >= 2324.0 for v in event_of(r).values()), event_of(r)


def test_a_long_wait_for_the_server_leaves_the_warnings_to_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    register(["refused"] * 300 + [503] * 5 + [200], policy=RetryPolicy(deadline_s=3600.0))
    info = [f for level, f in failures(caplog) if level == "INFO"]
    warning = [f for level, f in failures(caplog) if level == "WARNING"]
    assert len(info) == 10 and [f["repeats"] for f in info[-3:]] == [64, 128, 256]  # summarised
    assert [f["repeats"] for f in warning] == [1, 2, 3, 4]  # a budget of their own


def test_demo_timeline_runs_forward_without_warnings(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from coordinator.cli import demo, main
    from coordinator.clock import SystemClock

    class Ticking(SystemClock):
        """Real time, and every read 50 ms later than the one before: two reads in one
        iteration would show as two times."""

        def __init__(self) -> None:
            self.reads = 0

        def now(self) -> float:
            self.reads += 1
            return time.monotonic() + 0.05 * self.reads

    monkeypatch.setattr(demo, "SystemClock", Ticking)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        code = main(["demo", "--ranks", "2", "--server-delay", "0.3", "--log-format", "json"])
    finally:
        root.handlers[:], root.level = saved
    out, err = capsys.readouterr()
    assert code == 0, out + err
    times = [float(m.group(1)) for m in re.finditer(r"^ *(\d+\.\d\d)s  ", out, re.M)]
    assert any("bootstrap server listening" in line for line in out.splitlines())
    assert len(times) >= 3 and times == sorted(times), out
    assert '"level": "info"' in err and '"level": "warning"' not in err
