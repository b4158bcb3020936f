"""What an SGLang node's readiness waits for: its ranks from SGLang's server arguments, and on
node 0 every rank of the instance from its bootstrap server's table (pure rules; the real
classes are in tests/sglang_real)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from coordinator.health._probe import Expected
from coordinator.sglang._expect import expected
from coordinator.sglang._roster import roster


def args(**kw: Any) -> dict[str, Any]:
    return {"disaggregation_mode": "prefill", "nnodes": 1, "tp_size": 1, "pp_size": 1, "dp_size": 1,
            "attn_dp_size": 1, **kw}


@pytest.mark.parametrize("kw,ranks,where", [
    ({"tp_size": 2}, 2, "of the instance"),
    ({"tp_size": 16, "nnodes": 2}, 8, "on this node"),  # TP 16 over two nodes
    ({"tp_size": 8, "pp_size": 2, "nnodes": 2}, 8, "on this node"),  # one pipeline stage per node
    ({"tp_size": 4, "pp_size": 4, "nnodes": 2}, 8, "on this node"),  # two stages per node
    ({"tp_size": 2, "dp_size": 3}, 6, "of the instance"),  # replicas
    ({"tp_size": 8, "attn_dp_size": 4}, 8, "of the instance"),  # DP attention runs inside the TP group
])
def test_the_ranks_a_node_runs(kw: dict[str, Any], ranks: int, where: str) -> None:
    assert expected(args(**kw)) == Expected(ranks, where)


def test_nothing_to_count_outside_prefill_or_for_the_rust_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    assert expected(args(disaggregation_mode="decode")) is None
    assert expected(args(disaggregation_mode="null")) is None
    monkeypatch.setenv("SGLANG_RUST_SERVER", "1")
    assert expected(args(tp_size=8, attn_dp_size=4)) is None  # one rank registers every row


@pytest.mark.parametrize("kw", [{"tp_size": 0}, {"nnodes": -1}, {"tp_size": "x"}])
def test_sizes_that_make_no_sense_are_an_error_not_a_count(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        expected(args(**kw))


def server(table: dict[int, Any], **sizes: Any) -> Any:
    return SimpleNamespace(prefill_port_table=table, **{"dp_size": 1, "attn_cp_size": 1, "attn_tp_size": 2,
                                                        "pp_size": 1, **sizes})


def test_the_roster_names_every_rank_of_the_instance() -> None:
    found = roster(server({0: {0: {0: {0: "rank"}}}}))
    assert found == Expected(2, "of the instance", (("dp0-cp0-tp0-pp0", True), ("dp0-cp0-tp1-pp0", False)))
    assert found.missing([]) == ["dp0-cp0-tp1-pp0"]


def test_no_roster_before_the_first_registration_or_once_the_server_is_gone() -> None:
    assert roster(server({}, attn_tp_size=None)) is None  # sizes come from the first PUT
    assert roster(None) is None
    assert roster(SimpleNamespace()) is None  # a release that renamed its fields
