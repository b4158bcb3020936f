"""A prefill instance restarts at the same bootstrap address: how long a watching decode
instance hands out the dead rank ports, and how long after the new instance is complete it
has the new ones. Ours (a real watching :class:`~coordinator.Discovery`, polling or
long-polling) against upstream SGLang 0.5.23's heartbeat, on identical draws.

Trial ``k`` draws, from ``seeded_rng(f"{seed}/restart/{k}")`` whatever the model and ``D``:
the restart ``T ~ U[40, 80] s`` (generation A complete before it, its ports dead from it),
``R ~ U[0.05, 0.5] s`` (the new instance is complete R after its server listens again, at
``T + D``), the decode instance's start ``~ U[0, 1) s`` and the seed of its jitter (its check
phase), and upstream's heartbeat phase ``φ ~ U[0, 5) s``. The server refuses
connections during ``[T, T + D)``, then answers 503 (generation B) until complete, then
generation B's topology and ports. A request reaches the server half a round trip
(``latency_s``) after it is sent. The server keeps a connection open after each answer it
does not hold (as SGLang's aiohttp server and ours do), and when it dies at ``T`` the
client sees that connection close half a round trip later (the kernel closes a dead
process's sockets); a held long-poll is reset then.

Upstream's model (no driver): ``GET /health`` at ``φ + 5 k`` fails iff nothing listens at
that instant; after 2 consecutive failures the cached prefill info is dropped, and the next
requests re-fetch it once a second (assuming requests keep arriving) until it is complete.
``/health`` answers 200 as soon as the server listens, so a restart shorter than two
heartbeats is never noticed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any
from urllib.parse import parse_qs, urlsplit

from coordinator import validate
from coordinator.clock import FakeClock, seeded_rng
from coordinator.outcome import Cause, Failure, Outcome
from coordinator.protocol import (
    GENERATION_HEADER,
    LONG_POLL_HEADER,
    SEEN_PARAM,
    TOPOLOGY_KEY,
    WAIT_PARAM,
    PrefillInfo,
    route_query,
)
from coordinator.sim._model import _REFUSED, MAX_LATENCY_S, MAX_SPAN_S, MAX_TRIALS
from coordinator.watch import DEFAULT_GRACE_S, DEFAULT_WATCH_INTERVAL_S, LONG_POLL_S


class RestartModel(str, Enum):
    """Who keeps the decode instance's view of the prefill instance: ours (a watching
    Discovery, polling or long-polling) or upstream's heartbeat. Code tells them apart by
    identity; the value is only the display name (a ``str``, so a model keys JSON and heads
    a table column as its name)."""

    POLLING = "ours, polling"
    LONG_POLL = "ours, long-poll"
    HEARTBEAT = "upstream, heartbeat"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, model: RestartModel | str) -> RestartModel:
        """``model`` itself, or the model that display name names."""
        try:
            return cls(model)
        except ValueError:
            raise ValueError(f"model must be one of {', '.join(m.value for m in cls)}, got {model!r}") from None


POLLING, LONG_POLL, HEARTBEAT = RestartModel.POLLING, RestartModel.LONG_POLL, RestartModel.HEARTBEAT
MODELS = tuple(RestartModel)

RESTART_AT_S = (40.0, 80.0)  # T: late enough for a steady state (a few long-polls) before it
READY_AFTER_S = (0.05, 0.5)  # R: our ranks re-register within half a second of the server listening
HORIZON_S = 30.0  # after the new instance is complete, the simulation stops
HEARTBEAT_S = 5.0  # SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL
HEARTBEAT_FAILURES = 2  # SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE

TARGET = (0, 0, 0, 0)  # the rank the decode instance resolves: its port changes with the restart
PORTS = {"A": 17000, "B": 18000}
_A, _DOWN, _PENDING, _B = "A", "down", "pending", "B"
_TOPOLOGY = json.dumps(PrefillInfo(attn_tp_size=1, attn_cp_size=1, dp_size=1, pp_size=1, page_size=1,
                                   kv_cache_dtype="auto").topology_json())
_TOPOLOGY_QUERY = route_query(TOPOLOGY_KEY)
_RESET = Outcome.of_failure(Failure.RESET, Cause("ConnectionResetError", "[Errno 104] Connection reset by peer"))
_HORIZON = Outcome.of_failure(Failure.CANCELLED, Cause("Cancelled", "the simulation's horizon"))


@dataclass(frozen=True)
class RestartScenario:
    """One restart (down ``down_s``), ``trials`` times; our watch's settings and the round trip."""

    down_s: float
    trials: int = 1000
    seed: int = 0
    watch_interval_s: float = DEFAULT_WATCH_INTERVAL_S
    grace_s: float = DEFAULT_GRACE_S
    long_poll_s: float = LONG_POLL_S
    latency_s: float = 0.001
    # The server keeps a connection open after an answer it does not hold (SGLang's aiohttp
    # server and ours do); False: a close after every answer (a proxy in between, say), so
    # only the checks' pace finds the server down.
    keep_alive: bool = True

    def __post_init__(self) -> None:
        for name, positive in (("down_s", False), ("watch_interval_s", True), ("grace_s", False),
                               ("long_poll_s", True), ("latency_s", False)):
            validate.finite(f"RestartScenario.{name}", getattr(self, name), positive=positive)
        for name, high in (("down_s", MAX_SPAN_S), ("watch_interval_s", MAX_SPAN_S), ("grace_s", MAX_SPAN_S),
                           ("long_poll_s", LONG_POLL_S), ("latency_s", MAX_LATENCY_S)):
            if getattr(self, name) > high:  # long_poll_s: the client caps its wait at LONG_POLL_S
                raise ValueError(f"RestartScenario.{name} must be <= {high:g} s, got {getattr(self, name)}")
        validate.int_in(self.trials, "RestartScenario.trials", low=1, high=MAX_TRIALS)
        validate.int_in(self.seed, "RestartScenario.seed", low=0)
        validate.flag(self.keep_alive, "RestartScenario.keep_alive")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "restart_at_s": list(RESTART_AT_S), "ready_after_s": list(READY_AFTER_S),
                "horizon_s": HORIZON_S, "heartbeat_s": HEARTBEAT_S, "heartbeat_failures": HEARTBEAT_FAILURES}


