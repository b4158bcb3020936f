"""Watching: what a driver's run does once settled at REGISTERED.

:mod:`._settled` is the rule for every driver (REGISTERED ends the run, or the run keeps
watch: :class:`Final`, :class:`Watch`); :mod:`._prefill` is what a watching
:class:`~coordinator.Discovery` checks in each round (:class:`PrefillWatch`), and the figures
that bound what that costs a bootstrap server.
"""

from coordinator.watch._prefill import (
    CLOSE_CHECK_S,
    DAMPING,
    DAMPING_QUIET_S,
    DEFAULT_GRACE_S,
    DEFAULT_WATCH_INTERVAL_S,
    GONE_CHECK_S,
    LONG_POLL_S,
    MAX_LEARNED_TARGETS,
    MAX_RETRY_AFTER_S,
    RANKS_PER_CHECK,
    REFUSED_GRACE_S,
    Heard,
    PrefillWatch,
)
from coordinator.watch._settled import FINAL, Final, Invalidation, Watch

__all__ = [
    "CLOSE_CHECK_S", "DAMPING", "DAMPING_QUIET_S", "DEFAULT_GRACE_S", "DEFAULT_WATCH_INTERVAL_S", "FINAL",
    "GONE_CHECK_S", "LONG_POLL_S", "MAX_LEARNED_TARGETS", "MAX_RETRY_AFTER_S", "RANKS_PER_CHECK",
    "REFUSED_GRACE_S", "Final", "Heard", "Invalidation", "PrefillWatch", "Watch",
]
