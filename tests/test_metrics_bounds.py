"""/metrics: neutral labels (name, kind), bounded names, counts per state, multiprocess mode."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from coordinator import Discovery, FakeClock, Registration
from coordinator.instrumentation import PrometheusHook
from coordinator.testing import ScriptedTransport, example_payload
from states import State

ROOT = Path(__file__).resolve().parent.parent
URL = "http://10.1.2.3:8998/route"
TOPOLOGY = ('{"attn_tp_size": 1, "attn_cp_size": 1, "dp_size": 1, "pp_size": 1, "page_size": 1, '
            '"kv_cache_dtype": "auto"}')


def event_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structlog event LogHook attaches to a record (``extra={"structlog": ...}``)."""
    event: dict[str, Any] = getattr(record, "structlog")  # an attribute LogRecord does not declare
    return event


def run(hook: PrometheusHook, name: str, script: list[str | int], polls: int | None = None) -> Registration:
    clock = FakeClock()
    reg = Registration(URL, example_payload(), clock=clock, name=name, hooks=[hook], on_exhausted="return",
                       transport=ScriptedTransport(script, clock=clock))
    if polls is None:
        reg.run()
    else:
        for _ in range(polls):
            reg.poll()
    return reg


def names(registry: CollectorRegistry) -> set[str]:
    return set(re.findall(r'name="([^"]*)"', generate_latest(registry).decode()))


def test_drivers_are_labelled_by_name_and_kind() -> None:
    registry = CollectorRegistry()
    hook = PrometheusHook(registry)
    run(hook, "rank0", ["refused", 200])
    clock = FakeClock()
    Discovery("10.0.0.5:8998", clock=clock, hooks=[hook],
              transport=ScriptedTransport([503, (200, {}, TOPOLOGY)], clock=clock)).run()
    get = registry.get_sample_value
    assert get("prefill_startup_attempts_total",
               {"name": "rank0", "kind": "registration", "lane": "refused", "outcome": "refused"}) == 1
    assert get("prefill_startup_attempts_total",
               {"name": "10.0.0.5:8998", "kind": "discovery", "lane": "pending", "outcome": "http_5xx"}) == 1
    assert get("prefill_startup_state", {"name": "10.0.0.5:8998", "kind": "discovery", "state": "REGISTERED"}) == 1
    for name, kind in (("rank0", "registration"), ("10.0.0.5:8998", "discovery")):
        assert get("prefill_startup_duration_seconds_count", {"name": name, "kind": kind, "result": "registered"}) == 1
    text = generate_latest(registry).decode()
    assert "registration=" not in text and "prefill_startup_registration_seconds" not in text


def test_distinct_names_are_bounded_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    hook = PrometheusHook(registry, max_names=3)
    for i in range(6):
        run(hook, f"rank{i}", [200])
    run(PrometheusHook(registry, max_names=2), "rank7", [200])  # names are counted over the registry's hooks
    assert names(registry) == {"rank0", "rank1", "rank2", "_overflow"}
    get = registry.get_sample_value
    assert get("prefill_startup_state", {"name": "_overflow", "kind": "registration", "state": "REGISTERED"}) == 4
    assert get("prefill_startup_attempts_total",
               {"name": "_overflow", "kind": "registration", "lane": "none", "outcome": "registered"}) == 4
    run(hook, "rank1", ["refused", 200])  # an admitted name keeps its series
    assert get("prefill_startup_state", {"name": "rank1", "kind": "registration", "state": "REGISTERED"}) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [event_of(w)["event"] for w in warnings] == ["metrics.names_overflow"]
    assert event_of(warnings[0])["max_names"] == 3


def test_ten_thousand_names_stay_within_the_default_bound() -> None:
    registry = CollectorRegistry()
    hook = PrometheusHook(registry)
    for i in range(10_000):
        run(hook, f"rank{i}", [200])
    assert len(names(registry)) == 256 + 1
    series = [line for line in generate_latest(registry).decode().splitlines() if not line.startswith("#")]
    assert len(series) < 257 * 30  # ~26 per name (5 states, 17 histogram, 2 attempts, 2 created), was 280,040


def test_max_names_is_checked() -> None:
    with pytest.raises(ValueError, match="max_names"):
        PrometheusHook(CollectorRegistry(), max_names=0)
    with pytest.raises(TypeError, match="max_names"):
        PrometheusHook(CollectorRegistry(), max_names=True)


def test_state_counts_drivers_sharing_a_name() -> None:
    registry = CollectorRegistry()
    hook = PrometheusHook(registry)
    run(hook, "decode0", [200])
    run(hook, "decode0", ["refused"], polls=2)
    states = {s.value: registry.get_sample_value("prefill_startup_state",
                                                 {"name": "decode0", "kind": "registration", "state": s.value})
              for s in State}
    assert states == {"INIT": 0, "REGISTERING": 0, "BACKOFF": 1, "REGISTERED": 1, "FAILED": 0}


CHILD = textwrap.dedent("""
    import sys
    from coordinator import FakeClock, Registration
    from coordinator.testing import ScriptedTransport, example_payload

    clock = FakeClock()
    Registration("http://10.1.2.3:8998/route", example_payload(), clock=clock, name=sys.argv[1],
                 transport=ScriptedTransport(["refused", 200], clock=clock)).run()
""")
SCRAPE = textwrap.dedent("""
    from coordinator.health._answer import answer
    status, ctype, body = answer([], "/metrics", "")
    print(status)
    print(body.decode())
""")


def test_multiprocess_mode_merges_every_process(tmp_path: Path) -> None:
    # The variable must be set before prometheus_client is imported: fresh interpreters.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def python(code: str, *args: str) -> str:
        done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    python(CHILD, "rank0")
    python(CHILD, "rank1")
    status, _, text = python(SCRAPE).partition("\n")
    assert status == "200"
    for rank in ("rank0", "rank1"):  # written by two other processes, merged here
        assert (f'prefill_startup_attempts_total{{kind="registration",lane="refused",name="{rank}",'
                f'outcome="refused"}} 1.0') in text
        # livesum: no pid label, the live processes' counts added up (these two have exited,
        # and no one marked them dead: their files still count)
        assert f'prefill_startup_state{{kind="registration",name="{rank}",state="REGISTERED"}} 1.0' in text
    assert "pid=" not in text
