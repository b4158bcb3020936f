"""Reading the settings, checking the targets, registering the hooks: what :func:`plugin` does."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

from coordinator.clock import SystemClock
from coordinator.settings import SettingError, from_env
from coordinator.sglang import _targets as t
from coordinator.sglang._canned import install as install_canned
from coordinator.sglang._decode import DecodeSide
from coordinator.sglang._prefill import register_row
from coordinator.sglang._probes import mount
from coordinator.sglang._runtime import Runtime, resolve_state_dir

log = logging.getLogger("coordinator.sglang")
# Where the hooks take time from; a test replaces it with a FakeClock factory.
clock_factory: Callable[[], Any] = SystemClock
_sides: list[DecodeSide] = []  # this process's, for shutdown()


def shutdown() -> None:
    """Stop every Discovery the hooks started in this process (tests; an embedder's exit)."""
    while _sides:
        _sides.pop().close()


def install(environ: MutableMapping[str, str] | None = None) -> Runtime | None:
    """Register the hooks with SGLang's HookRegistry; None (and no hook) on a bad setting."""
    env = os.environ if environ is None else environ
    try:
        settings = from_env(env)
        state_dir = resolve_state_dir(settings.state_dir, env)
    except (SettingError, OSError) as exc:
        log.error("prefill_startup.disabled: %s; no hook applied, SGLang runs its own code", exc)
        return None
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    runtime = Runtime(settings, clock=clock_factory(), state_dir=state_dir)
    hooks: list[t.Hook] = []
    if _usable(t.REGISTER_ROW):
        hooks.append(t.Hook(t.REGISTER_ROW, "AROUND", register_row(runtime)))
    if _usable(t.TRY_ENSURE, t.calls_module_requests_get) and _usable(t.ENSURE_INFO):
        side = DecodeSide(runtime, install_canned(sys.modules[t.CONN]))
        _sides.append(side)
        hooks += [t.Hook(t.TRY_ENSURE, "AROUND", side.try_ensure), t.Hook(t.ENSURE_INFO, "AROUND", side.ensure)]
        if _usable(t.HANDLE_FAILURE):
            hooks.append(t.Hook(t.HANDLE_FAILURE, "AFTER", side.node_failed))
    for hook in hooks:
        HookRegistry.register(hook.target, hook.fn, HookType[hook.kind])
    mount(state_dir)
    return runtime


def _usable(target: str, extra: Callable[[Any], str | None] | None = None) -> bool:
    why = t.problem(target, extra)
    if why is not None:
        log.warning("prefill_startup.target_skipped target=%s: %s; SGLang's own code runs there", target, why)
    return why is None
