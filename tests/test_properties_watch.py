"""Property test of a watching Discovery under restarts: whatever the server does after the
prefill instance was resolved (restarts, quick restarts, 503s, refusals, resets), no
snapshot is torn and no stale info is ever handed out."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import Discovery, DiscoverySnapshot, FakeClock, RetryPolicy
from coordinator.outcome import Cause, Failure, Outcome
from coordinator.protocol import GENERATION_HEADER
from states import State

EVENTS = ("ok", "restart", "quick_restart", "503", "refused", "reset")


def topology(generation: int) -> str:
    # The page size tells which generation a topology came from.
    return json.dumps({"attn_tp_size": 1, "attn_cp_size": 1, "dp_size": 1, "pp_size": 1,
                       "page_size": generation + 1, "kv_cache_dtype": "auto", "follow_bootstrap_room": True})


@dataclass
class Served:
    seq: int  # the driver's snapshot when the request came in
    state: State
    resolved: int | None  # the generation its info came from, if any
    generation: int  # the server's generation when it answered
    kind: str


@dataclass
class Server:
    """Answers each GET with the next planned event; stops the driver after the plan."""

    plan: list[str]
    clock: FakeClock
    generation: int = 0
    served: list[Served] = field(default_factory=list)
    driver: Discovery | None = None

    def get(self, url: str, timeout: float) -> Outcome:
        assert self.driver is not None
        self.clock.advance(0.001)
        s = self.driver.snapshot()
        resolved = None if s.info is None else s.info.page_size - 1
        if not self.plan:
            self.driver.stop()
            return Outcome.of_failure(Failure.REFUSED, Cause("ConnectionRefusedError", "refused"))
        kind = self.plan.pop(0)
        if kind in ("restart", "quick_restart"):
            self.generation += 1
        self.served.append(Served(s.seq, s.state, resolved, self.generation, kind))
        if kind in ("ok", "quick_restart"):
            return Outcome.of_status(200, topology(self.generation),
                                     headers={GENERATION_HEADER.lower(): str(self.generation)})
        if kind in ("restart", "503"):
            return Outcome.of_status(503, "not yet")
        failure = Failure.REFUSED if kind == "refused" else Failure.RESET
        return Outcome.of_failure(failure, Cause("OSError", kind))

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


@settings(max_examples=150, deadline=None)
@given(plan=st.lists(st.sampled_from(EVENTS), min_size=1, max_size=60),
       grace=st.floats(0.0, 8.0), interval=st.floats(0.05, 3.0), seed=st.integers(0, 2**32 - 1))
def test_restarts_never_tear_a_snapshot_nor_leave_stale_info(plan: list[str], grace: float, interval: float,
                                                            seed: int) -> None:
    clock = FakeClock()
    server = Server(["ok", *plan], clock)
    d = Discovery("10.0.0.5:8998", transport=server, clock=clock, rng=random.Random(seed), hooks=(), watch=True,
                  grace_s=grace, watch_interval_s=interval, on_exhausted="return",
                  policy=RetryPolicy(deadline_s=None))
    server.driver = d
    seen: list[DiscoverySnapshot] = []
    d.add_listener(seen.append)
    d.run(watch=True)

    for before, after in zip(seen, seen[1:]):
        assert after.seq == before.seq + 1  # nothing torn, nothing skipped
        assert after.invalidations >= before.invalidations
    for s in seen:
        assert (s.info is not None) == (s.state is State.REGISTERED), s
    by_seq = {s.seq: s for s in seen}
    for call in server.served:
        if call.state is not State.REGISTERED:
            continue
        # A check while REGISTERED that saw another generation, or an incomplete instance: the
        # very next snapshot drops the info (no request admitted after it gets the old ports).
        if call.kind == "503" or call.kind == "restart" or call.generation != call.resolved:
            following = by_seq.get(call.seq + 1)
            assert following is not None, (call, seen[-1])
            assert following.state is State.REGISTERING and following.info is None, following
    # Every REGISTERED snapshot holds the generation the server had when it was resolved.
    for s in seen:
        if s.state is State.REGISTERED:
            assert s.info is not None
            answered = [c for c in server.served if c.seq == s.seq - 1 and c.kind in ("ok", "quick_restart")]
            assert answered and s.info.page_size == answered[-1].generation + 1
