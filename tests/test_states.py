"""The transition table is the one source of truth: check it, and that the machine obeys it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transitions import MachineError

from coordinator.cli import diagram
from coordinator.driver import build_machine
from states import GUARDS, SETTLED, TRANSITIONS, State, Transition, Trigger, Verdict


def test_states_are_exactly_the_five() -> None:
    assert [s.value for s in State] == ["INIT", "REGISTERING", "BACKOFF", "REGISTERED", "FAILED"]
    assert issubclass(State, str) and State.INIT == "INIT"


def test_every_state_reachable_from_init() -> None:
    reached, frontier = {State.INIT}, [State.INIT]
    while frontier:
        src = frontier.pop()
        for t in TRANSITIONS:
            if t.source is src and t.dest not in reached:
                reached.add(t.dest)
                frontier.append(t.dest)
    assert reached == set(State)


def test_failed_has_no_way_out_and_registered_only_invalidate() -> None:
    assert SETTLED == {State.REGISTERED, State.FAILED}
    assert not [t for t in TRANSITIONS if t.source is State.FAILED]
    # A watching driver goes back to resolving when what it resolved no longer holds.
    out_of_registered = [(t.trigger, t.dest, t.guard) for t in TRANSITIONS if t.source is State.REGISTERED]
    assert out_of_registered == [(Trigger.INVALIDATE, State.REGISTERING, None)]


def test_non_terminal_states_can_be_cancelled() -> None:
    cancellable = {t.source for t in TRANSITIONS if t.trigger is Trigger.CANCEL}
    assert cancellable == set(State) - SETTLED


def test_every_guard_name_resolves_and_every_guard_is_used() -> None:
    used = {t.guard for t in TRANSITIONS if t.guard}
    assert used == set(GUARDS)
    assert all(callable(GUARDS[name]) for name in used)


def _passes(t: Transition, verdict: Verdict) -> bool:
    assert t.guard is not None, t  # every ATTEMPT_DONE row is guarded
    return GUARDS[t.guard](verdict=verdict)


def test_guarded_alternatives_are_mutually_exclusive() -> None:
    # For each (trigger, source), at most one guard may pass for any verdict.
    for verdict in Verdict:
        for src in State:
            passing = [t for t in TRANSITIONS if t.trigger is Trigger.ATTEMPT_DONE and t.source is src
                       and _passes(t, verdict)]
            assert len(passing) <= 1


class _M:
    """A bare model: the Machine binds ``state`` and ``trigger`` onto it (declared, not defined)."""

    state: State
    trigger: Callable[..., bool]


_PASSING_EVENT: dict[str | None, dict[str, Any]] = {
    None: {},
    "verdict_registered": {"verdict": Verdict.REGISTERED},
    "verdict_retry": {"verdict": Verdict.RETRY},
    "verdict_give_up": {"verdict": Verdict.GIVE_UP},
    "backoff_elapsed": {"now": 1.0, "due_at": 1.0},
}


@pytest.mark.parametrize("t", TRANSITIONS, ids=lambda t: f"{t.source.value}-{t.trigger.value}-{t.dest.value}")
def test_machine_fires_each_table_row(t: Transition) -> None:
    model = _M()
    build_machine(model)
    model.state = t.source
    event = _PASSING_EVENT[t.guard]
    assert model.trigger(t.trigger.value, **event)
    assert model.state is t.dest


def test_machine_has_no_transition_outside_the_table() -> None:
    model = _M()
    machine = build_machine(model)
    assert set(machine.events) == {t.value for t in Trigger}  # no auto "to_X" triggers
    table = {(t.trigger.value, t.source) for t in TRANSITIONS}
    for state in State:
        for trigger in Trigger:
            if (trigger.value, state) in table:
                continue
            model.state = state
            with pytest.raises(MachineError):
                model.trigger(trigger.value, verdict=Verdict.RETRY, now=0.0, due_at=0.0)


def test_timer_guard_holds_until_due() -> None:
    model = _M()
    build_machine(model)
    model.state = State.BACKOFF
    assert not model.trigger("timer", now=0.99, due_at=1.0)
    assert model.state is State.BACKOFF


def test_committed_diagram_matches_table() -> None:
    committed = Path(__file__).resolve().parents[1] / diagram.DEFAULT_PATH
    assert committed.read_text(encoding="utf-8") == diagram.render_mermaid(), (
        "diagrams/ is stale: run `prefill-startup diagram`"
    )
    for t in TRANSITIONS:
        assert f"{t.source.value} --> {t.dest.value}: {t.trigger.value}" in diagram.render_mermaid()