@dataclass(frozen=True)
class RestartTrial:
    """The draws of one trial, shared by every model (and every ``D``)."""

    index: int
    restart_at: float  # T: the server goes down, generation A's ports die
    down_s: float  # D
    ready_after_s: float  # R
    start_at: float  # the decode instance resolves generation A then: its check phase
    heartbeat_phase_s: float  # upstream's φ
    rng_seed: int  # our decode instance's jitter

    @property
    def back_at(self) -> float:
        return self.restart_at + self.down_s

    @property
    def complete_at(self) -> float:
        return self.back_at + self.ready_after_s

    @property
    def horizon(self) -> float:
        return self.complete_at + HORIZON_S

    def phase(self, t: float) -> str:
        if t < self.restart_at:
            return _A
        if t < self.back_at:
            return _DOWN
        return _PENDING if t < self.complete_at else _B


def draw_restart_trials(scenario: RestartScenario) -> list[RestartTrial]:
    out = []
    for k in range(scenario.trials):
        rng = seeded_rng(f"{scenario.seed}/restart/{k}")
        restart_at = RESTART_AT_S[0] + (RESTART_AT_S[1] - RESTART_AT_S[0]) * rng.random()
        ready_after = READY_AFTER_S[0] + (READY_AFTER_S[1] - READY_AFTER_S[0]) * rng.random()
        start_at = rng.random()
        phase = rng.random() * HEARTBEAT_S
        out.append(RestartTrial(k, restart_at, scenario.down_s, ready_after, start_at, phase, rng.getrandbits(63)))
    return out


class RestartTransport:
    """The LookupTransport of one simulated decode instance: the trial's bootstrap server, by
    phase, on the decode instance's clock. With ``long_poll_s``, it answers as our server
    does: it advertises long-polls and holds a ``&wait=S`` GET while its answer is the one the
    client waits to see change (``&seen=G``: complete with generation G; without: not complete)
    until it changes (the instance completes, or the server dies: the held connection is reset
    at ``T``) or ``S`` passes."""

    def __init__(self, trial: RestartTrial, clock: FakeClock, latency_s: float, long_poll_s: float = 0.0,
                 keep_alive: bool = True) -> None:
        self._trial, self._clock, self._half, self._keep_alive = trial, clock, latency_s / 2, keep_alive
        self.checks: list[float] = []  # when each topology GET reached the server
        self._kept_at: float | None = None  # when the server answered on the connection kept open
        self.on_horizon: Callable[[], object] = lambda: None
        self._answers: dict[tuple[str, bool], Outcome] = {}
        for generation in (_A, _B):
            headers = {GENERATION_HEADER.lower(): generation}
            if long_poll_s:
                headers[LONG_POLL_HEADER.lower()] = f"{long_poll_s:g}"
            rank = json.dumps({"rank_ip": "10.0.0.5", "rank_port": PORTS[generation]})
            self._answers[generation, True] = Outcome.of_status(200, _TOPOLOGY, headers=headers)
            self._answers[generation, False] = Outcome.of_status(200, rank, headers=headers)
            if generation == _B:
                pending = Outcome.of_status(503, "prefill ranks still registering", headers=headers)
                self._answers[_PENDING, True] = self._answers[_PENDING, False] = pending

    def get(self, url: str, timeout: float) -> Outcome:
        trial, now = self._trial, self._clock.now()
        if now >= trial.horizon:
            self.on_horizon()
            return _HORIZON
        query = urlsplit(url).query
        topology = query.startswith(_TOPOLOGY_QUERY)
        params = parse_qs(query)
        waits, seen = params.get(WAIT_PARAM), params.get(SEEN_PARAM)
        arrive = now + self._half
        if topology:
            self.checks.append(arrive)
        phase = trial.phase(arrive)
        answered = arrive
        self._kept_at = None
        if waits and phase == (seen[0] if seen else _PENDING):
            change = trial.restart_at if phase == _A else trial.complete_at if phase == _PENDING else math.inf
            answered = min(arrive + float(waits[0]), change)
            phase = trial.phase(answered)
            if phase == _DOWN:
                self._clock.set(answered + self._half)
                return _RESET
        self._clock.set(answered + self._half)
        if phase == _DOWN:
            return _REFUSED
        if self._keep_alive and not waits:  # a held answer comes with Connection: close
            self._kept_at = answered
        return self._answers[phase, topology]

    def peer_closed(self) -> bool:
        """The kept connection's close reaches the client half a round trip after the server
        died (T): its process exits, the kernel closes its sockets."""
        trial = self._trial
        return self._kept_at is not None and self._kept_at < trial.restart_at <= self._clock.now() - self._half

    def abort(self) -> None:
        return None  # nothing is ever in flight in wall time

    def close(self) -> None:
        return None
