"""The whole instance, as the node hosting its bootstrap server sees it.

SGLang runs the KV bootstrap server in node 0's main process (the TokenizerManager starts
it). Every rank of the instance, on any node, registers there: the plugin reads that
server's own table in place, so node 0's probes name each rank as registered or missing.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import Any

from coordinator.health._probe import Expected
from coordinator.instance import Board

MAX_ROSTER = 65536  # ranks; past this the table is not walked on every probe


def roster(server: Any) -> Expected | None:
    """Every rank the server waits for, by name, and whether it has registered; None until
    its first registration has told it the instance's sizes."""
    if server is None:
        return None
    try:
        sizes = (server.dp_size, server.attn_cp_size, server.attn_tp_size, server.pp_size)
        if (not all(isinstance(n, int) and n >= 1 for n in sizes)
                or sizes[0] * sizes[1] * sizes[2] * sizes[3] > MAX_ROSTER):
            return None
        table = server.prefill_port_table
        entries = tuple((f"dp{dp}-cp{cp}-tp{tp}-pp{pp}", pp in table.get(dp, {}).get(cp, {}).get(tp, {}))
                        for dp, cp, tp, pp in itertools.product(*(range(n) for n in sizes)))
    except (AttributeError, TypeError, RuntimeError):  # RuntimeError: a table resized while read
        return None
    return Expected(len(entries), "of the instance", entries)


def follow(board: Board) -> Callable[..., None]:
    """An AFTER hook for ``CommonKVBootstrapServer.__init__(self, host, port)``."""

    def hook(result: Any, server: Any, *args: Any, **kwargs: Any) -> None:
        ref = weakref.ref(server)
        board.follow(lambda: roster(ref()))

    return hook
