"""The decode side: wait until a prefill instance is complete, and learn its topology.

The same machine as :class:`~coordinator.Registration`, read from the decode side:
REGISTERING is a lookup round in flight, BACKOFF a wait, REGISTERED means *the
prefill instance this decode instance waits for is registered* (its topology, and
the addresses of the target ranks, are in :attr:`Discovery.info`), FAILED gave up.

One attempt is a lookup round: ``GET /route`` with all four query values ``-1``
(the topology; 503 until every prefill rank registered), then one ``GET /route``
per target rank not yet resolved (404 while that rank is unknown). "Not yet"
answers go to the policy's ``pending`` lane; a topology that disagrees with
``expect``, or an answer that is not what the protocol says, ends FAILED at once.

Watching (``watch=True``), after REGISTERED: see :class:`Discovery`; each round's check,
and what bounds its cost, are :class:`coordinator.watch.PrefillWatch`'s.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

import requests

from coordinator import validate
from coordinator.clock import Clock, Rng
from coordinator.driver import Driver, StartupFailed
from coordinator.instrumentation import Hook
from coordinator.outcome import Cause, Failure, Outcome
from coordinator.policy import DISCOVER_DEADLINE_S, Backoff, Policy, RetryPolicy
from coordinator.protocol import (
    ROUTE_PATH,
    TOPOLOGY_FIELDS,
    TOPOLOGY_KEY,
    WAIT_PARAM,
    Address,
    AnswerError,
    PrefillInfo,
    RankKey,
    base_url,
    mismatch,
    parse_rank,
    parse_topology,
    route_query,
)
from coordinator.snapshot import DiscoverySnapshot, Kind
from coordinator.transport import HttpTransport, LookupTransport
from coordinator.watch import DEFAULT_GRACE_S, DEFAULT_WATCH_INTERVAL_S, Heard, Invalidation, PrefillWatch

_TOPOLOGY_QUERY = route_query(TOPOLOGY_KEY)
DEFAULT_DEADLINE_S = DISCOVER_DEADLINE_S
def default_policy() -> RetryPolicy:
    """A decode instance's wait: up to 600 s, and a server not yet listening polled at the
    pending pace (0.1 s doubling to 0.4 s), so the lag after the prefill instance is
    complete stays under 0.5 s. A few decode instances per prefill instance: no storm."""
    return RetryPolicy(deadline_s=DEFAULT_DEADLINE_S, refused=Backoff(0.1, 0.4))


class DiscoveryFailed(StartupFailed):
    """Raised by ``Discovery.run()`` (with ``on_exhausted="raise"``) when it ends FAILED."""


def _check_targets(targets: Iterable[Any] | None) -> tuple[RankKey, ...]:
    if targets is None:
        return ()
    out: list[RankKey] = []
    for t in targets:
        if not isinstance(t, (tuple, list)) or len(t) != 4 or not all(validate.is_int(v) and v >= 0 for v in t):
            raise ValueError(f"targets: each must be (dp, cp, tp, pp) of integers >= 0, got {t!r}")
        out.append((t[0], t[1], t[2], t[3]))
    return tuple(dict.fromkeys(out))


def _check_expect(expect: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if expect is None:
        return MappingProxyType({})
    if not isinstance(expect, Mapping):
        raise TypeError(f"expect must be a mapping, got {type(expect).__name__}")
    for name, value in expect.items():
        kind = TOPOLOGY_FIELDS.get(name)
        if kind is None:
            raise ValueError(f"expect: unknown topology field {name!r}; known: {', '.join(TOPOLOGY_FIELDS)}")
        validate.of_type(value, kind, f"expect[{name!r}]")
    return MappingProxyType(dict(expect))


def _invalid(status: int, problem: str) -> Outcome:
    return Outcome(status=status, failure=Failure.INVALID, cause=Cause("InvalidAnswer", problem))


def _pending(answer: Outcome, what: str) -> Outcome:
    return Outcome(status=answer.status, body=answer.body, retry_after=answer.retry_after, date=answer.date,
                   failure=Failure.PENDING, cause=Cause("NotYet", what))


class Discovery(Driver[LookupTransport, DiscoverySnapshot]):
    """Wait for the prefill instance behind ``bootstrap`` and learn its topology.

    ``bootstrap``: ``host:port`` (IPv6 in brackets) or a URL. ``targets``: ranks
    ``(dp, cp, tp, pp)`` whose addresses to resolve. ``expect``: topology values this
    decode instance needs (e.g. ``{"page_size": 64, "kv_cache_dtype": "auto"}``); a
    topology that disagrees ends FAILED (``permanent``) naming the field and both values.
    Default policy: :func:`default_policy`. ``clock``, ``rng``, ``session``, ``logger``,
    ``hooks``, ``on_exhausted``, ``name`` and ``transport`` are as for
    :class:`~coordinator.Registration` (a discovery is named after its bootstrap address).

    ``watch=True`` (with ``start()``): after REGISTERED it keeps checking, every
    ``watch_interval_s`` (jittered by half), with one topology GET, that the prefill
    instance is still the one it resolved, and invalidates (REGISTERED → REGISTERING,
    ``info`` None at once) when the bootstrap server restarted (its generation header
    changed, or it answers 503: not complete any more; a 503 with the generation resolved
    and a ``Retry-After`` is overload, not a restart), when the topology or a target's
    address changed (without ``targets``, against a server without a generation, the
    ranks are learned from the topology), when connections to it have been refused for
    ``REFUSED_GRACE_S`` (nothing listens: the instance is down), or when it has been
    gone otherwise (timeouts, resets) for ``grace_s``. Shorter failures change nothing.
    A server closing the connection kept from the last answer (its process exiting)
    brings the next check forward. Against our server, which advertises long-polls, a
    check waits at the server for a change instead (one request per ``LONG_POLL_S``),
    and a restart is seen within one round trip. Invalidations in quick succession are
    damped (see :mod:`coordinator.watch._prefill`).
    """

    kind = Kind.DISCOVERY
    failure = DiscoveryFailed

    def __init__(
        self,
        bootstrap: str,
        *,
        policy: Policy | None = None,
        clock: Clock | None = None,
        rng: Rng | None = None,
        session: requests.Session | None = None,
        logger: Any = None,
        hooks: Sequence[Hook] | None = None,
        targets: Iterable[tuple[int, int, int, int]] | None = None,
        expect: Mapping[str, Any] | None = None,
        on_exhausted: Literal["raise", "return"] = "raise",
        name: str | None = None,
        transport: LookupTransport | None = None,
        watch: bool = False,
        watch_interval_s: float = DEFAULT_WATCH_INTERVAL_S,
        grace_s: float = DEFAULT_GRACE_S,
    ) -> None:
        base = base_url(bootstrap)
        interval = validate.finite("watch_interval_s", watch_interval_s, positive=True)
        grace = validate.finite("grace_s", grace_s, positive=False)
        self._targets = targets = _check_targets(targets)
        self._expect = _check_expect(expect)
        if transport is not None and session is not None:
            raise ValueError("transport excludes session: configure the transport itself")
        if policy is None:
            policy = default_policy()
        super().__init__(f"{base}{ROUTE_PATH}", policy=policy, clock=clock, rng=rng, logger=logger, hooks=hooks,
                         on_exhausted=on_exhausted, name=name if name is not None else urlsplit(base).netloc,
                         transport=transport or HttpTransport(session), watch=watch)
        self._topology: PrefillInfo | None = None
        self._ranks: dict[RankKey, Address] = {}
        self._heard = Heard()
        self._checks = PrefillWatch(self._url, self._transport, self._heard, clock=self._clock, rng=self._rng,
                                    policy=self._policy, interval=interval, grace=grace, targets=targets)

    def start(self) -> Discovery:
        super().start()
        return self

    @property
    def info(self) -> PrefillInfo | None:
        """The prefill instance's topology and target addresses; None until REGISTERED."""
        return self._snapshot.info

    @property
    def targets(self) -> tuple[RankKey, ...]:
        return self._targets

    def _first_snapshot(self, **fields: Any) -> DiscoverySnapshot:
        return DiscoverySnapshot(**fields)

    def _resolved(self, value: Any) -> dict[str, Any]:
        return {"info": value}

    def _forget(self) -> None:
        self._topology, self._ranks = None, {}
        self._checks.forget()

    def _watch_round(self, wake: threading.Event) -> Invalidation | None:
        return self._checks.round(wake, self._snapshot.info)

    def _wait_within_budget(self, timeout: float) -> float:
        """How long a lookup may wait at a long-polling server: never past the deadline."""
        long_poll = self._heard.long_poll_s
        if not long_poll:
            return 0.0
        s = self._snapshot
        deadline = self._policy.deadline_s
        if deadline is None or s.started_at is None:
            return long_poll
        left = deadline - (self._clock.now() - s.started_at) - timeout
        return max(0.0, min(long_poll, left)) if left >= 0.1 else 0.0

    def _perform(self, timeout: float) -> Outcome:
        """One lookup round: the topology (until known), then each rank not yet resolved."""
        ends = self._clock.now() + timeout  # one budget for the whole round
        topology = self._topology or self._lookup_topology(timeout)
        if isinstance(topology, Outcome):
            return topology
        for key in self._checks.compared:
            if key not in self._ranks:
                failed = self._lookup_rank(key, ends, timeout)
                if failed is not None:
                    return failed
        return Outcome(status=200, value=replace(topology, ranks=MappingProxyType(dict(self._ranks))))

    def _lookup_topology(self, timeout: float) -> PrefillInfo | Outcome:
        """Learn the topology, or the round's outcome: not yet, or what went wrong."""
        url, wait = f"{self._url}?{_TOPOLOGY_QUERY}", self._wait_within_budget(timeout)
        if wait:  # our server holds the answer until the instance completes
            url += f"&{WAIT_PARAM}={wait:g}"
        answer = self._transport.get(url, timeout + wait)
        self._heard.topology_answer(answer)
        if answer.status == 503:
            return _pending(answer, "prefill ranks are still registering")
        if answer.status != 200 or answer.failure is not None:
            return answer
        try:
            topology = parse_topology(answer.body)
        except AnswerError as exc:
            return _invalid(200, f"topology {exc}")
        problem = mismatch(topology, self._expect) or self._outside(topology)
        if problem is not None:
            return _invalid(200, problem)
        self._topology = topology
        if self._after.watches:
            self._checks.learn(topology)
        return topology

    def _lookup_rank(self, key: RankKey, ends: float, timeout: float) -> Outcome | None:
        """Resolve ``key``'s address (None) within the round's budget, or the round's outcome."""
        if self._cancel.is_set():  # stop() between two lookups: the next one would not see it
            return Outcome.of_failure(Failure.CANCELLED, Cause("Cancelled", "stop() was called"))
        left = ends - self._clock.now()
        if left <= 0:
            return Outcome.of_failure(Failure.TIMEOUT, Cause("TimeoutError", f"lookup round over {timeout:.3g} s"))
        answer = self._transport.get(f"{self._url}?{route_query(key)}", left)
        if answer.status in (404, 503):  # the topology says it exists: not registered yet
            return _pending(answer, f"rank {key} not registered yet")
        if answer.status != 200 or answer.failure is not None:
            return answer
        try:
            self._ranks[key] = parse_rank(answer.body)
        except AnswerError as exc:
            return _invalid(200, f"rank {key}: {exc}")
        return None

    def _outside(self, topology: PrefillInfo) -> str | None:
        for key in self._targets:
            if not topology.has_rank(key):
                return (f"target {key} is outside the prefill topology (dp_size={topology.dp_size}, "
                        f"attn_cp_size={topology.attn_cp_size}, attn_tp_size={topology.attn_tp_size}, "
                        f"pp_size={topology.pp_size})")
        return None
