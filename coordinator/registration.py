"""The driver: a transitions.Machine built from the ``states`` table, stepped between effects.

Only the driver (``poll``, ``run`` or the background thread) fires triggers; the
machine's callbacks do nothing, and every effect (HTTP, sleeping, logging, the
snapshot swap) happens here between events. Readers only read the snapshot.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal

import requests
from transitions import Machine

from coordinator import logs
from coordinator.address import check_url
from coordinator.clock import Clock, Rng, SystemClock, entropy_rng
from coordinator.outcome import Cause, Failure, Outcome
from coordinator.payload import encode_payload, validate_payload
from coordinator.policy import Decision, Lane, Reason, RetryPolicy
from coordinator.snapshot import Snapshot
from coordinator.transport import HttpTransport, Transport, cause_of
from states import GUARDS, TERMINAL, TRANSITIONS, State, Trigger, Verdict

Listener = Callable[[Snapshot], None]


class RegistrationFailed(RuntimeError):
    """Raised by ``run()`` (with ``on_exhausted="raise"``) when the registration ends FAILED."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.reason = snapshot.reason
        self.cause = snapshot.last_error
        last = f"HTTP {snapshot.last_status}" if snapshot.last_status is not None else str(snapshot.last_error)
        super().__init__(
            f"registration to {snapshot.url} failed ({snapshot.reason}) after "
            f"{snapshot.attempt} attempt(s); last: {last}"
        )


def build_machine(model: object) -> Machine:
    """A plain Machine from the table: no auto transitions, no callbacks, guards from ``states``."""
    return Machine(
        model=model,
        states=list(State),
        initial=State.INIT,
        transitions=[
            {
                "trigger": t.trigger.value,
                "source": t.source,
                "dest": t.dest,
                "conditions": [GUARDS[t.guard]] if t.guard else [],
            }
            for t in TRANSITIONS
        ],
        auto_transitions=False,
    )


class _Model:
    state: State


def _check_token(token: object) -> str | None:
    if token is None:
        return None
    # Visible ASCII only (RFC 6750's b64token is narrower): anything else would fail
    # inside http.client with an error message that quotes the header, token and all.
    if not isinstance(token, str) or not token or not all(33 <= ord(c) <= 126 for c in token):
        raise ValueError("token must be a non-empty string of visible ASCII characters")
    return token


