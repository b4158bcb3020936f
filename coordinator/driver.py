"""The driver: a transitions.Machine built from the ``states`` table, stepped between effects.

Only the driver (``poll``, ``run`` or the background thread) fires triggers; the
machine's callbacks do nothing, and every effect (the attempt's I/O, sleeping, the
snapshot swap, the hooks) happens here between events. Readers only read the
snapshot. A subclass says what one attempt is (:class:`~coordinator.Registration`:
a PUT; :class:`~coordinator.Discovery`: a lookup round) and, if it watches, what one
round of watching is; whether the run goes on once settled is :mod:`coordinator.watch`'s rule.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from transitions import Machine
from transitions import State as MachineState

from coordinator import validate
from coordinator.clock import Clock, Rng, SystemClock, entropy_rng
from coordinator.instrumentation import AttemptRecord, Hook, Record, TransitionRecord, default_hooks
from coordinator.instrumentation._log import default_logger
from coordinator.outcome import Cause, Failure, HarnessError, Outcome, Reason, cause_of
from coordinator.policy import NO_FAILURES, Decision, Policy, RetryPolicy
from coordinator.snapshot import Kind, Snapshot
from coordinator.watch._settled import FINAL, Final, Invalidation, Watch
from states import GUARDS, SETTLED, TRANSITIONS, State, Trigger, Verdict


class _Stoppable(Protocol):
    def abort(self) -> None: ...

    def close(self) -> None: ...


T = TypeVar("T", bound=_Stoppable)
S = TypeVar("S", bound=Snapshot)
_sources = itertools.count(1)


class StartupFailed(RuntimeError):
    """Raised by ``run()`` (with ``on_exhausted="raise"``) when the driver ends FAILED."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.reason = snapshot.reason
        self.cause = snapshot.last_error
        last = f"HTTP {snapshot.last_status}" if snapshot.last_status is not None else str(snapshot.last_error)
        if snapshot.last_error is not None and snapshot.last_status is not None:
            last += f" ({snapshot.last_error})"
        super().__init__(
            f"{snapshot.kind} to {snapshot.url} failed ({snapshot.reason}) after "
            f"{snapshot.attempt} attempt(s); last: {last}"
        )


class _QuietState(MachineState):
    """transitions logs every state's entry and exit at INFO ("Finished processing state ...":
    48 lines for one rank waiting 5 s, where SGLang sets the root logger to INFO). Our own
    records already say each transition once; the machine's states have no callbacks to run."""

    def enter(self, event_data: Any) -> None:
        event_data.machine.callbacks(self.on_enter, event_data)

    def exit(self, event_data: Any) -> None:
        event_data.machine.callbacks(self.on_exit, event_data)


class _Machine(Machine):
    state_cls = _QuietState


