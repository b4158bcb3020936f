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

Watching (``watch=True``), after REGISTERED: see :class:`Discovery`. The rules that
bound what a watcher costs and how often it acts:

- Requests: one topology GET per check (1 s x U[0.5, 1.5] apart, a long-poll of 20 s
  against our server); against a server without a generation (SGLang's own) also at most
  :data:`RANKS_PER_CHECK` rank GETs, so at most 3 GETs a second per watcher on average.
- Invalidations: each is acted on at once; the checks then wait 1 s after the first, 2 s
  after a second one in quick succession, 4 s ... up to 30 s, until a quiet minute. A
  server whose generation changes on every answer costs 5 invalidations (a WARNING line
  each) in 20 s, then one per 30 s, not several a second.
"""

from __future__ import annotations

import math
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
from coordinator.policy import DISCOVER_DEADLINE_S, Backoff, Policy, RetryPolicy, retry_after_seconds
from coordinator.protocol import (
    GENERATION_HEADER,
    LONG_POLL_HEADER,
    ROUTE_PATH,
    SEEN_PARAM,
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
from coordinator.snapshot import Kind
from coordinator.transport import HttpTransport, LookupTransport

_TOPOLOGY_QUERY = route_query(TOPOLOGY_KEY)
DEFAULT_DEADLINE_S = DISCOVER_DEADLINE_S
# Watching: a check a second (jittered) keeps the stale window under about a second, at one
# small GET per second per decode process: 1,000 watchers cost a server 1,000 GETs/s, which
# ours serves (scripts/load_bench.py); against ours, long-polls bring that to 1,000/LONG_POLL_S.
DEFAULT_WATCH_INTERVAL_S = 1.0
# Longer than a reconnecting blip, shorter than upstream's 2 x 5 s heartbeat.
DEFAULT_GRACE_S = 5.0
# A refused connection means nothing listens at the bootstrap address: the prefill instance's
# main process is gone, not slow. Refusals lasting this long (two or three checks at the
# GONE_CHECK_S pace: within about 0.5 s) are enough; timeouts and resets keep grace_s.
REFUSED_GRACE_S = 0.25
LONG_POLL_S = 20.0
GONE_CHECK_S = 0.25
# While waiting for the next check, how often to look whether the server closed the
# connection kept from the last answer (a non-blocking poll of one socket).
CLOSE_CHECK_S = 0.1
# Against a server without a generation (SGLang's), moved ranks are found by comparing
# addresses: the targets given, or else up to MAX_LEARNED_TARGETS ranks of the topology
# (all of them up to 64 ranks; above, an even spread with a random offset, so that a fleet
# of watchers covers them all). Each check compares RANKS_PER_CHECK of them in turn: a
# watcher costs such a server at most 3 GETs per check, and every rank of an 8-rank
# instance is compared every 4 checks.
MAX_LEARNED_TARGETS = 64
RANKS_PER_CHECK = 2
# Invalidations in quick succession: the first is acted on at once, and the watch then makes
# no check for 1 s, 2 s after the second, doubling to 30 s, until none came for
# DAMPING_QUIET_S (longer than the cap, so a server that keeps changing stays at one
# invalidation per 30 s). A real restart is re-resolved within the first hold anyway.
DAMPING = Backoff(1.0, 30.0)
DAMPING_QUIET_S = 60.0
# An overloaded server's Retry-After is honoured by the next check, up to this.
MAX_RETRY_AFTER_S = 30.0


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


def _long_poll_of(answer: Outcome) -> float:
    """The longest ``wait`` our server advertises (0: it does not, or upstream's server)."""
    text = answer.headers.get(LONG_POLL_HEADER.lower(), "")
    try:
        return min(validate.number(text, LONG_POLL_HEADER, positive=True), LONG_POLL_S)
    except ValueError:
        return 0.0


def _sample_ranks(topology: PrefillInfo, rng: Rng) -> tuple[RankKey, ...]:
    """Every rank of the topology, or MAX_LEARNED_TARGETS of them evenly spread (by index
    arithmetic: a topology's sizes are not bounded by what is sensible to iterate)."""
    sizes = (topology.dp_size, topology.attn_cp_size, topology.attn_tp_size, topology.pp_size)
    total = math.prod(sizes)
    stride = -(-total // MAX_LEARNED_TARGETS)
    first = int(rng.random() * stride) if stride > 1 else 0
    out: list[RankKey] = []
    for index in range(first, total, stride):
        digits = []
        for size in reversed(sizes):
            index, digit = divmod(index, size)
            digits.append(digit)
        out.append((digits[3], digits[2], digits[1], digits[0]))
    return tuple(out)


def _invalid(status: int, problem: str) -> Outcome:
    return Outcome(status=status, failure=Failure.INVALID, cause=Cause("InvalidAnswer", problem))


def _pending(answer: Outcome, what: str) -> Outcome:
    return Outcome(status=answer.status, body=answer.body, retry_after=answer.retry_after, date=answer.date,
                   failure=Failure.PENDING, cause=Cause("NotYet", what))


class Discovery(Driver[LookupTransport]):
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
    damped (see the module's docstring).
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
        self._interval = validate.finite("watch_interval_s", watch_interval_s, positive=True)
        self._grace = validate.finite("grace_s", grace_s, positive=False)
        self._targets = _check_targets(targets)
        self._expect = _check_expect(expect)
        if transport is not None and session is not None:
            raise ValueError("transport excludes session: configure the transport itself")
        if policy is None:
            policy = default_policy()
        super().__init__(f"{base}{ROUTE_PATH}", policy=policy, clock=clock, rng=rng, logger=logger, hooks=hooks,
                         on_exhausted=on_exhausted, name=name if name is not None else urlsplit(base).netloc,
                         transport=transport or HttpTransport(session))
        self._topology: PrefillInfo | None = None
        self._ranks: dict[RankKey, Address] = {}
        self._enable_watch(watch)
        self._generation: str | None = None  # our server's, as of the resolved answer
        self._long_poll_s = 0.0  # > 0 once our server advertised long-polls
        self._gone_since: float | None = None
        self._learned: tuple[RankKey, ...] = ()  # without targets: the ranks compared by the watch
        self._turn = 0  # the next target a check compares
        self._closes_tell = True  # False once this server was seen closing a kept connection while alive
        self._retry_after = 0.0  # the overloaded server asked the next check to wait this long
        # Damping: the last invalidation the watch found, how many came in quick succession
        # before it, and until when the watch makes no check.
        self._last_invalidated: float | None = None
        self._streak = 0
        self._held_until = -math.inf

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

    def _forget(self) -> None:
        self._topology, self._ranks, self._generation, self._gone_since = None, {}, None, None
        self._learned, self._turn, self._closes_tell, self._retry_after = (), 0, True, 0.0

    @property
    def _compared(self) -> tuple[RankKey, ...]:
        """The ranks a lookup resolves and the watch compares."""
        return self._targets or self._learned

    def _watch_once(self) -> None:
        long_poll = min(self._long_poll_s, LONG_POLL_S)
        # Watchers must not check in step; a long-poll waits at the server, so only a breath here
        # (a server answering long-polls at once must not make this loop spin).
        # While the last check failed, the server may come back any moment: check at about the
        # pending pace, so the new instance is seen soon after it is (refusals cost it nothing).
        base = 0.1 if long_poll else GONE_CHECK_S if self._gone_since is not None else self._interval
        pause = max(base * (0.5 + self._rng.random()), self._retry_after)
        self._retry_after = 0.0
        held = self._held_until - self._clock.now()
        # Damped: no check, and no early one for a closed connection, before the hold is over.
        closed = self._pause(max(pause, held), watch_closes=held <= 0)
        assert self._watch is not None
        if self._watch.wake.is_set():
            return  # stop() or invalidate()
        cause = self._check(long_poll)
        if cause is None:
            if closed and self._gone_since is None:
                self._closes_tell = False  # it closes idle connections while alive: a close tells nothing
        elif not self._cancel.is_set():
            self._invalidation = (self._snapshot.seq, *self._damped(*cause))

    def _pause(self, seconds: float, *, watch_closes: bool) -> bool:
        """Wait ``seconds`` (``stop()`` and ``invalidate()`` cut it short). With ``watch_closes``
        and a transport that can tell (``peer_closed()``), the wait also ends, returning True,
        once the server closed the connection kept from the last answer: a server process that
        exits closes it at once, so the check that follows meets the refusal well before the
        next turn. Time passes on the clock only."""
        assert self._watch is not None
        wake = self._watch.wake
        closed = getattr(self._transport, "peer_closed", None) if watch_closes and self._closes_tell else None
        if closed is None:
            self._clock.sleep(seconds, wake)
            return False
        ends = self._clock.now() + seconds
        while not wake.is_set():
            if closed():
                return True
            left = ends - self._clock.now()
            if left <= 0:
                break
            self._clock.sleep(min(left, CLOSE_CHECK_S), wake)
        return False

    def _damped(self, code: str, message: str) -> tuple[str, str]:
        """Count an invalidation the watch found, and hold the next check back when they come
        in quick succession: a server that changes on every answer must not make every decode
        instance drop its connections (and log a WARNING) several times a second."""
        now = self._clock.now()
        quick = self._last_invalidated is not None and now - self._last_invalidated < DAMPING_QUIET_S
        self._streak = self._streak + 1 if quick else 0
        self._last_invalidated = now
        hold = DAMPING.envelope(self._streak + 1)
        self._held_until = now + hold
        if not self._streak:
            return code, message
        return code, (f"{message} (invalidation {self._streak + 1} in quick succession: the next check waits "
                      f"{hold:g} s, until {DAMPING_QUIET_S:g} s pass without one)")

    def _check(self, long_poll: float) -> tuple[str, str] | None:
        """Why the resolved prefill instance no longer holds, or None while it does."""
        url = f"{self._url}?{_TOPOLOGY_QUERY}"
        if long_poll and self._generation is not None:
            # Held at the server while it is the generation we resolved; a new server answers at once.
            url += f"&{WAIT_PARAM}={long_poll:g}&{SEEN_PARAM}={self._generation}"
        else:
            long_poll = 0.0
        timeout = self._policy.attempt_timeout(0.0) + long_poll
        answer = self._transport.get(url, timeout)
        now = self._clock.now()
        if answer.status == 200 and answer.failure is None:
            self._gone_since = None
            return self._changed(answer, timeout)
        self._long_poll_s = 0.0  # until the server says so again
        if answer.status == 503:
            retry_after = retry_after_seconds(answer)
            generation = answer.headers.get(GENERATION_HEADER.lower())
            if retry_after is None or generation is None or generation != self._generation:
                return "incomplete", "the prefill instance is not complete any more (HTTP 503): it restarted"
            # Overloaded, and still the instance resolved (its generation): a blip, not a restart.
            self._gone_since = None
            self._retry_after = min(retry_after, MAX_RETRY_AFTER_S)
            return None
        if self._gone_since is None:
            self._gone_since = now
        gone = now - self._gone_since
        if answer.failure is Failure.REFUSED and gone >= min(self._grace, REFUSED_GRACE_S):
            return "gone", (f"the bootstrap server refuses connections (for {gone:.3g} s): nothing listens there, "
                            f"the prefill instance is down")
        if gone >= self._grace:
            return "gone", f"the bootstrap server has been gone for {gone:.3g} s ({answer.describe()})"
        return None

    def _changed(self, answer: Outcome, timeout: float) -> tuple[str, str] | None:
        generation = answer.headers.get(GENERATION_HEADER.lower())
        self._long_poll_s = _long_poll_of(answer)
        if generation is not None and self._generation is not None and generation != self._generation:
            return "restarted", f"the bootstrap server restarted (generation {self._generation} -> {generation})"
        resolved = self._snapshot.info
        try:
            topology = parse_topology(answer.body)
        except AnswerError as exc:
            return "changed", f"the bootstrap server answers a malformed topology ({exc})"
        if resolved is None or topology.topology_json() != resolved.topology_json():
            return "changed", "the prefill topology changed"
        if generation is not None:
            return None  # same generation: same registrations
        compared = self._compared  # upstream's server has no generation: compare the addresses, a few a check
        turn = [compared[(self._turn + i) % len(compared)] for i in range(min(len(compared), RANKS_PER_CHECK))]
        self._turn = (self._turn + len(turn)) % max(1, len(compared))
        for key in turn:
            moved = self._transport.get(f"{self._url}?{route_query(key)}", timeout)
            if moved.status != 200 or moved.failure is not None:
                return "moved", f"rank {key} is not registered any more ({moved.describe()})"
            try:
                address = parse_rank(moved.body)
            except AnswerError:
                return "moved", f"rank {key} answers a malformed address"
            if address != resolved.ranks.get(key):
                return "moved", f"rank {key} moved to {address[0]}:{address[1]}"
        return None

    def _wait_within_budget(self, timeout: float) -> float:
        """How long a lookup may wait at a long-polling server: never past the deadline."""
        if not self._long_poll_s:
            return 0.0
        s = self._snapshot
        deadline = self._policy.deadline_s
        if deadline is None or s.started_at is None:
            return self._long_poll_s
        left = deadline - (self._clock.now() - s.started_at) - timeout
        return max(0.0, min(self._long_poll_s, left)) if left >= 0.1 else 0.0

    def _perform(self, timeout: float) -> Outcome:
        ends = self._clock.now() + timeout  # one budget for the whole round
        if self._topology is None:
            url, wait = f"{self._url}?{_TOPOLOGY_QUERY}", self._wait_within_budget(timeout)
            if wait:  # our server holds the answer until the instance completes
                url += f"&{WAIT_PARAM}={wait:g}"
            answer = self._transport.get(url, timeout + wait)
            self._generation = answer.headers.get(GENERATION_HEADER.lower())
            self._long_poll_s = _long_poll_of(answer)
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
            if self._watch is not None and not self._targets and self._generation is None:
                # No generation to tell a moved rank: resolve ranks now, for the watch to compare.
                self._learned = _sample_ranks(topology, self._rng)
                self._turn = int(self._rng.random() * len(self._learned))
        for key in self._compared:
            if key in self._ranks:
                continue
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
        return Outcome(status=200, value=replace(self._topology, ranks=MappingProxyType(dict(self._ranks))))

    def _outside(self, topology: PrefillInfo) -> str | None:
        for key in self._targets:
            if not topology.has_rank(key):
                return (f"target {key} is outside the prefill topology (dp_size={topology.dp_size}, "
                        f"attn_cp_size={topology.attn_cp_size}, attn_tp_size={topology.attn_tp_size}, "
                        f"pp_size={topology.pp_size})")
        return None
