"""The real-SGLang tier: sglang 0.5.23 installed (scripts/real_sglang.sh makes the environment).

Each launch runs in a process of its own (SGLang's load_plugins() runs once per process),
through tests/sglang_real/_boundary.py: see there what is real and what is stood in.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from coordinator.clock import REAL_TIME
from coordinator.instance import CHANNEL_VAR
from coordinator.testing import free_port

if TYPE_CHECKING:
    from tests.sglang_real._sglang import Plugins

BOUNDARY = Path(__file__).with_name("_boundary.py")
# A model SGLang's argument resolution accepts on a CPU: a config, no weights (nothing loads them).
TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 4,
              "num_hidden_layers": 2, "vocab_size": 256, "max_position_embeddings": 512,
              "rms_norm_eps": 1e-6, "torch_dtype": "float32"}
# Every launch (a few seconds of work) spends about 20 s importing torch and SGLang.
LAUNCH_TIMEOUT_S = 180.0


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    (path / "config.json").write_text(json.dumps(TINY_LLAMA))
    return path


# -- the in-process tests' fixtures (test_plugin.py) ------------------------------------------------
# They import SGLang when they run, not here: what only launches (test_launch.py, test_nodes.py,
# scripts/launch_figures.py import Launch from here) stays free of its import and the variables it sets.

@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[Plugins]:
    """The plugin framework, reset after the test (``_install.shutdown()`` included); the
    variables SGLang and the plugin read, cleared."""
    from tests.sglang_real._sglang import Plugins

    for name in list(os.environ):
        if name.startswith(("PREFILL_STARTUP_", "SGLANG_")):
            monkeypatch.delenv(name)
    # Ours alone: smg-grpc-servicer's plugins (installed with SGLang) hook SGLang's scheduler
    # and parser, which these tests would have to put back.
    monkeypatch.setenv("SGLANG_PLUGINS", "prefill_startup")
    monkeypatch.setenv("PREFILL_STARTUP_HEALTH_PORT", "0")  # the probe port on a free port
    monkeypatch.setenv(CHANNEL_VAR, "")  # the plugin exports its channel here; monkeypatch drops it after
    found = Plugins()
    yield found
    found.reset()


@pytest.fixture(scope="session")
def published(model_dir: Path) -> Iterator[Any]:
    """SGLang's runtime context as a prefill scheduler process publishes it (``register_to_bootstrap``
    reads the serving, disaggregation and parallel settings from it): real ServerArgs on the CPU."""
    from sglang.srt import runtime_context
    from sglang.srt.server_args import ServerArgs

    server_args = ServerArgs(model_path=str(model_dir), device="cpu", disaggregation_mode="prefill",
                             skip_tokenizer_init=True, host="127.0.0.1")
    runtime_context.publish(server_args, role="scheduler")
    yield server_args
    runtime_context.reset_context()


# -- launches, each a process tree of its own -------------------------------------------------------

def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any PREFILL_STARTUP_* or SGLANG_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFILL_STARTUP_", "SGLANG_"))}
    env.update(extra)
    return env


class Launch:
    """One real entry point running in a process tree of its own (see _boundary.py)."""

    def __init__(self, entry: str, args: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.health_port = int(env["PREFILL_STARTUP_HEALTH_PORT"])
        self.stderr_path = workdir / f"{entry}.stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen([sys.executable, str(BOUNDARY), entry, *args], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=workdir, text=True,
                                         start_new_session=True)
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self._events.put(json.loads(line))
        self._events.put(None)

    def event(self, name: str, timeout: float = LAUNCH_TIMEOUT_S) -> dict[str, Any]:
        """The next event called ``name`` (earlier ones are skipped)."""
        deadline = REAL_TIME.now() + timeout
        while True:
            try:
                got = self._events.get(timeout=max(0.0, deadline - REAL_TIME.now()))
            except queue.Empty:
                raise AssertionError(f"no {name!r} event in {timeout} s; stderr:\n{self.stderr()[-3000:]}") from None
            if got is None:
                raise AssertionError(f"exited ({self.proc.wait()}) before {name!r}; stderr:\n{self.stderr()[-3000:]}")
            if got["event"] == name:
                return got

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def probe(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def until(self, path: str, done: Callable[[int, str], bool], timeout: float = LAUNCH_TIMEOUT_S) -> tuple[int, str]:
        """Probe ``path`` until ``done(status, body)``; each answer must come (the port is up)."""
        deadline = REAL_TIME.now() + timeout
        while True:
            status, body = self.probe(path)
            if done(status, body):
                return status, body
            if REAL_TIME.now() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{path}: last {status} {body!r}; stderr:\n{self.stderr()[-3000:]}")
            REAL_TIME.sleep(0.1)  # a real process tree: its pace is its own

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float = LAUNCH_TIMEOUT_S) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._reader.join(5)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Launch]]:
    started: list[Launch] = []

    def start(entry: str, args: list[str], **env: str) -> Launch:
        env.setdefault("PREFILL_STARTUP_HEALTH_PORT", str(free_port()))
        one = Launch(entry, args, tmp_path, clean_env(**env))
        started.append(one)
        return one

    yield start
    for one in started:
        one.close()
