"""Reading the settings, checking the targets, registering the hooks: what :func:`plugin` does."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from coordinator.clock import SystemClock
from coordinator.instance import Board, join
from coordinator.server._base import Running
from coordinator.settings import SettingError, from_env
from coordinator.sglang import _probes
from coordinator.sglang import _targets as t
from coordinator.sglang._context import PluginContext
from coordinator.sglang._decode import DecodeSide
from coordinator.sglang._expect import learn
from coordinator.sglang._prefill import register_row
from coordinator.sglang._roster import follow
from coordinator.sglang._stand_in_requests import install as install_canned

log = logging.getLogger("coordinator.sglang")
# The variables the plugin reads; the CLI's own (log format, level) are none of its business.
FIELDS = ("deadline_s", "attempt_timeout_s", "max_attempts", "health_host", "health_port", "on_failure", "watch")
# Where the hooks take time from; a test replaces it with a FakeClock factory.
clock_factory: Callable[[], Any] = SystemClock


@dataclass
class _Installed:
    context: PluginContext
    sides: list[DecodeSide]
    probes: Running | None


_installed: list[_Installed] = []  # this process's, for shutdown()


def shutdown() -> None:
    """Stop what the plugin started in this process: Discoveries, the probe port, the channel
    (tests; an embedder's exit)."""
    while _installed:
        done = _installed.pop()
        for side in done.sides:
            side.close()
        if done.probes is not None:
            done.probes.close()
        done.context.instance.close()


def install(environ: MutableMapping[str, str] | None = None) -> PluginContext | None:
    """Register the hooks with SGLang's HookRegistry; None (and no hook) on a bad setting."""
    env = os.environ if environ is None else environ
    try:
        settings = from_env(env, FIELDS)
        instance = join(env)
    except (SettingError, OSError) as exc:
        log.error("prefill_startup.disabled: %s; no hook applied, SGLang runs its own code", exc)
        return None
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    context = PluginContext(settings, instance, clock=clock_factory())
    installed = _Installed(context, [], None)
    _installed.append(installed)
    hooks: list[t.Hook] = []
    if _usable(t.REGISTER_ROW):
        hooks.append(t.Hook(t.REGISTER_ROW, "AROUND", register_row(context)))
    if _usable(t.TRY_ENSURE, t.calls_module_requests_get) and _usable(t.ENSURE_INFO):
        side = DecodeSide(context, install_canned(sys.modules[t.CONN]))
        installed.sides.append(side)
        hooks += [t.Hook(t.TRY_ENSURE, "AROUND", side.try_ensure), t.Hook(t.ENSURE_INFO, "AROUND", side.ensure)]
        if _usable(t.HANDLE_FAILURE):
            hooks.append(t.Hook(t.HANDLE_FAILURE, "AFTER", side.node_failed))
    board = instance.board
    if board is not None:  # the instance's main process: its probes
        installed.probes = _probes.serve(board, settings.health_host, settings.health_port)
        if _usable(t.RESOLVE_ARGS):
            url = None if installed.probes is None else installed.probes.url
            hooks.append(t.Hook(t.RESOLVE_ARGS, "AFTER", learn(board, url)))
        if _usable(t.BOOTSTRAP_INIT):  # node 0 hosts it: its probes then cover the whole instance
            hooks.append(t.Hook(t.BOOTSTRAP_INIT, "AFTER", follow(board)))
        # SGLang's app exists once http_server is imported: before the plugin loads (an
        # embedder's order), or by the time Engine._launch_subprocesses returns.
        if not _probes.mount(board) and _usable(t.LAUNCH):
            hooks.append(t.Hook(t.LAUNCH, "AFTER", _mount_after(board)))
    for hook in hooks:
        HookRegistry.register(hook.target, hook.fn, HookType[hook.kind])
    return context


def _mount_after(board: Board) -> Callable[..., None]:
    """An AFTER hook for ``Engine._launch_subprocesses``: it returns None, so SGLang's result stands."""

    def hook(result: Any, *args: Any, **kwargs: Any) -> None:
        _probes.mount(board)

    return hook


def _usable(target: str, extra: Callable[[Any], str | None] | None = None) -> bool:
    why = t.problem(target, extra)
    if why is not None:
        log.warning("prefill_startup.target_skipped target=%s: %s; SGLang's own code runs there", target, why)
    return why is None
