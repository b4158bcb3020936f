"""The package as a new user meets it: its version, ``python -m``, its metadata and licence,
a type checker outside the repository, and a module of the user's named ``states``."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import coordinator

ROOT = Path(__file__).resolve().parents[1]


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_version_comes_from_the_installed_metadata() -> None:
    installed = importlib.metadata.version("prefill-startup")
    assert coordinator.__version__ == installed
    for module in ("coordinator", "coordinator.cli"):
        r = run("-m", module, "--version")
        assert (r.returncode, r.stdout.strip()) == (0, f"prefill-startup {installed}"), r.stderr


def test_version_without_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert coordinator.__version__ == "0+unknown"


def test_python_dash_m_coordinator_runs_the_cli() -> None:
    r = run("-m", "coordinator", "diagram", "--check")
    assert r.returncode == 0, r.stderr
    assert "usage: prefill-startup" in run("-m", "coordinator", "--help").stdout


def test_a_users_states_module_is_named_as_the_culprit(tmp_path: Path) -> None:
    (tmp_path / "states.py").write_text("ANSWER = 42\n")
    r = run("-c", "import coordinator", cwd=tmp_path)  # the current directory comes first on sys.path
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ") and str(tmp_path / "states.py") in last and "Rename yours" in last
    assert "cannot import name" not in r.stderr


def test_metadata_licence_and_classifiers() -> None:
    meta = importlib.metadata.metadata("prefill-startup")
    assert meta["License-Expression"] == "Apache-2.0"
    assert "Typing :: Typed" in meta.get_all("Classifier", [])
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence


def test_the_venv_exposes_the_package_as_a_plain_path() -> None:
    """What a type checker needs: mypy and pyright follow a .pth line naming a directory,
    never an import hook (python/mypy#13392), which setuptools' editable install uses for
    a flat layout unless package-dir says otherwise."""
    # Every copy of the metadata: a source tree on sys.path holds its egg-info too.
    dists = importlib.metadata.distributions(name="prefill-startup")
    pth = [f for dist in dists for f in dist.files or [] if f.name.endswith(".pth")]
    if not pth:  # a regular install: the package sits in site-packages itself
        assert "site-packages" in Path(coordinator.__file__).parts
        return
    lines = [line for p in pth for line in Path(str(p.locate())).read_text().splitlines() if line.strip()]
    assert lines and not any(line.startswith("import") for line in lines), lines
    assert any((Path(line) / "coordinator" / "py.typed").is_file() for line in lines), lines


def test_mypy_strict_on_a_users_file_outside_the_repository(tmp_path: Path) -> None:
    (tmp_path / "user.py").write_text(textwrap.dedent("""
        from coordinator import Registration, RetryPolicy, bootstrap_url
        from states import State


        def register() -> State:
            url = bootstrap_url("127.0.0.1", 8998)
            return Registration(url, {}, policy=RetryPolicy(deadline_s=30)).state
    """))
    r = run("-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "user.py", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_help_describes_the_parameters_and_the_snapshot() -> None:
    import pydoc

    from coordinator import Discovery, Registration

    text = pydoc.render_doc(Registration, renderer=pydoc.TextDoc())
    for parameter in ("url", "payload", "policy", "clock", "token", "on_exhausted", "name", "watch"):
        assert f"``{parameter}``" in text
    assert Registration.snapshot.__doc__ and "any thread" in Registration.snapshot.__doc__
    assert Discovery.__doc__ and "watch=True" in Discovery.__doc__
