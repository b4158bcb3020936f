"""The startup machine as data: states, triggers, guards and the one transition table.

Nothing here does I/O, reads a clock or logs; ``coordinator`` builds a
``transitions.Machine`` from :data:`TRANSITIONS` and does the effects.
"""

from states._table import (
    GUARDS,
    SETTLED,
    TRANSITIONS,
    State,
    Transition,
    Trigger,
    Verdict,
)

__all__ = ["GUARDS", "SETTLED", "TRANSITIONS", "State", "Transition", "Trigger", "Verdict"]
