"""A watching Discovery against what a real deployment does to it (issue 20): a rank that moves
under SGLang's own bootstrap server (no generation, no long-poll), an overloaded server, a
server whose generation changes on every answer, invalidate() while resolving, a prefill
instance that is down and refusing; and stop() racing start(). All on a fake clock, but for
the real transport's view of a closed connection (on loopback, no sleeping)."""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from coordinator import Discovery, DiscoverySnapshot, FakeClock, Registration, RetryPolicy
from coordinator.instrumentation import LogHook
from coordinator.outcome import Cause, Failure, Outcome, Reason
from coordinator.protocol import GENERATION_HEADER, LONG_POLL_HEADER, QUERY_FIELDS, TOPOLOGY_KEY, RankKey
from coordinator.sim import RestartScenario
from coordinator.sim._restart_model import POLLING, RestartTrial
from coordinator.sim._restart_run import run_restart_trial
from coordinator.testing import ScriptedTransport, example_payload
from coordinator.testing.faultserver import FaultServer, respond
from coordinator.transport import HttpTransport
from coordinator.watch import CLOSE_CHECK_S, GONE_CHECK_S, MAX_LEARNED_TARGETS, RANKS_PER_CHECK, REFUSED_GRACE_S
from states import State

_REFUSED = Outcome.of_failure(Failure.REFUSED, Cause("ConnectionRefusedError", "[Errno 111] Connection refused"))
_HORIZON = Outcome.of_failure(Failure.CANCELLED, Cause("Cancelled", "the test's horizon"))


def topology_body(dp: int = 1, tp: int = 1) -> str:
    return json.dumps({"attn_tp_size": tp, "attn_cp_size": 1, "dp_size": dp, "pp_size": 1, "page_size": 1,
                       "kv_cache_dtype": "auto", "follow_bootstrap_room": True})


def key_of(url: str) -> RankKey:
    query = parse_qs(urlsplit(url).query)
    dp, cp, tp, pp = (int(query[name][0]) for name in QUERY_FIELDS)
    return dp, cp, tp, pp


@dataclass
class Server:
    """A bootstrap server on the test's fake clock, 1 ms a request. ``answer(key, now)`` answers
    each GET (``TOPOLOGY_KEY``: the topology); past ``horizon`` it stops the driver."""

    clock: FakeClock
    answer: Callable[[RankKey, float], Outcome]
    horizon: float
    gets: list[tuple[float, RankKey]] = field(default_factory=list)
    driver: Discovery | None = None

    def get(self, url: str, timeout: float) -> Outcome:
        assert self.driver is not None
        self.clock.advance(0.001)
        now = self.clock.now()
        if now >= self.horizon:
            self.driver.stop()
            return _HORIZON
        key = key_of(url)
        self.gets.append((now, key))
        return self.answer(key, now)

    def abort(self) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass
class ClosingServer(Server):
    """A server that keeps a connection open after each answer and closes it when its process
    dies (``dies_at``), or ``idle_close_s`` after answering (a server closing idle connections)."""

    dies_at: float | None = None
    idle_close_s: float | None = None
    kept_at: float | None = None

    def get(self, url: str, timeout: float) -> Outcome:
        answer = super().get(url, timeout)
        self.kept_at = None if answer.failure is not None else self.clock.now()
        return answer

    def peer_closed(self) -> bool:
        now, kept = self.clock.now(), self.kept_at
        if kept is None:
            return False
        died = self.dies_at is not None and kept < self.dies_at <= now
        return died or (self.idle_close_s is not None and now >= kept + self.idle_close_s)


def watch(server: Server, *, seed: int = 0, **kwargs: Any) -> list[DiscoverySnapshot]:
    """Run a watching Discovery against ``server`` until its horizon; every snapshot it made."""
    d = Discovery("10.0.0.5:8998", transport=server, clock=server.clock, rng=random.Random(seed), watch=True,
                  on_exhausted="return", policy=RetryPolicy(deadline_s=600.0), **{"hooks": (), **kwargs})
    server.driver = d
    seen: list[DiscoverySnapshot] = []
    d.add_listener(seen.append)
    d.run(watch=True)
    return seen


def invalidated(seen: list[DiscoverySnapshot]) -> list[DiscoverySnapshot]:
    return [s for before, s in zip(seen, seen[1:]) if s.invalidations > before.invalidations]


def topology(generation: str) -> tuple[int, dict[str, str], str]:
    return 200, {GENERATION_HEADER: generation}, topology_body()