class Registration:
    """Register one prefill rank with the bootstrap server, retrying by ``policy``.

    ``run()`` blocks until REGISTERED or FAILED; ``poll()`` takes one step (an attempt
    blocks at most for its timeout; backoff is never waited on); ``start()`` runs it
    on a daemon thread. ``snapshot()`` may be called from any thread at any time.
    """

    def __init__(
        self,
        url: str,
        payload: Mapping[str, Any],
        *,
        policy: RetryPolicy | None = None,
        clock: Clock | None = None,
        rng: Rng | None = None,
        session: requests.Session | None = None,
        logger: Any = None,
        token: str | None = None,
        on_exhausted: Literal["raise", "return"] = "raise",
        transport: Transport | None = None,
        name: str | None = None,
    ) -> None:
        self._url = check_url(url)
        self._body = encode_payload(validate_payload(payload))
        if policy is None:
            policy = RetryPolicy()
        if not isinstance(policy, RetryPolicy):
            raise TypeError(f"policy must be a RetryPolicy, got {type(policy).__name__}")
        if on_exhausted not in ("raise", "return"):
            raise ValueError(f"on_exhausted must be 'raise' or 'return', got {on_exhausted!r}")
        if transport is not None and (session is not None or token is not None):
            raise ValueError("transport excludes session and token: configure the transport itself")
        token = _check_token(token)
        if clock is not None and not (callable(getattr(clock, "now", None)) and callable(getattr(clock, "sleep", None))):
            raise TypeError(f"clock must have now() and sleep(), got {type(clock).__name__}")
        if rng is not None and not callable(getattr(rng, "random", None)):
            raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        self._policy = policy
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._rng = rng if rng is not None else entropy_rng()
        self._transport: Transport = transport or HttpTransport(session, token=token)
        self._on_exhausted = on_exhausted
        self.name = name
        log = logger if logger is not None else logs.default_logger()
        self._log = log.bind(url=self._url, **({"registration": name} if name else {}))

        self._model = _Model()
        self._machine = build_machine(self._model)
        self._drive = threading.Lock()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Listener] = []
        self._lane_failures: dict[Lane, int] = {}
        self._warnings = logs.WarningBudget()
        self._attempt = 0
        self._started_at: float | None = None
        self._next_attempt_at: float | None = None
        self._last_status: int | None = None
        self._last_error: Cause | None = None
        self._reason: str | None = None
        now = self._clock.now()
        self._snapshot = self._make_snapshot(now, seq=0)

    def __repr__(self) -> str:
        s = self._snapshot
        return f"<Registration {self._url} {s.state.value} attempt={s.attempt}>"

    # -- readers (any thread) -------------------------------------------------

    @property
    def state(self) -> State:
        return self._snapshot.state

    kind = "registration"

    @property
    def url(self) -> str:
        return self._url

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

    @property
    def clock(self) -> Clock:
        return self._clock

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(snapshot)`` on the driver thread after every step that changed it."""
        self._listeners.append(listener)

    # -- driving --------------------------------------------------------------

    def poll(self) -> Snapshot:
        """Take at most one step; never waits on a backoff."""
        with self._drive:
            self._step()
            return self._snapshot

    def run(self) -> Snapshot:
        """Drive to REGISTERED or FAILED; with ``on_exhausted="raise"``, FAILED raises."""
        if self._thread is not None:
            raise RuntimeError("registration runs in the background: use wait()")
        snapshot = self._run_to_end()
        if snapshot.state is State.FAILED and self._on_exhausted == "raise":
            raise RegistrationFailed(snapshot)
        return snapshot

    def start(self) -> Registration:
        """Run on a named daemon thread and return at once."""
        with self._drive:
            if self._thread is not None:
                raise RuntimeError("registration already started")
            self._thread = threading.Thread(
                target=self._run_to_end,
                name=f"prefill-startup-{self.name or 'registration'}",
                daemon=True,
            )
            self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> Snapshot:
        """The terminal snapshot, or the current one when ``timeout`` expires first."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self._snapshot

    def stop(self, timeout: float | None = None) -> Snapshot:
        """Cancel: the registration ends FAILED with reason "cancelled" unless already terminal."""
        self._cancel.set()
        self._transport.abort()
        if self._thread is not None:
            self._thread.join(timeout)
        elif self._drive.acquire(blocking=False):
            # No driver running: this thread may take the cancelling step itself.
            try:
                self._step()
            finally:
                self._drive.release()
        return self._snapshot

    def _run_to_end(self) -> Snapshot:
        while True:
            with self._drive:
                self._step()
                snapshot = self._snapshot
            if snapshot.terminal:
                return snapshot
            if snapshot.state is State.BACKOFF and snapshot.next_attempt_at is not None:
                wait = snapshot.next_attempt_at - self._clock.now()
                if wait > 0 and not self._cancel.is_set():
                    self._clock.sleep(wait, self._cancel)

    def _step(self) -> None:
        state = self._model.state
        if state in TERMINAL:
            return
        now = self._clock.now()
        if self._cancel.is_set():
            self._fail(now, Reason.CANCELLED)
        elif state is State.INIT:
            self._started_at = now
            self._fire(Trigger.START, now)
            self._log.info(
                logs.STARTED,
                max_attempts=self._policy.max_attempts,
                deadline_s=self._policy.deadline_s,
            )
        elif state is State.REGISTERING:
            self._attempt_once(now)
        elif state is State.BACKOFF:
            self._fire(Trigger.TIMER, now, now=now, due_at=self._next_attempt_at)

    def _fire(self, trigger: Trigger, at: float, **event: Any) -> None:
        before = self._model.state
        if not self._model.trigger(trigger.value, **event):
            return  # a guard held (the timer is not due yet)
        after = self._model.state
        self._next_attempt_at = self._next_attempt_at if after is State.BACKOFF else None
        self._publish(at)
        self._log.debug(
            logs.STATE_CHANGED,
            from_state=before.value,
            to_state=after.value,
            trigger=trigger.value,
            attempt=self._attempt,
            elapsed_s=round(self._snapshot.elapsed_s, 6),
        )

    def _attempt_once(self, now: float) -> None:
        assert self._started_at is not None
        timeout = self._policy.attempt_timeout(now - self._started_at)
        if timeout <= 0:
            self._fail(now, Reason.DEADLINE)
            return
        self._attempt += 1
        try:
            outcome = self._transport.attempt(self._url, self._body, timeout)
        except Exception as exc:  # noqa: BLE001 - a custom transport's bug must not kill the driver
            outcome = Outcome.of_failure(Failure.INTERNAL, cause_of(exc))
        after = self._clock.now()
        self._last_status = outcome.status
        self._last_error = outcome.cause
        if outcome.failure is Failure.CANCELLED:
            self._fail(after, Reason.CANCELLED)
            return
        try:
            decision = self._policy.decide(
                outcome,
                attempt=self._attempt,
                lane_failures=self._lane_failures,
                elapsed_s=after - self._started_at,
                now=after,
                rng=self._rng,
            )
        except Exception as exc:  # noqa: BLE001 - a policy bug must not strand the machine mid-attempt
            self._last_error = cause_of(exc)
            decision = Decision(Verdict.GIVE_UP, Reason.PERMANENT)
        if decision.verdict is Verdict.RETRY:
            assert decision.lane is not None and decision.delay_s is not None
            self._lane_failures[decision.lane] = self._lane_failures.get(decision.lane, 0) + 1
            self._next_attempt_at = after + decision.delay_s
        else:
            self._reason = decision.reason.value
        self._log_attempt(outcome, decision, after)
        self._fire(Trigger.ATTEMPT_DONE, after, verdict=decision.verdict)

    def _fail(self, now: float, reason: Reason) -> None:
        self._reason = reason.value
        trigger = Trigger.CANCEL if reason is Reason.CANCELLED else Trigger.ATTEMPT_DONE
        self._fire(trigger, now, verdict=Verdict.GIVE_UP)
        self._log_failed(now)

    # -- effects: snapshot, listeners, logs -----------------------------------

    def _make_snapshot(self, now: float, seq: int) -> Snapshot:
        return Snapshot(
            state=self._model.state,
            url=self._url,
            attempt=self._attempt,
            max_attempts=self._policy.max_attempts,
            started_at=self._started_at,
            state_since=now,  # a snapshot is made per transition
            next_attempt_at=self._next_attempt_at,
            last_status=self._last_status,
            last_error=self._last_error,
            reason=self._reason,
            taken_at=now,
            seq=seq,
            name=self.name,
            kind="registration",
        )

    def _publish(self, now: float) -> None:
        self._snapshot = self._make_snapshot(now, self._snapshot.seq + 1)
        if self._snapshot.terminal:
            self._transport.close()
        for listener in list(self._listeners):
            try:
                listener(self._snapshot)
            except Exception as exc:  # noqa: BLE001 - a listener's bug must not stop the registration
                self._log.error(logs.LISTENER_ERROR, listener=repr(listener), error=str(cause_of(exc)))

    def _common(self, now: float) -> dict[str, Any]:
        started = now if self._started_at is None else self._started_at
        fields: dict[str, Any] = {
            "attempt": self._attempt,
            "max_attempts": self._policy.max_attempts,
            "elapsed_s": round(now - started, 6),
        }
        if self._last_status is not None:
            fields["status"] = self._last_status
        if self._last_error is not None:
            fields["error_type"] = self._last_error.type
            fields["error"] = self._last_error.message
        return fields

    def _log_attempt(self, outcome: Outcome, decision: Decision, now: float) -> None:
        if decision.verdict is Verdict.REGISTERED:
            self._log.info(logs.REGISTERED, **self._common(now))
            return
        fields = self._common(now)
        if outcome.status is not None and outcome.body:
            fields["body"] = outcome.describe()
        # Same cause = same status, or same root cause: counted, summarised, not repeated.
        warn = self._warnings.record(outcome.describe() if outcome.status is None else str(outcome.status))
        fields["repeats"] = self._warnings.repeats
        if decision.verdict is Verdict.RETRY:
            assert decision.delay_s is not None
            fields.update(
                lane=decision.lane.value if decision.lane else None,
                delay_s=round(decision.delay_s, 6),
                next_attempt_at=round(now + decision.delay_s, 6),
            )
            (self._log.warning if warn else self._log.debug)(logs.ATTEMPT_FAILED, **fields)
        else:
            self._log_failed(now, fields)

    def _log_failed(self, now: float, fields: dict[str, Any] | None = None) -> None:
        fields = fields if fields is not None else self._common(now)
        fields["reason"] = self._reason
        # A deliberate stop is not an outage: it is worth a warning, not an error.
        level = self._log.warning if self._reason == Reason.CANCELLED.value else self._log.error
        level(logs.FAILED, **fields)
