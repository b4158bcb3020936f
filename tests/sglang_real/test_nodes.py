"""One prefill instance over two nodes: two process trees on loopback, node 0 hosting SGLang's
real bootstrap server (started by the real start_disagg_service), TP 4 split 2 + 2 by
SGLang's own _calculate_rank_ranges. Rank 3, on node 1, never gets to register."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from coordinator.testing import free_port
from tests.sglang_real.conftest import Launch


def node_args(model_dir: Path, rank: int, dist: str, bootstrap: int) -> list[str]:
    return ["--model-path", str(model_dir), "--disaggregation-mode", "prefill", "--tp-size", "4", "--device", "cpu",
            "--skip-tokenizer-init", "--host", "127.0.0.1", "--port", str(free_port()), "--nnodes", "2",
            "--node-rank", str(rank), "--dist-init-addr", dist, "--disaggregation-bootstrap-port", str(bootstrap)]


def test_node_0_names_the_rank_of_node_1_that_never_registered(launch: Callable[..., Launch],
                                                                model_dir: Path) -> None:
    dist, bootstrap = f"127.0.0.1:{free_port()}", free_port()
    node0 = launch("launch_server", node_args(model_dir, 0, dist, bootstrap))
    node1 = launch("launch_server", node_args(model_dir, 1, dist, bootstrap), BOUNDARY_STUCK_RANK="3")
    assert node0.event("launching")["ranks"] == [0, 1]
    assert node1.event("launching")["ranks"] == [2, 3]
    node0.send("bootstrap")
    node1.send("go")  # node 1 runs no bootstrap server
    # Node 0: its own two ranks and node 1's rank 2 registered; rank 3 missing, by name.
    status, body = node0.until("/readyz?verbose", lambda s, b: b.startswith("[-]ranks waiting for 1 of 4")
                               and b.count("ok\n") == 2)  # and node 0's own two drivers REGISTERED
    assert status == 503
    assert body.startswith("[-]ranks waiting for 1 of 4 ranks of the instance\n"
                           "[+]rank dp0-cp0-tp0-pp0 registered\n[+]rank dp0-cp0-tp1-pp0 registered\n"
                           "[+]rank dp0-cp0-tp2-pp0 registered\n[-]rank dp0-cp0-tp3-pp0: missing\n")
    assert json.loads(node0.probe("/readyz")[1])["missing"] == ["dp0-cp0-tp3-pp0"]
    # Node 1 has no HTTP server: its probe port shows its own ranks.
    status, body = node1.until("/readyz?verbose", lambda s, b: "[+]registration dp0-cp0-tp2-pp0 ok" in b)
    assert status == 503 and body.startswith("[-]ranks waiting for 1 of 2 ranks on this node\n")
    assert node1.probe("/livez")[0] == 200  # stuck, not failed
