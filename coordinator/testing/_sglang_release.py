"""SGLang's released code (the ``sglang`` wheel from PyPI) loaded without torch/CUDA, for tests.

Nothing of SGLang is rewritten here: its source is read from the wheel and executed.
Only the heavy imports are stood in, each listed in :data:`STAND_INS` with its reason.

Real, imported normally from the unzipped wheel (:func:`wheel_source`):
  ``sglang.srt.plugins`` (``load_plugins``, entry points of group ``sglang.srt.plugins``
  found by ``importlib.metadata.entry_points``, the ``SGLANG_PLUGINS`` filter),
  ``sglang.srt.plugins.hook_registry`` (``HookRegistry``, ``HookType``),
  ``sglang.srt.environ`` (``envs``; standard library only), ``sglang.version``;
  ``sglang.srt``, ``sglang.srt.disaggregation`` (namespace packages in the wheel).

Real definitions, executed from the wheel's source text with their own line numbers
(the rest of each file is left out, see :func:`load_conn`, :func:`load_decode`):
  ``sglang.srt.disaggregation.common.conn``: its light imports (standard library,
  ``requests``, ``aiohttp.web``, ``envs``), ``logger``, ``PrefillServerInfo``,
  ``PrefillRankInfo``, the whole ``CommonKVBootstrapServer``, and a ``CommonKVManager``
  holding only the class attributes and the methods in :data:`CONN_MANAGER_METHODS`;
  there also, taken from other files of the wheel: ``StateType``, ``KVPoll``, ``KVArgs``,
  ``BaseKVBootstrapServer`` (``disaggregation/base/conn.py``) and ``NetworkAddress`` with
  its helpers (``utils/network.py``).
  ``sglang.srt.disaggregation.decode``: ``logger`` and a ``DecodePreallocQueue`` holding
  only ``_ensure_prefill_info``.
  Each is registered in ``sys.modules`` under its real name, so ``HookRegistry`` targets
  such as ``sglang.srt.disaggregation.common.conn.CommonKVManager.try_ensure_parallel_info``
  resolve through ``pkgutil.resolve_name``.

Stood in: the names in :data:`STAND_INS` (packages whose ``__init__`` would import the
world, base classes, runtime-context accessors, a zmq-socket cache), and the real heavy
``__init__`` of ``CommonKVManager`` / ``DecodePreallocQueue``: :func:`make_kv_manager` and
:func:`make_prealloc_queue` build instances without it. The attributes they set come from
the real ``__init__`` where its expression is self-contained (``{}``, ``threading.Lock()``,
``defaultdict(set)``, ``max(envs.X.get(), 2.0)``, ``15``...: evaluated from the source),
else from :data:`MANAGER_DEFAULTS` (what the runtime context gives one decode rank of a
single-GPU engine). Loading fails loudly (:class:`SglangSourceChanged`) when a release no
longer has a taken definition, when kept code names something neither real nor stood in,
or when a kept method reads a ``self`` attribute that nothing provides.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import types
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.clock import REAL_TIME, FakeClock
from coordinator.testing.faultserver import free_port

__all__ = [
    "CONN_MANAGER_METHODS",
    "DEFAULT_VERSION",
    "KV_ARGS_DEFAULTS",
    "MANAGER_DEFAULTS",
    "STAND_INS",
    "FakeTime",
    "PluginFramework",
    "SglangReleaseUnavailable",
    "SglangSourceChanged",
    "bootstrap_server",
    "default_cache_dir",
    "load_conn",
    "load_decode",
    "make_kv_args",
    "make_kv_manager",
    "make_prealloc_queue",
    "plugin_framework",
    "start_bootstrap_server",
    "stop_bootstrap_server",
    "wheel_source",
]

DEFAULT_VERSION = "0.5.23"

CONN = "sglang.srt.disaggregation.common.conn"
DECODE = "sglang.srt.disaggregation.decode"

# Wheel members unzipped by wheel_source ("/" at the end: everything under it).
_MEMBERS = (
    "sglang/version.py",
    "sglang/_version.py",
    "sglang/srt/environ.py",
    "sglang/srt/plugins/",
    "sglang/srt/disaggregation/common/conn.py",
    "sglang/srt/disaggregation/decode.py",
    "sglang/srt/disaggregation/base/conn.py",
    "sglang/srt/utils/network.py",
)

#: The real ``CommonKVManager`` methods kept (besides its class attributes).
#: ``check_status``, ``update_status``, ``record_failure``: called by ``_handle_node_failure``.
CONN_MANAGER_METHODS = (
    "try_ensure_parallel_info",
    "_resolve_rank_mapping",
    "register_to_bootstrap",
    "_register_topology_row",
    "_start_heartbeat_checker_thread",
    "_on_heartbeat_success",
    "_handle_node_failure",
    "check_status",
    "update_status",
    "record_failure",
)

#: Every stand-in, ``"module: name"`` -> why. Nothing else differs from the wheel.
STAND_INS: dict[str, str] = {
    "sys.modules: sglang": "package with __path__ into the wheel; the real __init__ imports torch",
    "sys.modules: sglang.srt.disaggregation.common":
        "package with __path__ into the wheel; the real __init__ imports conn whole (zmq, torch, numpy)",
    f"{CONN}: BaseKVManager": "object; the real one is an ABC whose abstract methods the partial class lacks",
    f"{CONN}: CommonKVReceiver":
        "only disconnect_endpoint (classmethod, appends the endpoint to the class list .disconnected); "
        "the real one closes cached zmq sockets",
    f"{CONN}: get_parallel": "runtime-context accessor (real module imports torch): single node, no CP-TP sharing, "
                             "load_balance_method=follow_bootstrap_room, no DSA split, no KV sharding",
    f"{CONN}: get_serving": "runtime-context accessor: host 127.0.0.1, port 30000 (SGLang's default HTTP port)",
    f"{CONN}: get_disagg": "runtime-context accessor: decode allocation policy 'early', bootstrap port 8998",
    f"{CONN}: logger.warning_once":
        "in a real run transformers adds warning_once to every logging.Logger; here once per message, this logger only",
    f"{DECODE}: DecodeHiCachePreallocMixin": "object; the real mixin imports the HiCache (torch) stack",
}

#: ``CommonKVManager`` attributes whose real ``__init__`` value comes from its arguments or
#: the runtime context: here a decode rank 0 of a one-GPU engine (``kv_args``: :func:`make_kv_args`).
MANAGER_DEFAULTS: dict[str, object] = {
    "kv_cache_dtype_str": "auto",
    "kv_layout": None,
    "dsv41_spec_layout": None,
    "is_mla_backend": False,
    "is_hybrid_mla_backend": False,
    "bootstrap_host": "127.0.0.1",
    "bootstrap_port": 8998,
    "dist_init_addr": None,
    "attn_tp_size": 1,
    "attn_tp_rank": 0,
    "attn_cp_size": 1,
    "attn_cp_rank": 0,
    "dcp_size": 1,
    "dcp_rank": 0,
    "attn_dp_size": 1,
    "attn_dp_rank": 0,
    "system_dp_size": 1,
    "system_dp_rank": 0,
    "pp_size": 1,
    "pp_rank": 0,
    "local_ip": "127.0.0.1",
    "rank_port": 0,  # the real one is a bound zmq PULL socket's port
    "enable_all_cp_ranks_for_transfer": False,
}

#: ``KVArgs`` fields the kept code reads, for :func:`make_kv_args`.
KV_ARGS_DEFAULTS: dict[str, object] = {
    "engine_rank": 0,
    "page_size": 1,
    "kv_cache_dtype_str": "auto",
    "state_types": [],
    "system_dp_rank": 0,
    "pp_rank": 0,
    "rust_http_port": None,
    "is_hybrid_mla_backend": False,
}

# Self attributes that kept methods mention but only on paths the stand-ins never take.
_NOT_LOADED: dict[str, frozenset[str]] = {
    # update_status -> _notify_bootstrap only when deferred_bootstrap is set (policy prefill_complete).
    "CommonKVManager": frozenset({"_notify_bootstrap"}),
    "DecodePreallocQueue": frozenset(),
}

# Names an ``__init__`` right-hand side may use to be evaluated for a default.
_INIT_EVAL_NAMES = frozenset({"threading", "defaultdict", "requests", "envs",
                              "max", "min", "set", "dict", "list", "int", "float", "bool", "str"})
_LIGHT_THIRD_PARTY = frozenset({"requests", "aiohttp"})
_REAL_SGLANG_IMPORTS = frozenset({"sglang.srt.environ"})

_LOCK = threading.RLock()
_ROOT: dict[str, Path] = {}  # version -> extracted source root, once installed in sys.modules
_LOADED: dict[str, types.ModuleType] = {}
_INIT_DEFAULTS: dict[tuple[str, str], dict[str, types.CodeType]] = {}


class SglangReleaseUnavailable(RuntimeError):
    """The wheel could not be downloaded or does not hold what is needed."""


class SglangSourceChanged(RuntimeError):
    """The release's source no longer matches what this loader takes from it."""


