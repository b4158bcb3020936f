"""The prefill side: upstream's 5-attempt loop replaced by a Registration run to the end."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from coordinator.policy import RetryPolicy
from coordinator.protocol import rank_key
from coordinator.registration import Registration, RegistrationFailed
from coordinator.sglang._context import PluginContext
from states import State

log = logging.getLogger("coordinator.sglang")


def row_name(payload: Mapping[str, Any]) -> str:
    dp, cp, tp, pp = rank_key(payload)
    return f"dp{dp}-cp{cp}-tp{tp}-pp{pp}"


def register_row(context: PluginContext) -> Callable[..., None]:
    """An AROUND hook for ``CommonKVManager._register_topology_row(self, url, payload)``."""

    def hook(original: Callable[..., None], manager: Any, url: str, payload: dict[str, Any]) -> None:
        try:
            registration = Registration(url, payload, name=row_name(payload), policy=context.policy(RetryPolicy()),
                                        clock=context.clock, rng=context.rng(), on_exhausted="return")
        except (TypeError, ValueError, KeyError) as exc:
            # SGLang's payload is SGLang's business: on one we cannot check, its own loop runs.
            log.warning("prefill_startup.upstream_registration url=%s reason=%r: SGLang's own loop registers "
                        "this rank", url, str(exc))
            original(manager, url, payload)
            return
        context.publish(registration)
        snapshot = registration.run()
        if snapshot.state is State.REGISTERED:
            return
        if context.settings.on_failure == "return":
            log.error("prefill_startup.unregistered url=%s name=%s: %s; carrying on unregistered "
                      "(PREFILL_STARTUP_ON_FAILURE=return)", url, snapshot.name, snapshot.describe(snapshot.taken_at))
            return
        # An unregistered rank is useless: its decode side waits forever. Fail the init.
        raise RegistrationFailed(snapshot)

    return hook
