"""A watching Discovery after REGISTERED: restarts, flaps, blips, a server gone for good,
and an address that moved without a restart; all on a fake clock."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from coordinator import Discovery, DiscoverySnapshot, FakeClock, RetryPolicy
from coordinator.protocol import GENERATION_HEADER
from coordinator.testing import ScriptedTransport
from coordinator.testing._scripted import Call, Step
from states import State

TOPOLOGY = {"attn_tp_size": 1, "attn_cp_size": 1, "dp_size": 1, "pp_size": 1, "page_size": 1,
            "kv_cache_dtype": "auto", "follow_bootstrap_room": True}


def topology(generation: str | None = None, **changes: Any) -> tuple[int, dict[str, str], str]:
    headers = {} if generation is None else {GENERATION_HEADER: generation}
    return 200, headers, json.dumps({**TOPOLOGY, **changes})


def rank(port: int) -> tuple[int, dict[str, str], str]:
    return 200, {}, json.dumps({"rank_ip": "10.0.0.5", "rank_port": port})


class Watched:
    """A started watching Discovery whose script ends in a parked step: past the script,
    the driver thread waits there until the test is done, so every step is deterministic."""

    def __init__(self, script: list[Step], **kwargs: Any) -> None:
        self.parked = threading.Event()
        self.release = threading.Event()
        self.seen: list[DiscoverySnapshot] = []
        self.clock = FakeClock()

        def park(call: Call) -> str:
            self.parked.set()
            self.release.wait(10)
            return "refused"

        self.transport = ScriptedTransport(script, then=park, clock=self.clock)
        self.d = Discovery("10.0.0.5:8998", transport=self.transport, clock=self.clock, hooks=(), watch=True,
                           on_exhausted="return", policy=RetryPolicy(deadline_s=600.0), **kwargs)
        self.d.add_listener(self.seen.append)

    def run_script(self) -> list[DiscoverySnapshot]:
        self.d.start()
        assert self.parked.wait(10), "the script was not consumed"
        return self.seen

    def close(self) -> None:
        self.d.stop(timeout=0)
        self.release.set()
        self.d.stop(timeout=10)


@pytest.fixture
def watched() -> Iterator[list[Watched]]:
    made: list[Watched] = []
    yield made
    for w in made:
        w.close()


def make(watched: list[Watched], script: list[Step], **kwargs: Any) -> Watched:
    w = Watched(script, **kwargs)
    watched.append(w)
    return w


def states(seen: list[DiscoverySnapshot]) -> list[str]:
    return [s.state.value for s in seen]


def test_a_restart_seen_in_the_generation_invalidates_then_resolves_again(watched: list[Watched]) -> None:
    w = make(watched, [topology("a"), topology("a"), topology("b"), 503, topology("b", page_size=16)])
    seen = w.run_script()
    assert states(seen) == ["REGISTERING", "REGISTERED", "REGISTERING", "BACKOFF", "REGISTERING", "REGISTERED"]
    invalidated = seen[2]
    assert invalidated.info is None and invalidated.invalidations == 1
    assert invalidated.last_error is not None and invalidated.last_error.type == "Invalidated"
    assert "restarted (generation a -> b)" in invalidated.last_error.message
    assert "Invalidated: the bootstrap server restarted" in invalidated.describe(invalidated.taken_at)
    final = seen[-1]
    assert final.info is not None and final.info.page_size == 16
    # Never a stale info: only REGISTERED snapshots carry one.
    assert all((s.info is not None) == (s.state is State.REGISTERED) for s in seen)


def test_a_503_after_complete_is_a_restart_against_a_server_without_generation(watched: list[Watched]) -> None:
    # Without a generation the lookup also resolves the topology's one rank, for the watch to compare.
    w = make(watched, [topology(), rank(7000), 503, topology(page_size=32), rank(7000)])
    seen = w.run_script()
    assert states(seen) == ["REGISTERING", "REGISTERED", "REGISTERING", "REGISTERED"]
    assert seen[2].last_error is not None and "HTTP 503" in seen[2].last_error.message
    assert seen[-1].info is not None and seen[-1].info.page_size == 32


def test_a_blip_shorter_than_the_grace_period_changes_nothing(watched: list[Watched]) -> None:
    w = make(watched, [topology("a"), "refused", "timeout", topology("a"), "reset", topology("a")], grace_s=5.0)
    seen = w.run_script()
    assert states(seen) == ["REGISTERING", "REGISTERED"]  # each gap is at most two 1.5 s pauses
    assert w.d.info is not None


def test_a_flapping_server_does_not_make_it_flap(watched: list[Watched]) -> None:
    script: list[Step] = [topology("a")]
    for _ in range(20):
        script += ["refused", topology("a")]
    w = make(watched, script, grace_s=5.0)
    seen = w.run_script()
    assert states(seen) == ["REGISTERING", "REGISTERED"]


def test_a_server_gone_for_longer_than_the_grace_period_invalidates(watched: list[Watched]) -> None:
    # Timeouts may be a blip: they get the grace period (refusals do not: test_watch_hardening.py).
    w = make(watched, [topology("a"), *["timeout"] * 40], grace_s=5.0)
    seen = w.run_script()
    assert states(seen)[:3] == ["REGISTERING", "REGISTERED", "REGISTERING"]
    gone = seen[2]
    assert gone.last_error is not None and "gone for" in gone.last_error.message
    checks = [c.at for c in w.transport.calls[1:]]
    assert checks[0] is not None and gone.taken_at - checks[0] >= 5.0  # not before the grace period
    assert w.d.info is None


def test_an_address_that_moved_without_a_restart_is_seen_by_comparing_targets(watched: list[Watched]) -> None:
    # Upstream's server: no generation header. The same topology, the rank on another port.
    w = make(watched, [topology(), rank(7000), topology(), rank(7000), topology(), rank(7001), topology(), rank(7001)],
             targets=[(0, 0, 0, 0)])
    seen = w.run_script()
    assert states(seen) == ["REGISTERING", "REGISTERED", "REGISTERING", "REGISTERED"]
    assert seen[2].last_error is not None and "moved to 10.0.0.5:7001" in seen[2].last_error.message
    assert seen[1].info is not None and seen[1].info.ranks[(0, 0, 0, 0)] == ("10.0.0.5", 7000)
    assert seen[-1].info is not None and seen[-1].info.ranks[(0, 0, 0, 0)] == ("10.0.0.5", 7001)


def test_a_changed_topology_invalidates(watched: list[Watched]) -> None:
    w = make(watched, [topology("a"), topology("a", attn_tp_size=2), topology("a", attn_tp_size=2)])
    seen = w.run_script()
    assert states(seen) == ["REGISTERING", "REGISTERED", "REGISTERING", "REGISTERED"]
    assert seen[2].last_error is not None and "topology changed" in seen[2].last_error.message


def test_invalidate_needs_watch_and_run_does_not_watch() -> None:
    d = Discovery("10.0.0.5:8998", transport=ScriptedTransport([topology()]), clock=FakeClock(), hooks=())
    with pytest.raises(RuntimeError, match="watch=True"):
        d.invalidate("asked")
    w = Discovery("10.0.0.5:8998", transport=ScriptedTransport([topology("a")]), clock=FakeClock(), hooks=(),
                  watch=True)
    assert w.run().state is State.REGISTERED  # run() returns at REGISTERED; watching needs start()


def test_invalidate_on_demand_resolves_again() -> None:
    d = Discovery("10.0.0.5:8998", transport=ScriptedTransport([topology("a"), topology("a", page_size=8)]),
                  clock=FakeClock(), hooks=(), watch=True)
    assert d.run().state is State.REGISTERED
    d.invalidate("the operator asked")
    reopened = d.poll()
    assert (reopened.state, reopened.info, reopened.invalidations) == (State.REGISTERING, None, 1)
    assert reopened.last_error is not None and reopened.last_error.message == "the operator asked"
    final = d.run()
    assert final.state is State.REGISTERED and final.info is not None and final.info.page_size == 8


def test_a_registration_re_registers_only_when_asked() -> None:
    from coordinator import Registration
    from coordinator.testing import example_payload

    transport = ScriptedTransport([200, 200])
    reg = Registration("http://10.0.0.5:8998/route", example_payload(), transport=transport, clock=FakeClock(),
                       hooks=(), watch=True)
    assert reg.run().state is State.REGISTERED and len(transport.calls) == 1
    reg.invalidate("the bootstrap server restarted")
    assert reg.run().state is State.REGISTERED and len(transport.calls) == 2
    assert reg.snapshot().invalidations == 1
    plain = Registration("http://10.0.0.5:8998/route", example_payload(), transport=ScriptedTransport([200]),
                         clock=FakeClock(), hooks=())
    plain.run()
    with pytest.raises(RuntimeError, match="watch=True"):
        plain.invalidate("asked")


def test_an_invalidation_is_logged_and_counted_by_cause(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    prometheus_client = pytest.importorskip("prometheus_client")
    from coordinator.instrumentation import LogHook, PrometheusHook

    registry = prometheus_client.CollectorRegistry()
    d = Discovery("10.0.0.5:8998", transport=ScriptedTransport([topology("a"), topology("a")]), clock=FakeClock(),
                  hooks=[LogHook(), PrometheusHook(registry)], watch=True, name="prefill0")
    with caplog.at_level(logging.WARNING, logger="coordinator"):
        d.run()
        d.invalidate("the operator asked")
        d.run()
    [line] = [r.getMessage() for r in caplog.records if "discovery.invalidated" in r.getMessage()]
    assert "cause='asked'" in line and "the operator asked" in line
    value = registry.get_sample_value("prefill_startup_invalidations_total",
                                      {"name": "prefill0", "kind": "discovery", "cause": "asked"})
    assert value == 1.0
