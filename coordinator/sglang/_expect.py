"""What readiness waits for, learned from SGLang's own server arguments in the main process.

A prefill instance is ready when every rank of it has registered. The main process of a
node starts that node's schedulers, one rank each; how many follows from the arguments
as SGLang's launcher splits them across nodes (``_calculate_rank_ranges`` in
``entrypoints/engine.py``, sglang 0.5.23): per node, ``max(pp // nnodes, 1)`` pipeline
ranks of ``tp // max(nnodes // pp, 1)`` tensor ranks, times the ``dp`` replicas.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from coordinator.health._probe import Expected
from coordinator.instance import Board

log = logging.getLogger("coordinator.sglang")
_FIELDS = ("disaggregation_mode", "nnodes", "tp_size", "pp_size", "dp_size", "attn_dp_size")


def expected(args: dict[str, Any]) -> Expected | None:
    """The ranks this node registers, from the resolved arguments; None when there is
    nothing to count (not a prefill instance, or ranks that do not register one by one)."""
    if args["disaggregation_mode"] != "prefill":
        return None
    nnodes, tp, pp, dp, attn_dp = (int(args[k]) for k in _FIELDS[1:])
    if min(nnodes, tp, pp, dp, attn_dp) < 1:
        raise ValueError(f"sizes must be >= 1: {args}")
    if attn_dp > 1 and os.environ.get("SGLANG_RUST_SERVER", "").lower() in ("1", "true", "yes"):
        return None  # one rank registers every row for the Rust registry: rows are not ranks
    ranks = max(pp // nnodes, 1) * (tp // max(nnodes // pp, 1)) * dp
    return Expected(ranks, "on this node" if nnodes > 1 else "of the instance")


def _resolved(server_args: Any) -> dict[str, Any]:
    try:  # resolution writes through declarations: read through SGLang's own view of them
        from sglang.srt.arg_groups.model_override_base import resolving_view

        view = resolving_view(server_args)
    except ImportError:
        view = server_args
    return {k: getattr(view, k) for k in _FIELDS}


def learn(board: Board, probes: str | None) -> Callable[..., None]:
    """An AFTER hook for ``ServerArgs.resolve_once(self)``: tell the board what to wait for.
    Its log line also names the probe port (``probes``), once SGLang's logging is set up:
    the line at plugin load came before it."""

    def hook(result: Any, server_args: Any) -> None:
        try:
            args = _resolved(server_args)
            found = expected(args)
        except (AttributeError, TypeError, ValueError) as exc:
            log.warning("prefill_startup.ranks_unknown: %s; readiness waits for the ranks it has seen", exc)
            return
        if found != board.expected():  # resolve_once is called again by each launch step
            board.expect(found)
            log.info("prefill_startup.ranks mode=%s expected=%s probes=%s", args["disaggregation_mode"],
                     "none" if found is None else f"{found.ranks} {found.where}", probes or "none")

    return hook