# --- the wheel -----------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$PREFILL_STARTUP_SGLANG_CACHE``, else ``<repo>/.cache/sglang`` from a checkout,
    else ``~/.cache/prefill-startup/sglang``."""
    env = os.environ.get("PREFILL_STARTUP_SGLANG_CACHE")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "coordinator").is_dir():
        return repo / ".cache" / "sglang"
    return Path.home() / ".cache" / "prefill-startup" / "sglang"


def _find_wheel(cache: Path, version: str) -> Path | None:
    found = sorted(cache.glob(f"sglang-{version}-*.whl"))
    return found[0] if found else None


def _download(cache: Path, version: str) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.11", "--disable-pip-version-check", "-q",
               f"sglang=={version}", "-d", str(tmp)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SglangReleaseUnavailable(f"pip download sglang=={version} failed: {e}") from e
        wheels = sorted(tmp.glob(f"sglang-{version}-*.whl"))
        if done.returncode != 0 or not wheels:
            tail = [line[:200] for line in (done.stderr or done.stdout).strip().splitlines()[-2:]]
            raise SglangReleaseUnavailable(
                f"pip download sglang=={version} failed (exit {done.returncode}): {' | '.join(tail)}")
        target = cache / wheels[0].name
        os.replace(wheels[0], target)  # atomic: a concurrent run replaces it with the same bytes
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def wheel_source(version: str = DEFAULT_VERSION, cache_dir: Path | str | None = None) -> Path:
    """A directory holding ``sglang/...``: the needed members of the ``sglang==version`` wheel.

    Downloads the wheel (``pip download``) only when it is not in the cache; unzips into a
    temporary directory renamed into place, so concurrent runs never see a partial tree.
    Raises :class:`SglangReleaseUnavailable` when it cannot.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha256("\n".join(_MEMBERS).encode()).hexdigest()[:10]
    final = cache / f"sglang-{version}-src-{digest}"
    if (final / "sglang").is_dir():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(cache, version) or _download(cache, version)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=cache))
    try:
        try:
            with zipfile.ZipFile(wheel) as zf:
                names = zf.namelist()
                for member in _MEMBERS:
                    chosen = [n for n in names if (n.startswith(member) if member.endswith("/") else n == member)
                              and not n.endswith("/")]
                    if not chosen:
                        raise SglangReleaseUnavailable(f"{wheel.name} has no {member}")
                    for name in chosen:
                        zf.extract(name, tmp)
        except zipfile.BadZipFile as e:
            raise SglangReleaseUnavailable(f"{wheel} is not a wheel: {e}") from e
        os.chmod(tmp, 0o755)  # mkdtemp made it private
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "sglang").is_dir():  # not a concurrent run that won the rename
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --- sys.modules -----------------------------------------------------------------------------


