"""What the plugin hooks in SGLang, checked against the installed release before hooking.

A target is named by its dotted path, the parameters it must have and the attributes
of upstream's instances the hook reads or writes (set in its class's ``__init__``:
found in the class's compiled methods). Resolving a target imports its module (as
``HookRegistry.apply_hooks`` would anyway). A target that is missing, whose parameters
differ, or whose class no longer sets an attribute the hook touches is reported, and
left to SGLang's own code.
"""

from __future__ import annotations

import dis
import inspect
import pkgutil
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CONN = "sglang.srt.disaggregation.common.conn"
DECODE = "sglang.srt.disaggregation.decode"
REGISTER_ROW = f"{CONN}.CommonKVManager._register_topology_row"
TRY_ENSURE = f"{CONN}.CommonKVManager.try_ensure_parallel_info"
HANDLE_FAILURE = f"{CONN}.CommonKVManager._handle_node_failure"
ENSURE_INFO = f"{DECODE}.DecodePreallocQueue._ensure_prefill_info"
BOOTSTRAP_INIT = f"{CONN}.CommonKVBootstrapServer.__init__"
# The main process: what SGLang was asked to run, and the moment its FastAPI app exists.
RESOLVE_ARGS = "sglang.srt.server_args.ServerArgs.resolve_once"
LAUNCH = "sglang.srt.entrypoints.engine.Engine._launch_subprocesses"
HTTP_SERVER = "sglang.srt.entrypoints.http_server"

# Checked against: sglang 0.5.23.
PARAMETERS: dict[str, tuple[str, ...]] = {
    REGISTER_ROW: ("self", "url", "payload"),
    TRY_ENSURE: ("self", "bootstrap_addr"),
    HANDLE_FAILURE: ("self", "failed_bootstrap_addr"),
    ENSURE_INFO: ("self", "addr_to_reqs"),
    RESOLVE_ARGS: ("self",),
    BOOTSTRAP_INIT: ("self", "host", "port"),
    # LAUNCH: its hook takes whatever it is given and returns None; only its existence matters
}

# Upstream's private instance attributes each hook reads or writes.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    TRY_ENSURE: ("prefill_info_table",),
    ENSURE_INFO: ("_ensure_last_attempt_time", "_ensure_retry_count", "_max_ensure_retries", "kv_manager"),
    BOOTSTRAP_INIT: ("dp_size", "attn_cp_size", "attn_tp_size", "pp_size", "prefill_port_table"),
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
    expected = PARAMETERS.get(target, names)
    if names != expected:
        return f"has parameters ({', '.join(names)}), expected ({', '.join(expected)})"
    attributes = ATTRIBUTES.get(target)
    missing = _unset(pkgutil.resolve_name(target.rsplit(".", 1)[0]), attributes) if attributes else []
    if missing:
        return f"its class no longer sets {', '.join(missing)}"
    return extra(obj) if extra is not None else None


def _unset(cls: Any, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` no method of ``cls``'s MRO assigns to ``self.<name>``. Read from the
    compiled methods, not the source: parsing the source file of each class of the MRO cost
    about 60 ms per target in every SGLang process at plugin load."""
    left = set(names)
    for klass in getattr(cls, "__mro__", ()):
        for member in vars(klass).values():
            code = getattr(inspect.unwrap(getattr(member, "__func__", member)), "__code__", None)
            if isinstance(code, types.CodeType):
                left -= _self_stores(code)
                if not left:
                    return []
    return [name for name in names if name in left]


def _self_stores(code: types.CodeType) -> set[str]:
    """The attributes ``self.<name> = ...`` stores in ``code`` and the code nested in it."""
    stored: set[str] = set()
    previous: dis.Instruction | None = None
    for instruction in dis.get_instructions(code):
        if (instruction.opname == "STORE_ATTR" and previous is not None
                and previous.opname in ("LOAD_FAST", "LOAD_DEREF") and previous.argval == "self"):
            stored.add(instruction.argval)
        previous = instruction
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            stored |= _self_stores(const)
    return stored


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
