"""What the plugin hooks in SGLang, checked against the installed release before hooking.

A target is named by its dotted path and the parameters it must have; resolving it
imports its module (as ``HookRegistry.apply_hooks`` would anyway). A target that is
missing or whose parameters differ is reported, and left to SGLang's own code.
"""

from __future__ import annotations

import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CONN = "sglang.srt.disaggregation.common.conn"
DECODE = "sglang.srt.disaggregation.decode"
REGISTER_ROW = f"{CONN}.CommonKVManager._register_topology_row"
TRY_ENSURE = f"{CONN}.CommonKVManager.try_ensure_parallel_info"
HANDLE_FAILURE = f"{CONN}.CommonKVManager._handle_node_failure"
ENSURE_INFO = f"{DECODE}.DecodePreallocQueue._ensure_prefill_info"

# Checked against: sglang 0.5.23.
PARAMETERS: dict[str, tuple[str, ...]] = {
    REGISTER_ROW: ("self", "url", "payload"),
    TRY_ENSURE: ("self", "bootstrap_addr"),
    HANDLE_FAILURE: ("self", "failed_bootstrap_addr"),
    ENSURE_INFO: ("self", "addr_to_reqs"),
}


@dataclass(frozen=True)
class Hook:
    target: str
    kind: str  # a HookType member's name: "AROUND", "AFTER", ...
    fn: Callable[..., Any]


def problem(target: str, extra: Callable[[Any], str | None] | None = None) -> str | None:
    """Why ``target`` cannot be hooked in the installed SGLang, or None when it can."""
    try:
        obj = pkgutil.resolve_name(target)
    except (ImportError, AttributeError, ValueError) as exc:
        return f"not found in the installed SGLang ({type(exc).__name__}: {exc})"
    try:
        names = tuple(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return "has no signature to check"
    expected = PARAMETERS[target]
    if names != expected:
        return f"has parameters ({', '.join(names)}), expected ({', '.join(expected)})"
    return extra(obj) if extra is not None else None


def calls_module_requests_get(method: Any) -> str | None:
    """The decode hook hands upstream's body its answer through the module's ``requests``
    name (upstream's own checks then run on it): both must still be there."""
    module = inspect.getmodule(method)
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError):
        return "its source cannot be read to check how it fetches"
    if module is None or not hasattr(getattr(module, "requests", None), "get") or "requests.get(" not in source:
        return "no longer fetches through its module's requests.get"
    return None