def scripted_watch(script: list[Any], **kwargs: Any) -> tuple[list[DiscoverySnapshot], ScriptedTransport]:
    """A watching Discovery through ``script``; stopped at its end."""
    clock = FakeClock()
    holder: list[Discovery] = []

    def stop(call: Any) -> Outcome:
        holder[0].stop()
        return _HORIZON

    transport = ScriptedTransport(script, then=stop, clock=clock)
    d = Discovery("10.0.0.5:8998", transport=transport, clock=clock, rng=random.Random(0), watch=True, hooks=(),
                  on_exhausted="return", policy=RetryPolicy(deadline_s=600.0), **kwargs)
    holder.append(d)
    seen: list[DiscoverySnapshot] = []
    d.add_listener(seen.append)
    d.run(watch=True)
    return seen, transport


def states(seen: list[DiscoverySnapshot]) -> list[str]:
    return [s.state.value for s in seen]


# -- 1. a moved rank, against SGLang's own server ----------------------------------------------------


def upstream(ports: Mapping[RankKey, int], *, dp: int = 1, tp: int = 1,
             moves: Mapping[RankKey, tuple[float, int]] | None = None) -> Callable[[RankKey, float], Outcome]:
    """SGLang's server: no generation, no long-poll; rank ``k`` moves to ``moves[k][1]`` at ``moves[k][0]``."""
    def answer(key: RankKey, now: float) -> Outcome:
        if key == TOPOLOGY_KEY:
            return Outcome.of_status(200, topology_body(dp, tp))
        at, moved = (moves or {}).get(key, (float("inf"), 0))
        port = moved if now >= at else ports[key]
        return Outcome.of_status(200, json.dumps({"rank_ip": "10.0.0.5", "rank_port": port}))
    return answer


def test_a_rank_that_moves_under_sglangs_own_server_is_caught_without_targets() -> None:
    ranks = {(0, 0, t, 0): 7000 + t for t in range(4)}
    clock = FakeClock()
    server = Server(clock, upstream(ranks, tp=4, moves={(0, 0, 2, 0): (10.0, 7102)}), horizon=30.0)
    seen = watch(server)
    first = next(s for s in seen if s.state is State.REGISTERED)
    assert first.info is not None and dict(first.info.ranks) == {k: ("10.0.0.5", p) for k, p in ranks.items()}
    [moved, *_] = invalidated(seen)
    assert moved.last_error is not None and "rank (0, 0, 2, 0) moved to 10.0.0.5:7102" in moved.last_error.message
    # 4 ranks, 2 compared a check: seen within two checks (each at most 1.5 s after the last).
    assert 10.0 < moved.taken_at <= 10.0 + 2 * 1.5 + 0.01
    again = next(s for s in seen if s.state is State.REGISTERED and s.invalidations == 1)
    assert again.info is not None and again.info.ranks[(0, 0, 2, 0)] == ("10.0.0.5", 7102)


def test_the_watch_costs_sglangs_server_at_most_three_gets_a_check() -> None:
    ranks = {(d, 0, t, 0): 7000 + 8 * d + t for d in range(2) for t in range(4)}
    clock = FakeClock()
    server = Server(clock, upstream(ranks, dp=2, tp=4), horizon=120.0)
    seen = watch(server)
    resolved = next(s for s in seen if s.state is State.REGISTERED).taken_at
    checks = [(at, key) for at, key in server.gets if at > resolved]
    topology_gets = sum(key == TOPOLOGY_KEY for _, key in checks)
    assert len(checks) <= (1 + RANKS_PER_CHECK) * topology_gets
    assert len(checks) / (checks[-1][0] - resolved) <= 3.0  # per second, on average
    # In turn: every one of the 8 ranks compared every 4 checks.
    compared = [key for _, key in checks if key != TOPOLOGY_KEY]
    assert all(set(compared[i:i + 8]) == set(ranks) for i in range(0, len(compared) - 8, 8))
    assert invalidated(seen) == []


