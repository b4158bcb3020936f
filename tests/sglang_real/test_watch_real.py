"""A watching Discovery against SGLang 0.5.23's own bootstrap server (no generation header, no
long-poll): a rank that moves without the instance restarting is caught by comparing the
ranks learned from the topology. Real: CommonKVBootstrapServer, HTTP on loopback. The
Discovery's clock is fake: its pauses between checks take no real time."""

from __future__ import annotations

import requests

from coordinator import Discovery, FakeClock
from coordinator.testing import example_payload
from tests.sglang_real._sglang import bootstrap_server, register_over_http, until


def test_a_moved_rank_is_caught_against_sglangs_own_server() -> None:
    with bootstrap_server() as server:
        for rank in range(2):
            register_over_http(server.port, rank, 2)
        discovery = Discovery(f"127.0.0.1:{server.port}", clock=FakeClock(), hooks=(), watch=True).start()
        try:
            info = until(lambda: discovery.info, "the instance resolved")
            assert info.ranks[(0, 0, 1, 0)] == ("127.0.0.1", 17001)  # learned from the topology: no targets= given
            # Rank 1 comes back on another port (its scheduler restarted; the instance did not).
            moved = {**example_payload(1, 2), "rank_port": 18001}
            assert requests.put(f"http://127.0.0.1:{server.port}/route", json=moved, timeout=5).status_code == 200
            until(lambda: discovery.snapshot().invalidations >= 1, "the move seen")
            info = until(lambda: discovery.info, "resolved again")
            assert info.ranks[(0, 0, 1, 0)] == ("127.0.0.1", 18001)
            assert discovery.snapshot().invalidations == 1  # the server did not restart: once
        finally:
            discovery.stop(5)
