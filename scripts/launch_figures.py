"""The plugin in SGLang 0.5.23's real launch, measured: one prefill rank waits 5 s for the
bootstrap server, through `python -m sglang.launch_server` and `sglang serve`.

Runs tests/sglang_real/_boundary.py (real entry points up to Engine._launch_subprocesses,
whose GPU part is stood in) with the real SGLang environment's python:

    "$(bash scripts/real_sglang.sh --python)" scripts/launch_figures.py

Prints, per entry point: how many probes the probe port answered while
Engine._launch_subprocesses ran (and their statuses), what readyz said while the rank
waited, whether /startup answered on SGLang's app, and the `transitions` lines at INFO.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.clock import REAL_TIME  # noqa: E402 - after the path: run from a clone
from coordinator.testing import free_port  # noqa: E402
from tests.sglang_real.conftest import TINY_LLAMA, Launch, clean_env  # noqa: E402

WAIT_S = 5.0


def measure(entry: str, workdir: Path) -> dict[str, object]:
    model = workdir / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps(TINY_LLAMA))
    args = ["--model-path", str(model), "--disaggregation-mode", "prefill", "--tp-size", "1", "--device", "cpu",
            "--skip-tokenizer-init", "--host", "127.0.0.1", "--port", str(free_port()),
            "--disaggregation-bootstrap-port", str(free_port())]
    run = Launch(entry, args, workdir, clean_env(PREFILL_STARTUP_HEALTH_PORT=str(free_port())))
    try:
        run.event("launching")
        statuses: Counter[int] = Counter()
        _, waiting = run.until("/readyz", lambda s, b: "BACKOFF" in b)
        end = REAL_TIME.now() + WAIT_S
        while REAL_TIME.now() < end:  # the rank waits 5 s; the probe port is asked all along
            statuses[run.probe("/readyz")[0]] += 1
        run.send("bootstrap")
        run.until("/readyz", lambda s, b: s == 200)
        statuses[200] += 1
        answers = run.event("http_app")["answers"]
        run.send("stop")
        run.wait()
        stderr = run.stderr()
        return {
            "probe answers during _launch_subprocesses": dict(statuses),
            "readyz while waiting": json.loads(waiting)["waiting"],
            "/startup/readyz on SGLang's app": answers["/startup/readyz?verbose"][0],
            "transitions lines at INFO": sum("Finished processing state" in line or "transitions.core" in line
                                             for line in stderr.splitlines()),
        }
    finally:
        run.close()


def main() -> None:
    for entry in ("launch_server", "serve"):
        with tempfile.TemporaryDirectory() as workdir:
            print(entry, json.dumps(measure(entry, Path(workdir))))


if __name__ == "__main__":
    main()
