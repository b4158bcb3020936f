"""Every rule of the startup machine, in one table (after h11's ``_state.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Mapping


class State(str, Enum):
    INIT = "INIT"
    REGISTERING = "REGISTERING"
    BACKOFF = "BACKOFF"
    REGISTERED = "REGISTERED"
    FAILED = "FAILED"


class Trigger(str, Enum):
    START = "start"
    ATTEMPT_DONE = "attempt_done"
    TIMER = "timer"
    CANCEL = "cancel"
    INVALIDATE = "invalidate"  # a watching driver's REGISTERED no longer holds (a prefill restart)


class Verdict(str, Enum):
    """What the retry policy concluded from one attempt; the only thing guards read."""

    REGISTERED = "registered"
    RETRY = "retry"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class Transition:
    trigger: Trigger
    source: State
    dest: State
    guard: str | None = None


# Where a run settles: wait() returns, probes and hooks report the result. FAILED is final.
# REGISTERED is final too unless the driver watches (coordinator.watch): then it may leave
# it on INVALIDATE, the one transition out of a settled state, and resolve again.
SETTLED: frozenset[State] = frozenset({State.REGISTERED, State.FAILED})

# Guards are pure predicates over the keyword arguments the driver passes with
# the trigger: ``verdict`` for ATTEMPT_DONE, ``now`` and ``due_at`` for TIMER.
GUARDS: Mapping[str, Callable[..., bool]] = {
    "verdict_registered": lambda verdict=None, **_: verdict is Verdict.REGISTERED,
    "verdict_retry": lambda verdict=None, **_: verdict is Verdict.RETRY,
    "verdict_give_up": lambda verdict=None, **_: verdict is Verdict.GIVE_UP,
    "backoff_elapsed": lambda now=None, due_at=None, **_: (
        now is not None and due_at is not None and now >= due_at
    ),
}

_S, _T = State, Trigger

TRANSITIONS: tuple[Transition, ...] = (
    Transition(_T.START, _S.INIT, _S.REGISTERING),
    Transition(_T.ATTEMPT_DONE, _S.REGISTERING, _S.REGISTERED, "verdict_registered"),
    Transition(_T.ATTEMPT_DONE, _S.REGISTERING, _S.BACKOFF, "verdict_retry"),
    Transition(_T.ATTEMPT_DONE, _S.REGISTERING, _S.FAILED, "verdict_give_up"),
    Transition(_T.TIMER, _S.BACKOFF, _S.REGISTERING, "backoff_elapsed"),
    Transition(_T.INVALIDATE, _S.REGISTERED, _S.REGISTERING),
    Transition(_T.CANCEL, _S.INIT, _S.FAILED),
    Transition(_T.CANCEL, _S.REGISTERING, _S.FAILED),
    Transition(_T.CANCEL, _S.BACKOFF, _S.FAILED),
)
