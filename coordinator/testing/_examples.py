"""Valid example inputs, for tests and the demo."""

from __future__ import annotations

from typing import Any


def example_payload(rank: int = 0, tp_size: int = 1, *, rank_port: int = 17000) -> dict[str, Any]:
    """A valid payload for tensor-parallel rank ``rank`` of a single-DP, single-PP group."""
    return {
        "attn_tp_size": tp_size,
        "attn_tp_rank": rank,
        "attn_cp_size": 1,
        "attn_cp_rank": 0,
        "attn_dp_size": 1,
        "attn_dp_rank": 0,
        "pp_size": 1,
        "pp_rank": 0,
        "system_dp_size": 1,
        "system_dp_rank": 0,
        "rank_ip": "127.0.0.1",
        "rank_port": rank_port + rank,
        "page_size": 1,
        "kv_cache_dtype": "auto",
    }