def _package(name: str, path: Path) -> types.ModuleType:
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(path)]
    module = importlib.util.module_from_spec(spec)
    return module


def _register(name: str, module: types.ModuleType) -> None:
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


@contextlib.contextmanager
def _unregistered_on_error(name: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        sys.modules.pop(name, None)
        parent, _, child = name.rpartition(".")
        if parent in sys.modules and child in vars(sys.modules[parent]):
            delattr(sys.modules[parent], child)
        raise


def _install_root(version: str, cache_dir: Path | str | None) -> Path:
    """Put the stand-in ``sglang`` package (path into the wheel) in ``sys.modules``, once."""
    with _LOCK:
        if version in _ROOT:
            return _ROOT[version]
        if _ROOT or "sglang" in sys.modules:
            have = getattr(sys.modules.get("sglang"), "__version__", "?")
            raise RuntimeError(f"sglang {have} is already imported in this process; cannot load {version}")
        src = wheel_source(version, cache_dir)
        importlib.invalidate_caches()
        root = _package("sglang", src / "sglang")
        _register("sglang", root)
        try:
            real_version = importlib.import_module("sglang.version").__version__
        except BaseException:
            del sys.modules["sglang"]
            raise
        if real_version != version:
            raise SglangSourceChanged(f"{src} holds sglang {real_version}, not {version}")
        setattr(root, "__version__", real_version)
        _ROOT[version] = src
        return src


# --- plugins ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginFramework:
    """SGLang's real plugin framework: ``load_plugins``, ``HookRegistry``, ``HookType``."""

    plugins: types.ModuleType  # sglang.srt.plugins
    hook_registry: types.ModuleType  # sglang.srt.plugins.hook_registry

    @property
    def load_plugins(self) -> Callable[[], None]:
        fn: Callable[[], None] = self.plugins.load_plugins
        return fn

    @property
    def HookRegistry(self) -> Any:  # noqa: N802 - SGLang's name
        return self.hook_registry.HookRegistry

    @property
    def HookType(self) -> Any:  # noqa: N802 - SGLang's name
        return self.hook_registry.HookType

    def reset(self) -> None:
        """Forget registered hooks (real ``HookRegistry.reset()``) and allow ``load_plugins()`` again.

        Patches already applied stay: restore patched attributes yourself (e.g. monkeypatch).
        """
        self.HookRegistry.reset()
        setattr(self.plugins, "_plugins_loaded", False)


def plugin_framework(version: str = DEFAULT_VERSION, cache_dir: Path | str | None = None) -> PluginFramework:
    """Import ``sglang.srt.plugins`` for real from the wheel, without ``sglang/__init__.py``."""
    _install_root(version, cache_dir)
    return PluginFramework(importlib.import_module("sglang.srt.plugins"),
                           importlib.import_module("sglang.srt.plugins.hook_registry"))


# --- taking definitions from the source ----------------------------------------------------


def _is_light_import(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        modules = [node.module or ""] if node.level == 0 else [""]
    else:
        modules = [alias.name for alias in node.names]
    for module in modules:
        top = module.split(".")[0]
        if module in _REAL_SGLANG_IMPORTS:
            continue
        if top == "__future__" or top in sys.stdlib_module_names or top in _LIGHT_THIRD_PARTY:
            continue
        return False
    return True


def _parse(src: Path, rel: str) -> tuple[Path, ast.Module]:
    path = src / rel
    return path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _take(tree: ast.Module, path: Path, names: Mapping[str, Sequence[str] | None]) -> ast.Module:
    """The light imports plus the named top-level definitions; for a class given a list of
    methods, only its docstring, class attributes and those methods."""
    body: list[ast.stmt] = []
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if _is_light_import(node):
                body.append(node)
            continue
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            defined = [node.name]
        elif isinstance(node, ast.Assign):
            defined = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined = [node.target.id]
        else:
            continue
        wanted = [d for d in defined if d in names]
        if not wanted:
            continue
        found.update(wanted)
        methods = names[wanted[0]]
        if methods is not None and isinstance(node, ast.ClassDef):
            kept: list[ast.stmt] = []
            have: set[str] = set()
            for i, stmt in enumerate(node.body):
                doc = i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
                if doc or isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                    kept.append(stmt)
                elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name in methods:
                    kept.append(stmt)
                    have.add(stmt.name)
            if set(methods) - have:
                raise SglangSourceChanged(f"{path}: {node.name} has no {sorted(set(methods) - have)}")
            node = ast.ClassDef(name=node.name, bases=node.bases, keywords=node.keywords, body=kept,
                                decorator_list=node.decorator_list, **_location(node))
        body.append(node)
    if set(names) - found:
        raise SglangSourceChanged(f"{path} has no top-level {sorted(set(names) - found)}")
    return ast.Module(body=body, type_ignores=[])


def _location(node: ast.AST) -> dict[str, Any]:
    return {k: getattr(node, k) for k in ("lineno", "col_offset", "end_lineno", "end_col_offset")}


class _Names(ast.NodeVisitor):
    """Names loaded and bound anywhere in a tree; annotations are skipped (never evaluated
    under ``from __future__ import annotations``)."""

    def __init__(self) -> None:
        self.loaded: set[str] = set()
        self.bound: set[str] = set()
        self.self_attrs: set[str] = set()

    def visit_Name(self, node: ast.Name) -> None:  # noqa: N802
        (self.loaded if isinstance(node.ctx, ast.Load) else self.bound).add(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:  # noqa: N802
        if isinstance(node.value, ast.Name) and node.value.id == "self":
            self.self_attrs.add(node.attr)
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self.bound.add(node.arg)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.bound.add(node.name)
        for child in [*node.decorator_list, node.args, *node.body]:
            self.visit(child)

    visit_FunctionDef = _function  # noqa: N815
    visit_AsyncFunctionDef = _function  # noqa: N815

    def visit_ClassDef(self, node: ast.ClassDef) -> None:  # noqa: N802
        self.bound.add(node.name)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:  # noqa: N802
        self.visit(node.target)
        if node.value is not None:
            self.visit(node.value)

    def visit_alias(self, node: ast.alias) -> None:
        self.bound.add(node.asname or node.name.split(".")[0])

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:  # noqa: N802
        if node.name:
            self.bound.add(node.name)
        self.generic_visit(node)


def _names(node: ast.AST) -> _Names:
    names = _Names()
    names.visit(node)
    return names


def _check_names(module: ast.Module, path: Path, provided: Mapping[str, object]) -> None:
    names = _names(module)
    missing = names.loaded - names.bound - set(provided) - set(dir(builtins)) - {"__name__", "__file__"}
    if missing:
        raise SglangSourceChanged(f"kept code of {path} uses {sorted(missing)}: neither real nor stood in")


def _exec(name: str, path: Path, module_ast: ast.Module, namespace: Mapping[str, object],
          *, keep: bool = True) -> types.ModuleType:
    """Run the kept code in a new module ``name`` (in ``sys.modules`` during the run at
    least: dataclasses look their module up there while a class is built)."""
    if name in sys.modules:
        raise RuntimeError(f"{name} is already imported")
    module = types.ModuleType(name)
    module.__file__ = str(path)
    module.__dict__.update(namespace)
    code = compile(module_ast, str(path), "exec")
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    if not keep:
        del sys.modules[name]
    return module


def _donor(src: Path, rel: str, name: str, names: Sequence[str]) -> dict[str, object]:
    """Real definitions from another file of the wheel (its module is not registered)."""
    path, tree = _parse(src, rel)
    kept = _take(tree, path, dict.fromkeys(names))
    _check_names(kept, path, {})
    module = _exec(name, path, kept, {}, keep=False)
    return {n: module.__dict__[n] for n in names}


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise SglangSourceChanged(f"no class {name}")


def _record_init_defaults(module: types.ModuleType, original: ast.ClassDef, kept: ast.ClassDef,
                          explicit: set[str]) -> None:
    """From the real ``__init__``: the first self-contained ``self.X = expr`` of each attribute
    the kept methods read; fail if one of those attributes has no source at all."""
    needed: set[str] = set()
    for stmt in kept.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            needed |= _names(stmt).self_attrs
    class_level = {n for n in dir(getattr(module, kept.name)) if not n.startswith("__")}
    needed -= class_level | _NOT_LOADED[kept.name]
    init = next((s for s in original.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
    assignments: list[tuple[int, str, ast.expr]] = []
    for node in ast.walk(init) if init is not None else ():
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
            assignments.append((node.lineno, target.attr, value))
    found: dict[str, types.CodeType] = {}
    for _, attr, value in sorted(assignments, key=lambda a: a[0]):
        if attr in needed and attr not in found and _names(value).loaded <= _INIT_EVAL_NAMES:
            found[attr] = compile(ast.Expression(body=value), module.__file__ or "<sglang>", "eval")
    unprovided = needed - set(found) - explicit
    if unprovided:
        raise SglangSourceChanged(f"{kept.name}: kept methods read self.{sorted(unprovided)}, which nothing sets")
    _INIT_DEFAULTS[(module.__name__, kept.name)] = found


class _CommonKVReceiverStandIn:
    """Stand-in for ``CommonKVReceiver``: records what the real one would disconnect."""

    disconnected: list[str] = []

    @classmethod
    def disconnect_endpoint(cls, endpoint: str) -> None:
        cls.disconnected.append(endpoint)


def _get_parallel() -> types.SimpleNamespace:
    return types.SimpleNamespace(nnodes=1, enable_cp_tp_group_sharing=False,
                                 load_balance_method="follow_bootstrap_room",
                                 enable_dsa_cache_layer_split=False, enable_kv_cache_sharding=False,
                                 world_group=None)


def _get_serving() -> types.SimpleNamespace:
    return types.SimpleNamespace(host="127.0.0.1", port=30000)


def _get_disagg() -> types.SimpleNamespace:
    return types.SimpleNamespace(disaggregation_decode_allocation_policy="early",
                                 disaggregation_bootstrap_port=8998)


def _add_warning_once(logger: logging.Logger) -> None:
    if hasattr(logger, "warning_once"):  # transformers is imported: the real one
        return
    seen: set[str] = set()

    def warning_once(msg: str, *args: object) -> None:
        key = str(msg) % args if args else str(msg)
        if key not in seen:
            seen.add(key)
            logger.warning(msg, *args, stacklevel=2)

    setattr(logger, "warning_once", warning_once)


def _stand_ins(module: str, objects: Mapping[str, object]) -> dict[str, object]:
    for name in objects:
        assert f"{module}: {name}" in STAND_INS, name  # the table is the one place they are listed
    return dict(objects)


def load_conn(version: str = DEFAULT_VERSION, cache_dir: Path | str | None = None) -> types.ModuleType:
    """``sglang.srt.disaggregation.common.conn`` from the wheel's source, as far as it loads
    without torch/zmq/numpy (see the module docstring); the same module on every call."""
    with _LOCK:
        if CONN in _LOADED:
            return _LOADED[CONN]
        src = _install_root(version, cache_dir)
        importlib.import_module("sglang.srt.disaggregation")  # namespace package in the wheel
        _register("sglang.srt.disaggregation.common",
                  _package("sglang.srt.disaggregation.common", src / "sglang/srt/disaggregation/common"))
        namespace: dict[str, object] = {}
        namespace.update(_donor(src, "sglang/srt/disaggregation/base/conn.py", "sglang.srt.disaggregation.base.conn",
                                ["StateType", "KVPoll", "KVArgs", "BaseKVBootstrapServer"]))
        namespace.update(_donor(src, "sglang/srt/utils/network.py", "sglang.srt.utils.network",
                                ["_is_ipv6", "_wrap", "_parse_port", "NetworkAddress"]))
        namespace.update(_stand_ins(CONN, {
            "BaseKVManager": object,
            "CommonKVReceiver": _CommonKVReceiverStandIn,
            "get_parallel": _get_parallel,
            "get_serving": _get_serving,
            "get_disagg": _get_disagg,
        }))
        path, tree = _parse(src, "sglang/srt/disaggregation/common/conn.py")
        kept = _take(tree, path, {"logger": None, "PrefillServerInfo": None, "PrefillRankInfo": None,
                                  "CommonKVBootstrapServer": None, "CommonKVManager": CONN_MANAGER_METHODS})
        _check_names(kept, path, namespace)
        module = _exec(CONN, path, kept, namespace)
        with _unregistered_on_error(CONN):
            _register(CONN, module)
            _add_warning_once(module.logger)
            _record_init_defaults(module, _class(tree, "CommonKVManager"), _class(kept, "CommonKVManager"),
                                  set(MANAGER_DEFAULTS) | {"kv_args"})
        _LOADED[CONN] = module
        return module


def load_decode(version: str = DEFAULT_VERSION, cache_dir: Path | str | None = None) -> types.ModuleType:
    """``sglang.srt.disaggregation.decode`` with ``DecodePreallocQueue._ensure_prefill_info`` only."""
    with _LOCK:
        if DECODE in _LOADED:
            return _LOADED[DECODE]
        src = _install_root(version, cache_dir)
        importlib.import_module("sglang.srt.disaggregation")
        namespace = _stand_ins(DECODE, {"DecodeHiCachePreallocMixin": object})
        path, tree = _parse(src, "sglang/srt/disaggregation/decode.py")
        kept = _take(tree, path, {"logger": None, "DecodePreallocQueue": ("_ensure_prefill_info",)})
        _check_names(kept, path, namespace)
        module = _exec(DECODE, path, kept, namespace)
        with _unregistered_on_error(DECODE):
            _register(DECODE, module)
            _record_init_defaults(module, _class(tree, "DecodePreallocQueue"), _class(kept, "DecodePreallocQueue"),
                                  {"kv_manager"})
        _LOADED[DECODE] = module
        return module


def _instance(module: types.ModuleType, class_name: str, attrs: Mapping[str, object]) -> Any:
    cls = getattr(module, class_name)
    obj = cls.__new__(cls)  # the real __init__ needs GPUs, zmq, a scheduler
    for attr, code in _INIT_DEFAULTS[(module.__name__, class_name)].items():
        setattr(obj, attr, eval(code, vars(module)))  # noqa: S307 - the release's own expression
    for attr, value in attrs.items():
        setattr(obj, attr, value)
    return obj


def make_kv_args(conn: types.ModuleType, **attrs: object) -> Any:
    """A real ``KVArgs`` with :data:`KV_ARGS_DEFAULTS`, overridden by ``attrs``."""
    kv_args = conn.KVArgs()
    for attr, value in {**KV_ARGS_DEFAULTS, **attrs}.items():
        setattr(kv_args, attr, list(value) if isinstance(value, list) else value)
    return kv_args


def make_kv_manager(conn: types.ModuleType, **attrs: object) -> Any:
    """A ``CommonKVManager`` (the partial real class) without its ``__init__``: attributes from
    the real ``__init__`` where self-contained, :data:`MANAGER_DEFAULTS`, ``kv_args`` from
    :func:`make_kv_args`, then ``attrs``."""
    defaults: dict[str, object] = {**MANAGER_DEFAULTS, "kv_args": make_kv_args(conn)}
    return _instance(conn, "CommonKVManager", {**defaults, **attrs})


def make_prealloc_queue(decode: types.ModuleType, kv_manager: object, **attrs: object) -> Any:
    """A ``DecodePreallocQueue`` (partial) whose ``_ensure_*`` fields come from the real ``__init__``."""
    return _instance(decode, "DecodePreallocQueue", {"kv_manager": kv_manager, **attrs})


# --- the real bootstrap server ---------------------------------------------------------------


def _listening(server: Any, host: str, port: int, deadline: float) -> bool:
    while REAL_TIME.now() < deadline:
        if not server.thread.is_alive():
            return False  # _run_server logged the error (e.g. the port was taken) and returned
        loop = getattr(server, "_loop", None)
        if loop is not None and loop.is_running():
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                return True
            except OSError:
                pass
        REAL_TIME.sleep(0.01)
    raise TimeoutError(f"CommonKVBootstrapServer on {host}:{port} not listening in time")


def start_bootstrap_server(conn: types.ModuleType, host: str = "127.0.0.1", port: int | None = None,
                           *, timeout: float = 10.0) -> Any:
    """The real ``CommonKVBootstrapServer(host, port)`` (its own aiohttp thread), once it accepts.

    ``port=None``: a free port (retried if taken meanwhile). Stop with :func:`stop_bootstrap_server`.
    """
    deadline = REAL_TIME.now() + timeout
    for _ in range(3 if port is None else 1):
        chosen = free_port(host) if port is None else port
        server = conn.CommonKVBootstrapServer(host, chosen)
        try:
            if _listening(server, host, chosen, deadline):
                return server
        except BaseException:
            stop_bootstrap_server(server, timeout=timeout)
            raise
        server.thread.join(timeout)
    raise OSError(f"CommonKVBootstrapServer could not listen on {host}:{port or 'a free port'}")


def stop_bootstrap_server(server: Any, timeout: float = 10.0) -> None:
    """Stop it with its real ``close()`` (stops the loop; ``_run_server`` then cleans the runner
    and closes the loop) and join its thread. Its cleanup task is cancelled first, else the
    closed loop drops it pending ("Task was destroyed but it is pending!")."""
    loop = getattr(server, "_loop", None)
    if loop is not None and loop.is_running():
        def cancel_background() -> None:
            for task in list(server._background_tasks):
                task.cancel()
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(cancel_background)
    if loop is not None:
        server.close()
    server.thread.join(timeout)
    if server.thread.is_alive():
        raise RuntimeError("CommonKVBootstrapServer thread did not stop")


@contextlib.contextmanager
def bootstrap_server(conn: types.ModuleType, host: str = "127.0.0.1", port: int | None = None) -> Iterator[Any]:
    """``with bootstrap_server(conn) as server:`` start, yield, stop."""
    server = start_bootstrap_server(conn, host, port)
    try:
        yield server
    finally:
        stop_bootstrap_server(server)


class FakeTime:
    """A ``time`` module on a :class:`FakeClock`, to put in a loaded module's namespace
    (``monkeypatch.setattr(conn, "time", FakeTime(clock))``): ``sleep`` advances at once."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock if clock is not None else FakeClock()

    def monotonic(self) -> float:
        return self.clock.now()

    def time(self) -> float:
        return self.clock.now()

    def perf_counter(self) -> float:
        return self.clock.now()

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)


if __name__ == "__main__":  # the test command fetches the wheel first: a failure fails it loudly
    print(wheel_source())