def test_a_large_topology_is_sampled_evenly_and_each_watcher_takes_other_ranks() -> None:
    ranks = {(d, 0, t, 0): 7000 + 16 * d + t for d in range(16) for t in range(16)}  # 256 ranks

    def resolved_ranks(seed: int) -> set[RankKey]:
        clock = FakeClock()
        seen = watch(Server(clock, upstream(ranks, dp=16, tp=16), horizon=0.5), seed=seed)
        info = next(s for s in seen if s.state is State.REGISTERED).info
        assert info is not None and len(info.ranks) == MAX_LEARNED_TARGETS
        assert all(info.ranks[k] == ("10.0.0.5", ranks[k]) for k in info.ranks)
        return set(info.ranks)

    samples = [resolved_ranks(seed) for seed in range(6)]
    for sample in samples:
        assert {d for d, _, _, _ in sample} == set(range(16))  # every dp group, by the even spread
    assert len(set.union(*samples)) > MAX_LEARNED_TARGETS


def test_our_server_has_a_generation_so_the_watch_compares_no_ranks() -> None:
    clock = FakeClock()

    def answer(key: RankKey, now: float) -> Outcome:
        assert key == TOPOLOGY_KEY, "no rank lookup: the generation says the registrations are the same"
        return Outcome.of_status(200, topology_body(tp=4), headers={GENERATION_HEADER.lower(): "a"})

    seen = watch(Server(clock, answer, horizon=10.0))
    registered = next(s for s in seen if s.state is State.REGISTERED)
    assert registered.info is not None and dict(registered.info.ranks) == {}


# -- 2. an overloaded server is a blip -----------------------------------------------------------------


def overloaded(retry_after: str | None, generation: str) -> tuple[int, dict[str, str]]:
    headers = {GENERATION_HEADER: generation}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return 503, headers


def test_an_overload_503_with_the_same_generation_and_retry_after_is_a_blip() -> None:
    seen, transport = scripted_watch([topology("a"), overloaded("1", "a"), overloaded("2", "a"), topology("a")])
    assert states(seen) == ["REGISTERING", "REGISTERED"]  # stopped at the script's end, never invalidated
    at = [c.at for c in transport.calls]
    assert at[2] is not None and at[1] is not None and at[3] is not None
    assert at[2] - at[1] >= 1.0 and at[3] - at[2] >= 2.0  # its Retry-After honoured by the next check


@pytest.mark.parametrize(("answer", "why"), [
    (overloaded(None, "a"), "no Retry-After: not complete any more"),
    (overloaded("1", "b"), "another generation: it restarted"),
    ((503, {"Retry-After": "1"}), "no generation (SGLang's): not fully registered yet"),
])
def test_any_other_503_still_means_the_instance_restarted(answer: Any, why: str) -> None:
    script = [topology("a"), answer]
    if GENERATION_HEADER not in answer[1]:
        script = [(200, {}, topology_body()), (200, {}, json.dumps({"rank_ip": "10.0.0.5", "rank_port": 7000})), answer]
    seen, _ = scripted_watch(script)
    [restart] = invalidated(seen)
    assert restart.last_error is not None and "HTTP 503" in restart.last_error.message, why


# -- 3. damped invalidations, bounded WARNING lines ----------------------------------------------------


