"""A decode process's readiness, as its main process's board sees it, through the plugin's
decode hooks (coordinator.sglang._decode) with stand-ins for SGLang's objects: the real
classes' behaviour is in tests/sglang_real; here, what the board shows after a lookup
fails and is replaced. Real: Discoveries on loopback, our BootstrapServer; a fake clock."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from coordinator import BootstrapServer, FakeClock
from coordinator.health._answer import answer
from coordinator.instance import Joined
from coordinator.instance._board import Board
from coordinator.instance._channel import Local
from coordinator.settings import from_env
from coordinator.sglang._context import PluginContext
from coordinator.sglang._decode import DecodeSide
from coordinator.sglang._stand_in_requests import CannedRequests
from coordinator.testing import example_payload, free_port
from states import State


@pytest.fixture
def side() -> Iterator[tuple[DecodeSide, Board]]:
    board = Board()
    context = PluginContext(from_env({"PREFILL_STARTUP_DEADLINE": "2"}), Joined(Local(board), board),
                            clock=FakeClock())
    decode = DecodeSide(context, CannedRequests(requests))
    yield decode, board
    decode.close()
    board.close()


def upstream_ensure(queue_: Any, addr_to_reqs: dict[str, list[Any]]) -> tuple[dict[str, list[Any]], list[Any]]:
    """What upstream's _ensure_prefill_info does with the addresses handed to it, in short:
    the one about to reach its retry limit is aborted, the others wait."""
    for addr in addr_to_reqs:
        queue_._ensure_retry_count.pop(addr, None)
    return {}, []


def queue_for() -> Any:
    manager = SimpleNamespace(prefill_info_table={})
    return SimpleNamespace(kv_manager=manager, _ensure_last_attempt_time={}, _ensure_retry_count={},
                           _max_ensure_retries=15)


def ready(board: Board) -> int:
    return answer(board.members(), "/readyz", "")[0]


def tick_until(decode: DecodeSide, queue_: Any, addr: str, state: State) -> None:
    """A request for ``addr`` (its first asks for a lookup), then the lookup's own pace: its
    thread on a fake clock, the builder's and the network's real ones (bounded)."""
    decode.ensure(upstream_ensure, queue_, {addr: ["req"]})
    pause = threading.Event()
    for _ in range(1000):
        found = decode._addresses[addr].discovery
        if found is not None and found.state is state:
            return
        pause.wait(0.01)
    raise AssertionError(f"{addr} never {state}")


def test_a_failed_lookup_replaced_by_a_success_leaves_the_decode_ready(side: tuple[DecodeSide, Board]) -> None:
    decode, board = side
    queue_ = queue_for()
    port = free_port()
    addr = f"127.0.0.1:{port}"
    # Nothing listens: the Discovery fails at its 2 s deadline (fake clock), and is on the board.
    tick_until(decode, queue_, addr, State.FAILED)
    assert ready(board) == 503
    decode.ensure(upstream_ensure, queue_, {addr: ["req"]})  # upstream aborts; the failed lookup is dropped
    assert ready(board) == 200 and board.members() == []
    # The prefill instance comes up; the next request's lookup succeeds.
    with BootstrapServer(port=port) as server:
        requests.put(server.url, json=example_payload(), timeout=5).raise_for_status()
        tick_until(decode, queue_, addr, State.REGISTERED)
        assert ready(board) == 200
        assert json.loads(answer(board.members(), "/readyz", "")[2])["state"] == "REGISTERED"
