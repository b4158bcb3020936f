"""What the plugin's hooks share in one SGLang process: settings, clock, where state is published."""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from coordinator.clock import Clock, Rng, SystemClock, entropy_rng
from coordinator.policy import RetryPolicy
from coordinator.settings import UNSET, Settings, var
from coordinator.state import Publisher, clean_stale

log = logging.getLogger("coordinator.sglang")
STATE_DIR_VAR = var("state_dir")


@dataclass
class Runtime:
    """``settings`` from :func:`coordinator.settings.from_env`; ``clock`` and ``rng_factory``
    are injected so tests drive the hooks on a fake clock."""

    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    rng_factory: Any = entropy_rng
    state_dir: str | None = None

    def rng(self) -> Rng:
        rng: Rng = self.rng_factory()
        return rng

    def policy(self, base: RetryPolicy) -> RetryPolicy:
        """``base`` (a side's defaults) with what the variables set."""
        s = self.settings
        changes: dict[str, Any] = {"attempt_timeout_s": s.attempt_timeout_s, "max_attempts": s.max_attempts}
        if s.deadline_s is not UNSET:
            changes["deadline_s"] = s.deadline_s
        return dataclasses.replace(base, **changes)

    def publish(self, driver: Any) -> None:
        """Publish ``driver``'s snapshots for the probes of the main process."""
        if self.state_dir is not None:
            Publisher(self.state_dir).attach(driver)


def resolve_state_dir(configured: os.PathLike[str] | str | None, environ: Any = os.environ) -> str:
    """The instance's state directory. The main process loads plugins before it starts
    the schedulers, and they inherit its environment: when none is configured, the
    first process makes one and exports it to the others."""
    directory = str(configured) if configured is not None else environ.get(STATE_DIR_VAR)
    if not directory:
        directory = tempfile.mkdtemp(prefix="prefill-startup-")
        environ[STATE_DIR_VAR] = directory
    else:
        os.makedirs(directory, exist_ok=True)
    removed = clean_stale(directory)  # a previous run's files would read as "gone" forever
    if removed:
        log.info("prefill_startup.state_cleaned directory=%s removed=%d", directory, removed)
    return directory