def test_a_server_changing_generation_on_every_answer_is_damped_and_its_lines_bounded(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    answers = iter(range(10**6))

    def flapping(key: RankKey, now: float) -> Outcome:
        # Changing on every answer for the first 20 s; then stable; then one restart at 100 s.
        n = next(answers) if now < 20.0 else 10**6 if now < 100.0 else 10**6 + 1
        headers = {GENERATION_HEADER.lower(): f"g{n}", LONG_POLL_HEADER.lower(): "30"}
        return Outcome.of_status(200, topology_body(), headers=headers)

    with caplog.at_level(logging.WARNING, logger="coordinator"):
        seen = watch(Server(clock, flapping, horizon=130.0), hooks=[LogHook()])
    lines = [r for r in caplog.records if "discovery.invalidated" in r.getMessage()]
    storm = [s for s in invalidated(seen) if s.taken_at < 20.0]
    # Unbounded (before): ~10 a second, as fast as the long-polls come back. Damped: the first at
    # once, then at least 1, 2, 4 and 8 s apart: 5 in 20 s, each with its WARNING line and count.
    assert storm[0].taken_at < 0.2 and len(storm) <= 5
    gaps = [b.taken_at - a.taken_at for a, b in zip(storm, storm[1:])]
    assert all(gap >= 2 ** k for k, gap in enumerate(gaps))
    last = storm[-1].last_error
    assert last is not None and "in quick succession: the next check waits" in last.message
    # One WARNING line per invalidation, so as bounded: the storm's, one when it settles, one at 100 s.
    assert len(lines) == len(invalidated(seen)) <= len(storm) + 2
    assert all("invalidations=" in r.getMessage() for r in lines)  # each line carries the count so far
    # After a quiet minute the streak is over: the next restart is acted on at the next check.
    late = [s for s in invalidated(seen) if s.taken_at >= 100.0]
    assert len(late) == 1 and late[0].taken_at < 100.0 + 0.2
    assert late[0].last_error is not None and "quick succession" not in late[0].last_error.message


# -- 4. invalidate() while resolving is a no-op -------------------------------------------------------


def test_invalidate_before_registered_is_a_no_op_and_is_not_remembered() -> None:
    transport = ScriptedTransport([503, topology("a")])
    d = Discovery("10.0.0.5:8998", transport=transport, clock=FakeClock(), hooks=(), watch=True)
    asked_in: list[State] = []

    def ask(s: DiscoverySnapshot) -> None:
        if s.state in (State.REGISTERING, State.BACKOFF):  # from the driver thread, mid-resolution
            asked_in.append(s.state)
            d.invalidate("asked while resolving")

    assert d.poll().state is State.REGISTERING
    d.invalidate("asked while resolving")  # no error, no trigger
    assert (d.state, d.snapshot().invalidations) == (State.REGISTERING, 0)
    d.add_listener(ask)
    final = d.run()
    assert final.state is State.REGISTERED and final.invalidations == 0 and asked_in
    after = d.poll()  # before the fix, the request remembered from REGISTERING fired here
    assert (after.state, after.invalidations, after.seq) == (State.REGISTERED, 0, final.seq)
    assert len(transport.calls) == 2


def test_a_registration_asked_before_registered_is_not_registered_twice() -> None:
    transport = ScriptedTransport([200])
    reg = Registration("http://10.0.0.5:8998/route", example_payload(), transport=transport, clock=FakeClock(),
                       hooks=(), watch=True)
    reg.invalidate("before start")  # INIT
    assert reg.run().state is State.REGISTERED
    assert reg.poll().invalidations == 0 and len(transport.calls) == 1


# -- 5. a prefill instance down and refusing ------------------------------------------------------------


def test_refusals_invalidate_within_half_a_second_not_after_grace() -> None:
    seen, transport = scripted_watch([topology("a"), *["refused"] * 10], grace_s=5.0)
    [gone] = invalidated(seen)
    first_refused = transport.calls[1].at
    assert first_refused is not None
    assert REFUSED_GRACE_S <= gone.taken_at - first_refused <= 0.125 + 0.375  # two or three checks at the gone pace
    assert gone.last_error is not None and "refuses connections" in gone.last_error.message
    assert gone.info is None


def test_timeouts_and_resets_keep_the_grace_period() -> None:
    seen, _ = scripted_watch([topology("a"), *["timeout", "reset"] * 4, topology("a")], grace_s=5.0)
    assert invalidated(seen) == []  # 8 failed checks at most 0.375 s apart: within the grace period


def test_a_refusal_after_timeouts_for_longer_than_the_refusal_grace_invalidates_at_once() -> None:
    seen, transport = scripted_watch([topology("a"), "timeout", "timeout", "refused"], grace_s=5.0)
    [gone] = invalidated(seen)
    assert gone.taken_at == transport.calls[3].at and gone.last_error is not None
    assert "refuses connections" in gone.last_error.message


def test_a_kept_connection_closing_brings_the_check_forward() -> None:
    down_at = 10.3  # the prefill instance's main process exits: its server's connections close

    def answer(key: RankKey, now: float) -> Outcome:
        if now >= down_at:
            return _REFUSED
        return Outcome.of_status(200, topology_body(), headers={GENERATION_HEADER.lower(): "a"})

    clock = FakeClock()
    server = ClosingServer(clock, answer, horizon=20.0, dies_at=down_at)
    seen = watch(server)
    [gone, *_] = invalidated(seen)
    first_refused = next(at for at, _ in server.gets if at >= down_at)
    assert first_refused - down_at <= CLOSE_CHECK_S + 0.001  # not at the next turn, up to 1.5 s away
    assert gone.taken_at - first_refused <= 2 * 1.5 * GONE_CHECK_S + 0.002
    assert gone.last_error is not None and "refuses connections" in gone.last_error.message


def test_a_server_closing_idle_connections_while_alive_costs_one_extra_check() -> None:
    def answer(key: RankKey, now: float) -> Outcome:
        return Outcome.of_status(200, topology_body(), headers={GENERATION_HEADER.lower(): "a"})

    clock = FakeClock()
    server = ClosingServer(clock, answer, horizon=40.0, idle_close_s=0.2)
    seen = watch(server)
    assert invalidated(seen) == []
    at = [t for t, _ in server.gets]
    # The first close brings one check forward; its answer shows the server alive, so closes
    # tell nothing from then on and the checks keep their pace (at least 0.5 s apart).
    assert sum(b - a < 0.5 for a, b in zip(at, at[1:])) == 1


def test_the_restart_simulation_models_the_kept_connection() -> None:
    # The same trial against a server keeping connections open (SGLang's aiohttp, ours) and one
    # closing them after each answer: the close brings the refusal forward by up to a turn.
    scenario = RestartScenario(down_s=20.0, latency_s=0.001)
    t = RestartTrial(0, restart_at=10.0, down_s=20.0, ready_after_s=0.3, start_at=0.3, heartbeat_phase_s=1.0,
                     rng_seed=5)
    kept = run_restart_trial(POLLING, t, scenario)
    not_kept = run_restart_trial(POLLING, t, replace(scenario, keep_alive=False))
    assert kept.cause == not_kept.cause == "refused"
    assert REFUSED_GRACE_S <= kept.stale_s <= CLOSE_CHECK_S + 2 * 1.5 * GONE_CHECK_S + 0.005
    assert kept.stale_s + 0.5 < not_kept.stale_s <= 1.5 + 2 * 1.5 * GONE_CHECK_S + 0.005


def test_the_http_transport_sees_the_server_close_the_kept_connection() -> None:
    with FaultServer(respond(200, topology_body(), keep_alive=True)) as server:
        transport = HttpTransport()
        assert transport.get(f"{server.base_url}/route?x=1", 5.0).status == 200
        assert transport.peer_closed() is False  # open, idle, nothing to read
    # close() shut every connection: the FIN is in our socket's queue on loopback.
    assert transport.peer_closed() is True
    assert transport.get(f"{server.base_url}/route?x=1", 5.0).failure is Failure.REFUSED
    assert transport.peer_closed() is False  # nothing kept after a refusal
    transport.close()


def test_the_http_transport_keeps_nothing_after_a_connection_close_answer() -> None:
    with FaultServer(respond(200, topology_body(), keep_alive=False)) as server:
        transport = HttpTransport()
        assert transport.get(f"{server.base_url}/route?x=1", 5.0).status == 200
        assert transport.peer_closed() is False
    transport.close()


# -- 6. stop() racing start() ----------------------------------------------------------------------------


def test_stop_racing_start_waits_for_the_started_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forces stop() into the window where start() has made its thread but not started it."""
    original = threading.Thread  # the stopper's own thread must not be hooked
    errors: list[BaseException] = []
    stop_reached = threading.Event()
    d = Registration("http://10.0.0.5:8998/route", example_payload(), transport=ScriptedTransport([], then=200),
                     clock=FakeClock(), hooks=(), on_exhausted="return")

    class Lifecycle:
        """start()'s lock, telling the test when stop() has come to it."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __enter__(self) -> Any:
            if threading.current_thread().name == "stopper":
                stop_reached.set()
            return self.inner.__enter__()

        def __exit__(self, *exc: object) -> Any:
            return self.inner.__exit__(*exc)

    def stopper() -> None:
        try:
            d.stop(timeout=10)
        except BaseException as exc:  # noqa: BLE001 - what the test looks for
            errors.append(exc)
        finally:
            stop_reached.set()

    class Racing(threading.Thread):
        def start(self) -> None:
            if self.name.startswith("prefill-startup-"):
                # start() is under way: stop() now, from another thread, before this one starts.
                original(target=stopper, name="stopper", daemon=True).start()
                assert stop_reached.wait(10)
            super().start()

    # raising=False: before the fix the driver had no such lock (and stop() raised from join()).
    monkeypatch.setattr(d, "_lifecycle", Lifecycle(d.__dict__.get("_lifecycle", threading.Lock())), raising=False)
    monkeypatch.setattr(threading, "Thread", Racing)
    d.start()
    monkeypatch.undo()
    thread = d._thread
    assert thread is not None
    thread.join(10)
    for t in threading.enumerate():
        if t.name == "stopper":
            t.join(10)
    assert errors == []  # before: RuntimeError("cannot join thread before it is started")
    snap = d.snapshot()
    assert (snap.state, snap.reason) == (State.FAILED, Reason.CANCELLED)
