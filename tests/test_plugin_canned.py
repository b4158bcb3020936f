"""The plugin's stand-in for ``requests`` in SGLang's conn module: on the thread it answers
for, only that address's topology; nothing reaches the network there."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from coordinator.sglang._stand_in_requests import CannedRequests

TOPOLOGY = "http://10.0.0.5:8998/route?prefill_dp_rank=-1&prefill_cp_rank=-1&target_tp_rank=-1&target_pp_rank=-1"


@pytest.fixture
def canned() -> tuple[CannedRequests, list[str]]:
    asked: list[str] = []
    return CannedRequests(SimpleNamespace(get=lambda url, *a, **k: asked.append(url))), asked


def test_the_topology_is_answered_from_memory_in_any_query_order(canned: tuple[CannedRequests, list[str]]) -> None:
    fake, asked = canned
    shuffled = ("http://10.0.0.5:8998/route?target_pp_rank=-1&target_tp_rank=-1&prefill_cp_rank=-1"
                "&prefill_dp_rank=-1")
    with fake.answering("10.0.0.5:8998", {"page_size": 1}):
        assert fake.get(TOPOLOGY, timeout=5).json() == {"page_size": 1}
        assert fake.get(shuffled).status_code == 200
    assert asked == []


@pytest.mark.parametrize("url", [
    "http://10.0.0.5:8998/route?prefill_dp_rank=0&prefill_cp_rank=0&target_tp_rank=1&target_pp_rank=0",  # a rank
    TOPOLOGY.replace("10.0.0.5", "10.0.0.6"),  # another prefill instance
    "http://10.0.0.5:8998/health",
    TOPOLOGY + "&wait=20",
])
def test_anything_else_is_refused_at_once_on_that_thread(canned: tuple[CannedRequests, list[str]], url: str) -> None:
    fake, asked = canned
    with fake.answering("10.0.0.5:8998", {}), pytest.raises(requests.ConnectionError, match="no network I/O"):
        fake.get(url)
    with fake.offline(), pytest.raises(requests.ConnectionError):
        fake.get(TOPOLOGY)
    assert asked == []


def test_other_threads_get_the_real_requests(canned: tuple[CannedRequests, list[str]]) -> None:
    fake, asked = canned
    seen: list[Any] = []
    with fake.answering("10.0.0.5:8998", {}):
        other = threading.Thread(target=lambda: seen.append(fake.get("http://10.0.0.5:8998/health")))
        other.start()
        other.join()
    assert asked == ["http://10.0.0.5:8998/health"]  # upstream's heartbeat thread: its own requests
