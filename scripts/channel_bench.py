"""The probes of an instance's main process while its channel is flooded with hostile datagrams.

A child process (a descendant: it passes the kernel's checks) sends as fast as it can for
``--seconds``: records for 10,000 distinct drivers (the board keeps 256 per process), `[]`,
`null`, nesting 8,000 deep, counts of 10**30, and a valid record now and then. Meanwhile the
main process's probe port (stdlib server) and a FastAPI app under uvicorn with SGLang's
kind of ``/health`` route and the probes mounted at ``/startup`` are asked over fresh
connections, first for as long with a quiet channel (the machine's own noise), then during the
flood. Prints each endpoint's latency figures against the target (p99 ≤ 50 ms).

    .venv/bin/python scripts/channel_bench.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import urllib.error
import urllib.request

from coordinator import health
from coordinator.clock import REAL_TIME
from coordinator.health._probe import Expected
from coordinator.instance import CHANNEL_VAR, join
from coordinator.testing import free_port

FLOOD = r"""
import json, os, socket, sys
from coordinator.clock import REAL_TIME
from coordinator.instance._wire import encode
from tests.test_instance import registered
name, seconds = sys.argv[1], float(sys.argv[2])
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
address = "\0" + name
good = json.loads(encode(1, registered().snapshot()))
hostile = [b"[]", b"null", b"[" * 8000, json.dumps({**good, "driver": 10**30}).encode()]
end, n, sent = REAL_TIME.now() + seconds, 0, 0
while REAL_TIME.now() < end:
    n += 1
    data = hostile[n % 4] if n % 5 else json.dumps({**good, "driver": n % 10_000}).encode()
    try:
        sock.sendto(data, address)
        sent += 1
    except OSError:
        pass
sys.stdout.write(f"{sent}\n")
"""


def ask(url: str) -> float:
    start = REAL_TIME.now()
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
    except urllib.error.HTTPError as e:  # 503: waiting for its ranks, an answer all the same
        e.read()
    return (REAL_TIME.now() - start) * 1000


def figures(name: str, channel: str, times: list[float]) -> str:
    times.sort()
    p99 = times[int(len(times) * 0.99) - 1]
    verdict = "met" if p99 <= 50 else "missed"
    return (f"| {name} | {channel} | {len(times)} | {statistics.median(times):.2f} | {p99:.2f} | {times[-1]:.2f} | "
            f"<= 50 ms: {verdict} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    import uvicorn
    from fastapi import FastAPI

    env = dict(os.environ)
    joined = join(env)
    board = joined.board
    assert board is not None
    board.expect(Expected(2))
    probes = health.serve(board.members, port=0, expected=board.expected)
    app = FastAPI()

    @app.get("/health")
    def _health() -> str:  # as SGLang's: answers while the engine runs
        return "ok"

    app.mount("/startup", health.asgi(board.members, expected=board.expected))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    while not server.started:
        REAL_TIME.sleep(0.05)
    urls = {"probe port /readyz?verbose": f"{probes.url}/readyz?verbose",
            "app /startup/readyz": f"http://127.0.0.1:{port}/startup/readyz",
            "app /health": f"http://127.0.0.1:{port}/health"}
    quiet: dict[str, list[float]] = {k: [] for k in urls}
    end = REAL_TIME.now() + args.seconds
    while REAL_TIME.now() < end:  # the same load without the flood: the machine's own noise
        for key, url in urls.items():
            quiet[key].append(ask(url))
    flooded: dict[str, list[float]] = {k: [] for k in urls}
    flood = subprocess.Popen([sys.executable, "-c", FLOOD, env[CHANNEL_VAR], str(args.seconds)],
                             env={**env, "PYTHONPATH": os.getcwd()}, stdout=subprocess.PIPE, text=True)
    while flood.poll() is None:
        for key, url in urls.items():
            flooded[key].append(ask(url))
    sent = int(flood.communicate()[0])
    print(f"flood: {sent:,} datagrams in {args.seconds:g} s from one descendant process; "
          f"board holds {len(board)} drivers (bound 256 per process)")
    print("| endpoint | channel | requests | p50 ms | p99 ms | max ms | target |")
    print("|---|---|---|---|---|---|---|")
    for key in urls:
        print(figures(key, "quiet", quiet[key]))
        print(figures(key, "flooded", flooded[key]))
    server.should_exit = True
    serving.join(10)
    probes.close()
    joined.close()


if __name__ == "__main__":
    main()
