"""Type-checked by mypy --strict in CI (not collected by pytest): the public API as an embedder calls it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from coordinator import (
    Backoff,
    Discovery,
    FakeClock,
    PrefillInfo,
    Registration,
    RegistrationFailed,
    RetryPolicy,
    Snapshot,
    bootstrap_url,
    health,
)
from coordinator.instrumentation import AttemptRecord, LogHook, PrometheusHook, Record, SystemdNotifier, default_hooks
from coordinator.testing import ScriptedTransport
from states import State


def prefill(host: str, port: int, payload: dict[str, object]) -> Snapshot:
    url: str = bootstrap_url(host, port)
    policy = RetryPolicy(deadline_s=300, refused=Backoff(0.5, 0.5, jitter=0.0, spread_first=True))
    reg: Registration = Registration(url, payload, policy=policy, name="rank0").start()
    probes: health.HealthServer = health.serve(reg, port=18998)
    try:
        snap: Snapshot = reg.wait(60)
        return snap
    except RegistrationFailed as exc:
        return exc.snapshot
    finally:
        probes.close()


def decode(bootstrap: str) -> PrefillInfo | None:
    d = Discovery(bootstrap, targets=[(0, 0, 1, 0)], expect={"page_size": 64}, on_exhausted="return")
    snap = d.run()
    state: State = snap.state
    return d.info if state is State.REGISTERED else None


def hooks() -> list[object]:
    seen: list[AttemptRecord] = []

    def mine(record: Record) -> None:
        if isinstance(record, AttemptRecord):
            seen.append(record)

    notifier = SystemdNotifier.from_env()
    return [*default_hooks(), LogHook(), PrometheusHook(CollectorRegistry()), mine, *([notifier] if notifier else [])]


def scripted() -> bool:
    clock = FakeClock()
    reg = Registration("http://h:1/route", {}, clock=clock,
                       transport=ScriptedTransport(["refused", (503, {"Retry-After": "1"}), 200], clock=clock))
    return reg.run().state is State.REGISTERED


def mounted(reg: Registration, registry: CollectorRegistry) -> health.ASGIApp:
    return health.asgi([reg], registry=registry)
