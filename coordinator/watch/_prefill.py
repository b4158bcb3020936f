"""A watching Discovery's rounds: whether the prefill instance it resolved still holds.

The rules that bound what a watcher costs and how often it acts:

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
import threading

from coordinator import validate
from coordinator.clock import Clock, Rng
from coordinator.outcome import Failure, Outcome
from coordinator.policy import Backoff, Policy, retry_after_seconds
from coordinator.protocol import (
    GENERATION_HEADER,
    LONG_POLL_HEADER,
    SEEN_PARAM,
    TOPOLOGY_KEY,
    WAIT_PARAM,
    AnswerError,
    PrefillInfo,
    RankKey,
    parse_rank,
    parse_topology,
    route_query,
)
from coordinator.transport import LookupTransport
from coordinator.watch._settled import Invalidation

# A check a second (jittered) keeps the stale window under about a second, at one small GET
# per second per decode process: 1,000 watchers cost a server 1,000 GETs/s, which ours serves
# (scripts/load_bench.py); against ours, long-polls bring that to 1,000/LONG_POLL_S.
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

_TOPOLOGY_QUERY = route_query(TOPOLOGY_KEY)


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


class Heard:
    """What the bootstrap server's answers said of it, for the lookups and the watch alike:
    its generation (our server's; None from upstream's) and the longest long-poll it holds
    (0: none). The driver thread's own."""

    __slots__ = ("generation", "long_poll_s")

    def __init__(self) -> None:
        self.generation: str | None = None
        self.long_poll_s = 0.0

    def topology_answer(self, answer: Outcome) -> None:
        self.generation = answer.headers.get(GENERATION_HEADER.lower())
        self.long_poll_s = _long_poll_of(answer)


class PrefillWatch:
    """The checks of a Discovery made with ``watch=True`` (see :class:`~coordinator.Discovery`),
    one per :meth:`round`; also which ranks a lookup resolves (:attr:`compared`)."""

    def __init__(self, url: str, transport: LookupTransport, heard: Heard, *, clock: Clock, rng: Rng,
                 policy: Policy, interval: float, grace: float, targets: tuple[RankKey, ...]) -> None:
        self._url, self._transport, self._heard = url, transport, heard
        self._clock, self._rng, self._policy = clock, rng, policy
        self._interval, self._grace, self._targets = interval, grace, targets
        self._gone_since: float | None = None
        self._learned: tuple[RankKey, ...] = ()  # without targets: the ranks compared
        self._turn = 0  # the next compared rank a check compares
        self._closes_tell = True  # False once this server was seen closing a kept connection while alive
        self._retry_after = 0.0  # the overloaded server asked the next check to wait this long
        # Damping: the last invalidation found, how many came in quick succession before it,
        # and until when no check is made.
        self._last_invalidated: float | None = None
        self._streak = 0
        self._held_until = -math.inf

    @property
    def compared(self) -> tuple[RankKey, ...]:
        """The ranks a lookup resolves and a check compares: the targets, or the learned ones."""
        return self._targets or self._learned

    def learn(self, topology: PrefillInfo) -> None:
        """A topology resolved from a server without a generation, and no targets: choose the
        ranks to resolve now and compare later (nothing else tells that a rank moved)."""
        if not self._targets and self._heard.generation is None:
            self._learned = _sample_ranks(topology, self._rng)
            self._turn = int(self._rng.random() * len(self._learned))

    def forget(self) -> None:
        """On INVALIDATE: what the checks learnt of the old instance (the damping stays)."""
        self._heard.generation, self._gone_since = None, None
        self._learned, self._turn, self._closes_tell, self._retry_after = (), 0, True, 0.0

    def round(self, wake: threading.Event, resolved: PrefillInfo | None) -> Invalidation | None:
        """Wait for the next check (``wake`` cuts it short), make it: why ``resolved`` no
        longer holds, damped, or None."""
        long_poll = min(self._heard.long_poll_s, LONG_POLL_S)
        # Watchers must not check in step; a long-poll waits at the server, so only a breath here
        # (a server answering long-polls at once must not make this loop spin).
        # While the last check failed, the server may come back any moment: check at about the
        # pending pace, so the new instance is seen soon after it is (refusals cost it nothing).
        base = 0.1 if long_poll else GONE_CHECK_S if self._gone_since is not None else self._interval
        pause = max(base * (0.5 + self._rng.random()), self._retry_after)
        self._retry_after = 0.0
        held = self._held_until - self._clock.now()
        # Damped: no check, and no early one for a closed connection, before the hold is over.
        closed = self._pause(wake, max(pause, held), watch_closes=held <= 0)
        if wake.is_set():
            return None  # stop() or invalidate()
        cause = self._check(long_poll, resolved)
        if cause is None:
            if closed and self._gone_since is None:
                self._closes_tell = False  # it closes idle connections while alive: a close tells nothing
            return None
        return self._damped(*cause)

    def _pause(self, wake: threading.Event, seconds: float, *, watch_closes: bool) -> bool:
        """Wait ``seconds`` (``wake`` cuts it short). With ``watch_closes`` and a transport that
        can tell (``peer_closed()``), the wait also ends, returning True, once the server closed
        the connection kept from the last answer: a server process that exits closes it at once,
        so the check that follows meets the refusal well before the next turn. Time passes on
        the clock only."""
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

    def _damped(self, code: str, message: str) -> Invalidation:
        """Count an invalidation found, and hold the next check back when they come in quick
        succession: a server that changes on every answer must not make every decode instance
        drop its connections (and log a WARNING) several times a second."""
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

    def _check(self, long_poll: float, resolved: PrefillInfo | None) -> Invalidation | None:
        """Why the resolved prefill instance no longer holds, or None while it does."""
        url = f"{self._url}?{_TOPOLOGY_QUERY}"
        generation = self._heard.generation
        if long_poll and generation is not None:
            # Held at the server while it is the generation we resolved; a new server answers at once.
            url += f"&{WAIT_PARAM}={long_poll:g}&{SEEN_PARAM}={generation}"
        else:
            long_poll = 0.0
        timeout = self._policy.attempt_timeout(0.0) + long_poll
        answer = self._transport.get(url, timeout)
        now = self._clock.now()
        if answer.status == 200 and answer.failure is None:
            self._gone_since = None
            return self._changed(answer, timeout, resolved)
        self._heard.long_poll_s = 0.0  # until the server says so again
        if answer.status == 503:
            retry_after = retry_after_seconds(answer)
            answered = answer.headers.get(GENERATION_HEADER.lower())
            if retry_after is None or answered is None or answered != generation:
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

    def _changed(self, answer: Outcome, timeout: float, resolved: PrefillInfo | None) -> Invalidation | None:
        generation = answer.headers.get(GENERATION_HEADER.lower())
        self._heard.long_poll_s = _long_poll_of(answer)
        if generation is not None and self._heard.generation is not None and generation != self._heard.generation:
            return "restarted", f"the bootstrap server restarted (generation {self._heard.generation} -> {generation})"
        try:
            topology = parse_topology(answer.body)
        except AnswerError as exc:
            return "changed", f"the bootstrap server answers a malformed topology ({exc})"
        if resolved is None or topology.topology_json() != resolved.topology_json():
            return "changed", "the prefill topology changed"
        if generation is not None:
            return None  # same generation: same registrations
        compared = self.compared  # upstream's server has no generation: compare the addresses, a few a check
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
