"""The decode side: Discovery on the same machine, on a fake clock and against a real server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from typing import Any

import pytest

from coordinator import (
    BootstrapServer,
    Discovery,
    DiscoveryFailed,
    FakeClock,
    PrefillInfo,
    Registration,
    RetryPolicy,
    Snapshot,
)
from coordinator.clock import SystemClock
from coordinator.instrumentation import AttemptRecord, Record
from coordinator.policy import Lane
from coordinator.testing import ScriptedTransport, ScriptExhausted, Step, example_payload, free_port
from states import State

TOPOLOGY: dict[str, Any] = {
    "attn_tp_size": 4, "attn_cp_size": 1, "dp_size": 2, "pp_size": 1, "page_size": 64,
    "kv_cache_dtype": "auto", "follow_bootstrap_room": True, "enable_dsa_cache_layer_split": False,
    "prefill_http_port": 30000,
}


def ok(body: object) -> tuple[int, dict[str, str], str]:
    return 200, {}, json.dumps(body)


def make(script: Iterable[Step], clock: FakeClock | None = None, **kwargs: Any) -> tuple[Discovery, ScriptedTransport]:
    clock = clock or FakeClock()
    transport = ScriptedTransport(script, clock=clock)
    kwargs.setdefault("on_exhausted", "return")
    return Discovery("10.0.0.5:8998", clock=clock, transport=transport, hooks=(), **kwargs), transport


# -- the machine, on a fake clock ----------------------------------------------------------


def test_503_until_complete_then_topology() -> None:
    clock = FakeClock()
    d, t = make([503, (503, {}, "3 of 8 prefill ranks registered"), ok(TOPOLOGY)], clock)
    assert d.info is None
    snap = d.run()
    assert (snap.state, snap.attempt, snap.reason) == (State.REGISTERED, 3, "registered")
    assert d.info == PrefillInfo(**TOPOLOGY)
    assert snap.info == d.info and snap.to_dict()["info"]["page_size"] == 64
    # The pending lane's pace, jittered below its envelope: 0.1 s, then 0.2 s.
    assert 0.05 <= clock.sleeps[0] <= 0.1 and 0.1 <= clock.sleeps[1] <= 0.2
    assert all(c.method == "GET" and c.body is None for c in t.calls)
    assert t.calls[0].url == ("http://10.0.0.5:8998/route?prefill_dp_rank=-1&prefill_cp_rank=-1"
                              "&target_tp_rank=-1&target_pp_rank=-1")


def test_pending_never_reaches_the_trouble_lane() -> None:
    records: list[Record] = []
    clock = FakeClock()
    script: list[Step] = [503] * 40
    d = Discovery("h:1", clock=clock, transport=ScriptedTransport(script + [ok(TOPOLOGY)], clock=clock),
                  hooks=[records.append])
    d.run()
    lanes = {r.decision.lane for r in records if isinstance(r, AttemptRecord) and r.decision.lane}
    assert lanes == {Lane.PENDING}
    assert max(clock.sleeps) <= 0.4  # the lane's cap, however long the wait


def test_targets_resolved_after_404s_and_kept_across_rounds() -> None:
    targets = [(0, 0, 1, 0), (1, 0, 3, 0)]
    d, t = make([ok(TOPOLOGY), ok({"rank_ip": "10.0.0.7", "rank_port": 17001}), 404,
                 ok({"rank_ip": "10.0.0.8", "rank_port": 17007})], targets=targets)
    snap = d.run()
    assert snap.state is State.REGISTERED and snap.attempt == 2
    assert d.info is not None
    assert dict(d.info.ranks) == {(0, 0, 1, 0): ("10.0.0.7", 17001), (1, 0, 3, 0): ("10.0.0.8", 17007)}
    # Round 2 asks neither for the topology nor for the rank it already has.
    assert "prefill_dp_rank=1&prefill_cp_rank=0&target_tp_rank=3&target_pp_rank=0" in t.calls[3].url
    assert len(t.calls) == 4


@pytest.mark.parametrize("expect,field", [({"page_size": 32}, "page_size"),
                                          ({"kv_cache_dtype": "fp8_e4m3"}, "kv_cache_dtype")])
def test_mismatch_fails_permanently_after_one_lookup(expect: dict[str, Any], field: str) -> None:
    d, t = make([ok(TOPOLOGY)], expect=expect)
    snap = d.run()
    assert (snap.state, snap.reason, snap.attempt, len(t.calls)) == (State.FAILED, "permanent", 1, 1)
    assert snap.last_error is not None
    assert field in snap.last_error.message
    assert repr(TOPOLOGY[field]) in snap.last_error.message and repr(expect[field]) in snap.last_error.message


@pytest.mark.parametrize("body,field", [
    ("not json", "body"),
    ("[1, 2]", "body"),
    (json.dumps({k: v for k, v in TOPOLOGY.items() if k != "page_size"}), "page_size"),
    (json.dumps({**TOPOLOGY, "attn_tp_size": "4"}), "attn_tp_size"),
    (json.dumps({**TOPOLOGY, "attn_tp_size": True}), "attn_tp_size"),
    (json.dumps({**TOPOLOGY, "dp_size": 0}), "dp_size"),
    (json.dumps({**TOPOLOGY, "follow_bootstrap_room": 1}), "follow_bootstrap_room"),
])
def test_malformed_topology_is_an_error_naming_the_field(body: str, field: str) -> None:
    d, _ = make([(200, {}, body)])
    snap = d.run()
    assert (snap.state, snap.reason) == (State.FAILED, "permanent")
    assert snap.last_error is not None and f"'{field}'" in snap.last_error.message


@pytest.mark.parametrize("body,field", [('{"rank_ip": "x"}', "rank_port"),
                                        ('{"rank_ip": 1, "rank_port": 2}', "rank_ip"),
                                        ('{"rank_ip": "x", "rank_port": 70000}', "rank_port")])
def test_malformed_rank_answer(body: str, field: str) -> None:
    d, _ = make([ok(TOPOLOGY), (200, {}, body)], targets=[(0, 0, 0, 0)])
    snap = d.run()
    assert snap.last_error is not None
    assert snap.reason == "permanent" and f"'{field}'" in snap.last_error.message


def test_target_outside_the_topology_is_permanent() -> None:
    d, _ = make([ok(TOPOLOGY)], targets=[(0, 0, 4, 0)])
    snap = d.run()
    assert snap.last_error is not None
    assert snap.reason == "permanent" and "attn_tp_size=4" in snap.last_error.message


def test_refused_and_5xx_take_their_lanes() -> None:
    records: list[Record] = []
    clock = FakeClock()
    d = Discovery("h:1", clock=clock, hooks=[records.append],
                  transport=ScriptedTransport(["refused", 500, ok(TOPOLOGY)], clock=clock))
    assert d.run().state is State.REGISTERED
    attempts = [r for r in records if isinstance(r, AttemptRecord)]
    assert [r.decision.lane for r in attempts][:2] == [Lane.REFUSED, Lane.TROUBLE]
    assert [r.label for r in attempts] == ["refused", "http_5xx", "registered"]


def test_run_raises_discovery_failed() -> None:
    d, _ = make([ok(TOPOLOGY)], expect={"page_size": 1}, on_exhausted="raise")
    with pytest.raises(DiscoveryFailed, match="page_size"):
        d.run()


def test_deadline_ends_failed() -> None:
    clock = FakeClock()
    d, _ = make([503] * 100, clock, policy=RetryPolicy(deadline_s=3))
    snap = d.run()
    assert (snap.state, snap.reason) == (State.FAILED, "deadline")
    assert clock.now() <= 3


def test_running_past_the_script_is_a_test_error() -> None:
    d, _ = make([503])
    with pytest.raises(ScriptExhausted, match="attempt 2"):
        d.run()


def test_stop_cancels() -> None:
    d, t = make([503, 503])
    d.poll()
    d.poll()
    snap = d.stop()
    assert (snap.state, snap.reason) == (State.FAILED, "cancelled") and t.closed


@pytest.mark.parametrize("bootstrap,url", [
    ("10.0.0.5:8998", "http://10.0.0.5:8998/route"),
    ("[fe80::1]:8998", "http://[fe80::1]:8998/route"),
    ("http://node0:8998", "http://node0:8998/route"),
    ("http://node0:8998/route", "http://node0:8998/route"),
])
def test_bootstrap_forms(bootstrap: str, url: str) -> None:
    assert Discovery(bootstrap, hooks=()).url == url


@pytest.mark.parametrize("kwargs,field", [
    ({"bootstrap": "nohost"}, "bootstrap"),
    ({"bootstrap": "h:0"}, "bootstrap"),
    ({"bootstrap": "ftp://h:1"}, "bootstrap"),
    ({"bootstrap": "http://h:1/other"}, "bootstrap"),
    ({"targets": [(0, 0, 0)]}, "targets"),
    ({"targets": [(0, 0, -1, 0)]}, "targets"),
    ({"targets": [(0, 0, True, 0)]}, "targets"),
    ({"expect": {"page_sz": 1}}, "page_sz"),
    ({"expect": {"page_size": "64"}}, "page_size"),
])
def test_bad_input_names_the_field_before_any_lookup(kwargs: dict[str, Any], field: str) -> None:
    transport = ScriptedTransport([])
    kwargs = {"bootstrap": "h:1", **kwargs}
    with pytest.raises((ValueError, TypeError), match=field):
        Discovery(kwargs.pop("bootstrap"), transport=transport, hooks=(), **kwargs)
    assert transport.calls == []


# -- against a real bootstrap server ------------------------------------------------------------


def test_discovery_started_before_the_server_sees_8_late_ranks_within_half_a_second() -> None:
    port = free_port()
    first_refusal = threading.Event()
    targets = [(0, 0, tp, 0) for tp in range(8)]
    d = Discovery(f"127.0.0.1:{port}", targets=targets, expect={"page_size": 1, "kv_cache_dtype": "auto"},
                  hooks=(), name="prefill0")
    def on_snapshot(s: Snapshot) -> None:
        if s.last_error is not None:
            first_refusal.set()

    d.add_listener(on_snapshot)
    d.start()
    regs: list[Registration] = []
    try:
        assert first_refusal.wait(10)
        last_error = d.snapshot().last_error
        assert last_error is not None and last_error.type == "ConnectionRefusedError"
        with BootstrapServer("127.0.0.1", port) as server:
            regs = [Registration(server.url, example_payload(rank, 8), name=f"rank{rank}", hooks=()).start()
                    for rank in range(8)]
            finals = [r.wait(30) for r in regs]
            snap = d.wait(30)
    finally:
        d.stop()
        for r in regs:
            r.stop()
    assert all(f.state is State.REGISTERED for f in finals)
    assert snap.state is State.REGISTERED
    # Both sides read the same monotonic clock.
    assert isinstance(d.clock, SystemClock)
    lag = snap.taken_at - max(f.taken_at for f in finals)
    assert lag <= 0.5, lag
    assert d.info is not None
    assert d.info.attn_tp_size == 8 and d.info.page_size == 1
    assert dict(d.info.ranks) == {(0, 0, tp, 0): ("127.0.0.1", 17000 + tp) for tp in range(8)}


def test_page_size_mismatch_against_the_real_server() -> None:
    with BootstrapServer() as server:
        Registration(server.url, example_payload(), hooks=()).run()
        d = Discovery(f"127.0.0.1:{server.port}", expect={"page_size": 64}, hooks=(), on_exhausted="return")
        snap = d.run()
    assert (snap.state, snap.reason, snap.attempt) == (State.FAILED, "permanent", 1)
    assert snap.last_error is not None
    assert snap.last_error.message == "page_size: the prefill instance has 1, this decode instance expects 64"
