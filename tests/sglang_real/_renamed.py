"""A release that renamed a private attribute, then SGLang's real load_plugins() (a process of its own).

    python _renamed.py MODULE ATTRIBUTE DIR

Copies SGLang's real source of MODULE (e.g. sglang.srt.disaggregation.decode) into DIR with
every occurrence of ATTRIBUTE renamed, imports the copy as MODULE (an import hook: before
anything else imports MODULE, in SGLang's own import order), then runs load_plugins().
Prints one JSON line: the plugin's WARNING lines, every ERROR line (SGLang logs a plugin or
hook that failed), the targets the plugin hooked, and for each target whether it is still
SGLang's own function (not wrapped).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import json
import logging
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Copy(importlib.abc.MetaPathFinder):
    """Imports ``module`` from ``path`` instead: in SGLang's own import order (a package's
    ``__init__`` importing it included), under its real name."""

    def __init__(self, module: str, path: Path) -> None:
        self.module, self.path = module, path

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        return importlib.util.spec_from_file_location(name, self.path) if name == self.module else None


def load_renamed(module: str, attribute: str, where: Path) -> None:
    root = importlib.util.find_spec("sglang")  # finds the package without importing it
    assert root is not None and root.origin is not None
    real = Path(root.origin).parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    renamed, count = re.subn(rf"\b{re.escape(attribute)}\b", f"{attribute}_renamed", real.read_text(encoding="utf-8"))
    assert count, f"{attribute} is not in {real}"
    copy = where / real.name  # inspect reads the classes' source from here
    copy.write_text(renamed, encoding="utf-8")
    sys.meta_path.insert(0, Copy(module, copy))
    assert importlib.import_module(module).__file__ == str(copy)


def main() -> None:
    module, attribute, where = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    lines = Lines()
    logging.getLogger().addHandler(lines)
    load_renamed(module, attribute, where)
    from sglang.srt.plugins import load_plugins
    from sglang.srt.plugins.hook_registry import HookRegistry

    from coordinator.sglang import _install
    from coordinator.sglang import _targets as t

    load_plugins()
    hooked = sorted(target for target, hooks in HookRegistry._hooks.items()
                    if any(source is not None and source.plugin_name == "prefill_startup" for _, _, source in hooks))
    own = {target: not hasattr(pkgutil.resolve_name(target), "__wrapped__")
           for target in sorted((*t.PARAMETERS, t.LAUNCH))}
    _install.shutdown()
    print(json.dumps({
        "warnings": [r.getMessage() for r in lines.records
                     if r.levelno == logging.WARNING and r.name.startswith("coordinator")],
        "errors": [f"{r.name}: {r.getMessage()}" for r in lines.records if r.levelno >= logging.ERROR],
        "hooked": hooked, "own": own,
    }))


if __name__ == "__main__":
    main()
