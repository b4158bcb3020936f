"""What the plugin's hooks share in one SGLang process: settings, clock, randomness, and
where its drivers are published (its instance's main process)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coordinator.clock import Clock, Rng, SystemClock, entropy_rng
from coordinator.instance import Joined
from coordinator.policy import RetryPolicy
from coordinator.settings import Settings, over


@dataclass
class PluginContext:
    """``settings`` from the ``PREFILL_STARTUP_*`` variables the plugin reads; ``clock``
    and ``rng_factory`` are injected so tests drive the hooks on a fake clock."""

    settings: Settings
    instance: Joined
    clock: Clock = field(default_factory=SystemClock)
    rng_factory: Callable[[], Rng] = entropy_rng

    def rng(self) -> Rng:
        return self.rng_factory()

    def policy(self, base: RetryPolicy) -> RetryPolicy:
        """``base`` (a side's defaults) with what the variables set."""
        return over(base, dataclasses.asdict(self.settings))

    def publish(self, driver: Any) -> Callable[[], None]:
        """Publish ``driver``'s snapshots to the main process's probes; the callable retires it."""
        return self.instance.publish.attach(driver)
