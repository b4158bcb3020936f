"""Instrumentation as hooks: the Prometheus families, a user's own hook, a hook that breaks."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from coordinator import Discovery, FakeClock, Registration, Snapshot
from coordinator.instrumentation import AttemptRecord, PrometheusHook, Record, TransitionRecord
from coordinator.testing import ScriptedTransport, Step, example_payload
from states import State, Trigger

URL = "http://10.1.2.3:8998/route"


def run(script: Iterable[Step], registry: CollectorRegistry, name: str = "rank0",
        **kw: Any) -> tuple[Registration, Snapshot]:
    clock = FakeClock()
    reg = Registration(URL, example_payload(), clock=clock, name=name, hooks=[PrometheusHook(registry)],
                       transport=ScriptedTransport(script, clock=clock, latency=0.01), on_exhausted="return", **kw)
    return reg, reg.run()


def value(registry: CollectorRegistry, family: str, /, **labels: str) -> float | None:
    return registry.get_sample_value(family, labels)


def test_attempts_by_lane_and_outcome_state_and_duration() -> None:
    registry = CollectorRegistry()
    run(["refused", 503, 200], registry)
    assert value(registry, "prefill_startup_attempts_total",
                 name="rank0", kind="registration", lane="refused", outcome="refused") == 1
    assert value(registry, "prefill_startup_attempts_total",
                 name="rank0", kind="registration", lane="trouble", outcome="http_5xx") == 1
    assert value(registry, "prefill_startup_attempts_total",
                 name="rank0", kind="registration", lane="none", outcome="registered") == 1
    states = {s.value: value(registry, "prefill_startup_state",
                             name="rank0", kind="registration", state=s.value) for s in State}
    assert states == {"INIT": 0, "REGISTERING": 0, "BACKOFF": 0, "REGISTERED": 1, "FAILED": 0}
    assert value(registry, "prefill_startup_duration_seconds_count",
                 name="rank0", kind="registration", result="registered") == 1
    total = value(registry, "prefill_startup_duration_seconds_sum",
                  name="rank0", kind="registration", result="registered")
    assert total is not None and total > 0.03  # three attempts of 10 ms, and the sleeps


def test_permanent_and_cancelled() -> None:
    registry = CollectorRegistry()
    run([404], registry, name="rank1")
    assert value(registry, "prefill_startup_attempts_total",
                 name="rank1", kind="registration", lane="none", outcome="http_4xx") == 1
    assert value(registry, "prefill_startup_state", name="rank1", kind="registration", state="FAILED") == 1
    assert value(registry, "prefill_startup_duration_seconds_count",
                 name="rank1", kind="registration", result="permanent") == 1
    reg, _ = None, None
    clock = FakeClock()
    reg = Registration(URL, example_payload(), clock=clock, name="rank2", hooks=[PrometheusHook(registry)],
                       transport=ScriptedTransport(["refused"], clock=clock))
    reg.poll(), reg.poll()
    reg.stop()
    assert value(registry, "prefill_startup_state", name="rank2", kind="registration", state="FAILED") == 1
    assert value(registry, "prefill_startup_duration_seconds_count",
                 name="rank2", kind="registration", result="cancelled") == 1


def test_many_registrations_and_hooks_share_a_registry_with_bounded_labels() -> None:
    registry = CollectorRegistry()
    PrometheusHook(registry)  # a second hook on the same registry must not re-register the families
    for i in range(3):
        run(["refused"] * 5 + [200], registry, name=f"rank{i}")
    text = generate_latest(registry).decode()
    for family in ("prefill_startup_attempts_total", "prefill_startup_state", "prefill_startup_duration_seconds"):
        assert family in text
    label_values = set(re.findall(r'="([^"]*)"', text))
    assert not any("10.1.2.3" in v or "http" in v.replace("http_", "") for v in label_values)
    assert not any(v.isdigit() for v in label_values)  # no attempt numbers
    assert value(registry, "prefill_startup_attempts_total",
                 name="rank2", kind="registration", lane="refused", outcome="refused") == 5


def test_a_discovery_is_counted_too() -> None:
    registry = CollectorRegistry()
    clock = FakeClock()
    d = Discovery("10.0.0.5:8998", clock=clock, hooks=[PrometheusHook(registry)],
                  transport=ScriptedTransport([503, (200, {}, '{"attn_tp_size": 1, "attn_cp_size": 1, "dp_size": 1, '
                                                            '"pp_size": 1, "page_size": 1, "kv_cache_dtype": "auto"}')],
                                              clock=clock))
    d.run()
    assert value(registry, "prefill_startup_attempts_total", name="10.0.0.5:8998", kind="discovery", lane="pending",
                 outcome="http_5xx") == 1
    assert value(registry, "prefill_startup_state", name="10.0.0.5:8998", kind="discovery", state="REGISTERED") == 1


def test_default_hooks_feed_the_default_registry() -> None:
    Registration(URL, example_payload(), clock=FakeClock(), name="default-hooks-rank",
                 transport=ScriptedTransport([200])).run()
    assert REGISTRY.get_sample_value("prefill_startup_state",
                                     {"name": "default-hooks-rank", "kind": "registration", "state": "REGISTERED"}) == 1


def test_a_users_hook_gets_one_record_per_attempt_and_per_transition_in_order() -> None:
    records: list[Record] = []
    clock = FakeClock()
    Registration(URL, example_payload(), clock=clock, hooks=[records.append],
                 transport=ScriptedTransport(["refused", 200], clock=clock)).run()
    kinds = [(type(r).__name__, getattr(r, "trigger", None)) for r in records]
    assert kinds == [
        ("TransitionRecord", Trigger.START),
        ("AttemptRecord", None), ("TransitionRecord", Trigger.ATTEMPT_DONE),
        ("TransitionRecord", Trigger.TIMER),
        ("AttemptRecord", None), ("TransitionRecord", Trigger.ATTEMPT_DONE),
    ]
    attempts = [r for r in records if isinstance(r, AttemptRecord)]
    assert [a.label for a in attempts] == ["refused", "registered"]
    assert all(isinstance(r, TransitionRecord) or r.snapshot.attempt in (1, 2) for r in records)
    with pytest.raises(AttributeError):
        attempts[0].label = "x"  # type: ignore[misc]  # the point: a read-only record raises


def test_a_broken_hook_does_not_stop_the_registration(caplog: pytest.LogCaptureFixture) -> None:
    def broken(record: Record) -> None:
        raise RuntimeError("hook bug")

    snap = Registration(URL, example_payload(), clock=FakeClock(), hooks=[broken],
                        transport=ScriptedTransport(["refused", 200])).run()
    assert snap.state is State.REGISTERED
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "coordinator"]
    assert errors
    event: dict[str, Any] = getattr(errors[0], "structlog")
    assert event["event"] == "registration.hook_error"
    assert "hook bug" in event["error"]