def build_machine(model: object = None) -> Machine:
    """A plain Machine from the table: no auto transitions, no callbacks, guards from ``states``,
    no log line of its own."""
    return _Machine(
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


# One Machine for every driver of the process. A driver's model is never added to it
# (add_model scans a list and keeps the model alive until remove_model): the model
# fires the Machine's events itself. Events hold no per-model state, so drivers on
# different threads may fire at once.
_MACHINE = build_machine()


class _Model:
    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = State.INIT

    def trigger(self, name: str, **event: Any) -> bool:
        return bool(_MACHINE.events[name].trigger(self, **event))


class Driver(Generic[T, S]):
    """Drives one startup machine by ``policy``; see :class:`~coordinator.Registration`.

    ``run()`` blocks until REGISTERED or FAILED; ``poll()`` takes one step (an attempt
    blocks at most for its timeout; backoff is never waited on); ``start()`` runs it
    on a daemon thread. ``snapshot()`` may be called from any thread at any time.
    """

    kind: ClassVar[Kind]
    failure: ClassVar[type[StartupFailed]] = StartupFailed

    def __init__(
        self,
        url: str,
        *,
        policy: Policy | None,
        clock: Clock | None,
        rng: Rng | None,
        logger: Any,
        hooks: Sequence[Hook] | None,
        on_exhausted: Literal["raise", "return"],
        name: str | None,
        transport: T,
        watch: bool = False,
    ) -> None:
        if policy is None:
            policy = RetryPolicy()
        if not (callable(getattr(policy, "decide", None)) and callable(getattr(policy, "attempt_timeout", None))):
            raise TypeError(f"policy must be a RetryPolicy (or meet the Policy protocol), got {type(policy).__name__}")
        if on_exhausted not in ("raise", "return"):
            raise ValueError(f"on_exhausted must be 'raise' or 'return', got {on_exhausted!r}")
        if clock is not None and not (
                callable(getattr(clock, "now", None)) and callable(getattr(clock, "sleep", None))):
            raise TypeError(f"clock must have now() and sleep(), got {type(clock).__name__}")
        if rng is not None and not callable(getattr(rng, "random", None)):
            raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
        if name is not None:
            validate.name(name)
        # What the run does once settled (only watchers pay for a Watch's events).
        after: Final = Watch() if validate.flag(watch, "watch") else FINAL
        if hooks is not None:
            if logger is not None:
                raise ValueError("logger configures the default hooks: "
                                 "with hooks=, pass instrumentation.LogHook(logger)")
            hooks = list(hooks)
            for hook in hooks:
                if not callable(hook):
                    raise TypeError(f"hooks: each hook must be callable, got {type(hook).__name__}")
        self._url = url
        self._transport = transport
        self._policy = policy
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._rng = rng if rng is not None else entropy_rng()
        self._on_exhausted = on_exhausted
        self.name = name
        self._hooks: tuple[Hook, ...] = tuple(default_hooks(logger) if hooks is None else hooks)
        self._source = next(_sources)

        self._model = _Model()
        self._drive = threading.Lock()
        # Guards _thread: start() publishes it only once started, and stop() reads it under this,
        # so a stop() racing start() joins a started thread (never one not yet started).
        self._lifecycle = threading.Lock()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._crash: Exception | None = None  # what broke a background run: a test's fake, or a bug
        self._after = after
        self._listeners: list[Callable[[S], None]] = []
        self._lanes = NO_FAILURES  # handed from one retry decision to the next attempt's
        now = self._clock.now()
        self._snapshot = self._first_snapshot(
            state=State.INIT, url=url, attempt=0, max_attempts=policy.max_attempts, started_at=None,
            state_since=now, next_attempt_at=None, last_status=None, last_error=None, reason=None,
            taken_at=now, seq=0, name=name, kind=self.kind, deadline_s=policy.deadline_s,
        )

    # -- what a subclass provides -----------------------------------------------

    def _first_snapshot(self, **fields: Any) -> S:
        """The INIT snapshot, of the subclass's own snapshot type, from the common fields."""
        raise NotImplementedError

    def _perform(self, timeout: float) -> Outcome:
        """One attempt, bounded by ``timeout`` seconds; every failure is an Outcome."""
        raise NotImplementedError

    def _resolved(self, value: Any) -> dict[str, Any]:
        """The snapshot's fields for what an attempt resolved (``Outcome.value``), on REGISTERED;
        ``None`` on INVALIDATE. By default a driver resolves nothing beyond REGISTERED."""
        return {}

    def _watch_round(self, wake: threading.Event) -> Invalidation | None:
        """One round of watching, while REGISTERED: wait for the next check (``wake`` cuts it
        short), make it; why what was resolved no longer holds, or None. By default there is
        no check: only ``invalidate()`` (or ``stop()``) ends the wait."""
        wake.wait()
        return None

    def _forget(self) -> None:
        """On INVALIDATE: drop what the attempts had learnt (a subclass's caches)."""

    # -- readers (any thread) -------------------------------------------------

    def __repr__(self) -> str:
        s = self._snapshot
        return f"<{type(self).__name__} {self._url} {s.state.value} attempt={s.attempt}>"

    @property
    def state(self) -> State:
        return self._snapshot.state

    @property
    def url(self) -> str:
        return self._url

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def hooks(self) -> tuple[Hook, ...]:
        return self._hooks

    @property
    def transport(self) -> T:
        """What the attempts go through (a test's ``ScriptedTransport`` records its calls)."""
        return self._transport

    def snapshot(self) -> S:
        """The current frozen :class:`~coordinator.Snapshot`: from any thread, at any time,
        never torn (the driver swaps in a whole new one at each transition)."""
        return self._snapshot

    def add_listener(self, listener: Callable[[S], None]) -> None:
        """Call ``listener(snapshot)`` on the driver thread after every step that changed it."""
        self._listeners.append(listener)

    # -- driving --------------------------------------------------------------

    def poll(self) -> S:
        """Take at most one step; never waits on a backoff."""
        with self._drive:
            self._step()
            return self._snapshot

    def run(self, *, watch: bool = False) -> S:
        """Drive to REGISTERED or FAILED; with ``on_exhausted="raise"``, FAILED raises.

        ``watch=True`` (a driver made with ``watch=True``): go on watching after REGISTERED
        on this thread until ``stop()`` (from a listener, a hook or another thread), as
        ``start()`` does on a thread of its own."""
        if self._thread is not None:
            raise RuntimeError(f"{self.kind} runs in the background: use wait()")
        if watch and not self._after.watches:
            raise RuntimeError(f"{self.kind} was not made with watch=True")
        snapshot = self._guarded_run(keep_watching=watch)
        if self._crash is not None:
            raise self._crash
        if snapshot.state is State.FAILED and self._on_exhausted == "raise":
            raise self.failure(snapshot)
        return snapshot

    def start(self) -> Any:  # Self, for the subclass
        """Run on a named daemon thread and return at once."""
        with self._drive, self._lifecycle:
            if self._thread is not None:
                raise RuntimeError(f"{self.kind} already started")
            thread = threading.Thread(
                target=self._guarded_run, args=(True,),
                name=f"prefill-startup-{self.name or self.kind}",
                daemon=True,
            )
            thread.start()
            self._thread = thread
        return self

    def wait(self, timeout: float | None = None) -> S:
        """The terminal snapshot, or the current one when ``timeout`` expires first. A
        watching driver's run goes on after REGISTERED: this returns once it is there.

        Re-raises the error a background run ended on (a test's fake's ``HarnessError``, e.g.
        a script run past its end; or a bug), so the caller sees it."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            self._after.wait(thread, timeout)
        if self._crash is not None:
            raise self._crash
        return self._snapshot

    def invalidate(self, cause: str) -> None:
        """What REGISTERED stood for no longer holds (``cause`` says why, e.g. the prefill
        instance restarted): the driver goes back to REGISTERING and resolves again through
        the normal lanes. Only for a driver made with ``watch=True``; a no-op unless REGISTERED
        (what is being resolved then is newer than the caller's reason: nothing to drop, and
        nothing remembered for later). Thread-safe: the driver's own thread (or the next
        ``poll()``) fires the trigger."""
        after = self._after
        if not isinstance(after, Watch):
            raise RuntimeError(f"{self.kind} was not made with watch=True: REGISTERED is final for it")
        validate.name(cause, "cause")
        s = self._snapshot
        if s.state is State.REGISTERED:
            after.ask(s.seq, "asked", cause)

    def stop(self, timeout: float | None = None) -> S:
        """Cancel: the driver ends FAILED with reason "cancelled" unless already terminal."""
        self._cancel.set()
        self._after.interrupt()
        self._transport.abort()
        with self._lifecycle:
            thread = self._thread
        if thread is threading.current_thread():
            pass  # called from a listener or hook: the driver thread ends the run on its next step
        elif thread is not None:
            thread.join(timeout)
        elif self._drive.acquire(blocking=False):
            # No driver running: this thread may take the cancelling step itself.
            try:
                self._step()
                if self._after.goes_on(self._snapshot):
                    self._transport.close()  # a watcher kept it open
            finally:
                self._drive.release()
        return self._snapshot

    def _guarded_run(self, keep_watching: bool) -> S:
        try:
            return self._run_to_end(keep_watching)
        except Exception as exc:  # noqa: BLE001 - re-raised to the caller below, never swallowed
            # Not a network failure: a test's fake saying the test is wrong (HarnessError), or
            # a bug. The driver still ends (FAILED, "internal", so probes stop calling it
            # alive), and the error reaches the caller from run() or wait() as what it is.
            self._crash = exc
            with self._drive:
                self._fire(Trigger.CANCEL, self._clock.now(), {"reason": Reason.INTERNAL, "last_error": cause_of(exc)})
            return self._snapshot

    def _run_to_end(self, keep_watching: bool) -> S:
        """Until settled; with ``keep_watching`` (a run on its own thread, or ``run(watch=True)``)
        on through the rounds of watching for as long as the rule says the run goes on."""
        while True:
            with self._drive:
                self._step()
                snapshot = self._snapshot
            if snapshot.settled:
                if not (keep_watching and self._after.goes_on(snapshot)):
                    return snapshot
                if self._cancel.is_set():
                    self._transport.close()  # kept open while watching
                    return snapshot
                self._after.round(snapshot.seq, self._cancel, self._watch_round)
                continue
            if snapshot.state is State.BACKOFF and snapshot.next_attempt_at is not None:
                wait = snapshot.next_attempt_at - self._clock.now()
                if wait > 0 and not self._cancel.is_set():
                    self._clock.sleep(wait, self._cancel)

    def _step(self) -> None:
        state = self._model.state
        if state in SETTLED:
            if state is State.REGISTERED and not self._cancel.is_set():
                asked = self._after.take(self._snapshot.seq)
                if asked is not None:
                    self._reopen(*asked)
            return
        now = self._clock.now()
        if self._cancel.is_set():
            self._fire(Trigger.CANCEL, now, {"reason": Reason.CANCELLED})
        elif state is State.INIT:
            self._fire(Trigger.START, now, {"started_at": now, "attempt": 1})
        elif state is State.REGISTERING:
            self._attempt_once(now)
        elif state is State.BACKOFF:
            self._fire(Trigger.TIMER, now, {"attempt": self._snapshot.attempt + 1},
                       now=now, due_at=self._snapshot.next_attempt_at)

    def _reopen(self, code: str, message: str) -> None:
        self._lanes = NO_FAILURES
        self._forget()
        now = self._clock.now()
        prev = self._snapshot
        # A new resolution: its own attempt, its own budget from now, nothing of the old answer.
        self._fire(Trigger.INVALIDATE, now, {
            "attempt": prev.attempt + 1, "started_at": now, "reason": None, "last_status": None,
            "last_error": Cause("Invalidated", message), "invalidations": prev.invalidations + 1,
            **self._resolved(None),
        }, cause=code)

    def _fire(self, trigger: Trigger, at: float, changes: dict[str, Any],
              attempt: tuple[Outcome, Decision, float] | None = None, cause: str | None = None,
              **event: Any) -> None:
        """Fire ``trigger``; when it moves, the next snapshot is the previous one with ``changes``."""
        before = self._model.state
        if not self._model.trigger(trigger.value, **event):
            return  # a guard held (the timer is not due yet)
        after = self._model.state
        prev = self._snapshot
        changes.setdefault("next_attempt_at", None)  # only a move to BACKOFF sets it
        self._snapshot = snapshot = replace(prev, state=after, state_since=at, taken_at=at, seq=prev.seq + 1,
                                            **changes)
        if snapshot.settled and not self._after.goes_on(snapshot):
            self._transport.close()
        self._after.moved(snapshot)
        if self._hooks:  # no records for nobody (a simulated fleet has no hooks)
            if attempt is not None:
                outcome, decision, began = attempt
                self._emit(AttemptRecord(self._source, snapshot, outcome, decision, began, at))
            self._emit(TransitionRecord(self._source, snapshot, trigger, before, after, cause))
        for listener in tuple(self._listeners):
            try:
                listener(snapshot)
            except Exception as exc:  # noqa: BLE001 - a listener's bug must not stop the driver
                self._report("listener_error", listener, exc)

    def _emit(self, record: Record) -> None:
        for hook in self._hooks:
            try:
                hook(record)
            except Exception as exc:  # noqa: BLE001 - a hook's bug must not stop the driver
                self._report("hook_error", hook, exc)

    def _report(self, what: str, culprit: object, exc: Exception) -> None:
        # Straight to stdlib logging: the hooks themselves may be what is broken.
        fields = {what.split("_")[0]: repr(culprit), "url": self._url, "error": str(cause_of(exc))}
        default_logger().error(f"{self.kind}.{what}", **fields)

    def _attempt_once(self, now: float) -> None:
        prev = self._snapshot
        assert prev.started_at is not None
        timeout = self._policy.attempt_timeout(now - prev.started_at)
        if timeout <= 0:  # no time left for the attempt this REGISTERING began
            self._fire(Trigger.ATTEMPT_DONE, now, {"reason": Reason.DEADLINE}, verdict=Verdict.GIVE_UP)
            return
        try:
            outcome = self._perform(timeout)
        except HarnessError:
            raise  # a test's fake saying the test is wrong (e.g. a script run past its end)
        except Exception as exc:  # noqa: BLE001 - a custom transport's bug must not kill the driver
            outcome = Outcome.of_failure(Failure.INTERNAL, cause_of(exc))
        after = self._clock.now()
        changes: dict[str, Any] = {"last_status": outcome.status, "last_error": outcome.cause}
        if outcome.failure is Failure.CANCELLED:
            changes["reason"] = Reason.CANCELLED
            decision = Decision(Verdict.GIVE_UP, Reason.CANCELLED)
            self._fire(Trigger.CANCEL, after, changes, (outcome, decision, now))
            return
        try:
            decision = self._policy.decide(
                outcome,
                attempt=prev.attempt,
                lane_failures=self._lanes,
                elapsed_s=after - prev.started_at,
                now=after,
                rng=self._rng,
            )
        except Exception as exc:  # noqa: BLE001 - a policy bug must not strand the machine mid-attempt
            changes["last_error"] = cause_of(exc)
            decision = Decision(Verdict.GIVE_UP, Reason.PERMANENT)
        if decision.verdict is Verdict.RETRY:
            assert decision.delay_s is not None
            self._lanes = decision.lanes
            changes["next_attempt_at"] = after + decision.delay_s
        else:
            changes["reason"] = decision.reason
            if decision.verdict is Verdict.REGISTERED:
                changes.update(self._resolved(outcome.value))
        self._fire(Trigger.ATTEMPT_DONE, after, changes, (outcome, decision, now), verdict=decision.verdict)
