"""What a decode instance learns from a prefill instance's bootstrap server. Pure: no I/O.

``GET /route`` with all four query values ``-1`` answers the topology once every
prefill rank registered; with a target rank, that rank's ``{rank_ip, rank_port}``.
The parsers here turn those bodies into values, or raise :class:`AnswerError`
naming the field: a malformed answer is an error, never a crash.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from coordinator import validate
from coordinator.protocol._route import RankKey

Address = tuple[str, int]

# Topology fields: name -> (type, required). Sizes must be >= 1.
_SIZES = ("attn_tp_size", "attn_cp_size", "dp_size", "pp_size", "page_size")
TOPOLOGY_FIELDS: Mapping[str, type] = {
    **dict.fromkeys(_SIZES, int),
    "kv_cache_dtype": str,
    "follow_bootstrap_room": bool,
    "enable_dsa_cache_layer_split": bool,
    "prefill_http_port": int,
}
_OPTIONAL = {"follow_bootstrap_room": True, "enable_dsa_cache_layer_split": False, "prefill_http_port": None}


class AnswerError(ValueError):
    """A 200 answer that is not what the protocol says; ``field`` names the culprit."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field {field!r}: {problem}")
        self.field = field


@dataclass(frozen=True)
class PrefillInfo:
    """A complete prefill instance: its topology and the addresses of the target ranks."""

    attn_tp_size: int
    attn_cp_size: int
    dp_size: int
    pp_size: int
    page_size: int
    kv_cache_dtype: str
    follow_bootstrap_room: bool = True
    enable_dsa_cache_layer_split: bool = False
    prefill_http_port: int | None = None
    ranks: Mapping[RankKey, Address] = field(default_factory=lambda: MappingProxyType({}))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in TOPOLOGY_FIELDS}
        out["ranks"] = [
            {"dp": k[0], "cp": k[1], "tp": k[2], "pp": k[3], "rank_ip": ip, "rank_port": port}
            for k, (ip, port) in sorted(self.ranks.items())
        ]
        return out

    def has_rank(self, key: RankKey) -> bool:
        """Whether the topology says rank ``key`` exists."""
        sizes = (self.dp_size, self.attn_cp_size, self.attn_tp_size, self.pp_size)
        return all(0 <= k < n for k, n in zip(key, sizes))


def _object(body: str) -> Mapping[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        raise AnswerError("body", f"not JSON: {body[:80]!r}") from None
    if not isinstance(data, dict):
        raise AnswerError("body", f"not a JSON object: {type(data).__name__}")
    return data


def _typed(data: Mapping[str, Any], name: str, kind: type) -> Any:
    try:
        return validate.of_type(data[name], kind, "value")
    except TypeError as exc:
        raise AnswerError(name, str(exc).removeprefix("value").strip()) from None


def parse_topology(body: str) -> PrefillInfo:
    """The topology answer (ranks still empty)."""
    data = _object(body)
    values: dict[str, Any] = {}
    for name, kind in TOPOLOGY_FIELDS.items():
        if data.get(name) is None:
            if name not in _OPTIONAL:
                raise AnswerError(name, "is missing")
            values[name] = _OPTIONAL[name]
            continue
        values[name] = _typed(data, name, kind)
        if name in _SIZES and values[name] < 1:
            raise AnswerError(name, f"must be >= 1, got {values[name]}")
    return PrefillInfo(**values)


def parse_rank(body: str) -> Address:
    """A target rank's answer: ``(rank_ip, rank_port)``."""
    data = _object(body)
    for name in ("rank_ip", "rank_port"):
        if name not in data:
            raise AnswerError(name, "is missing")
    ip, port = _typed(data, "rank_ip", str), _typed(data, "rank_port", int)
    if not ip:
        raise AnswerError("rank_ip", "is empty")
    if not 1 <= port <= 65535:
        raise AnswerError("rank_port", f"must be in [1, 65535], got {port}")
    return ip, port


def mismatch(info: PrefillInfo, expect: Mapping[str, Any]) -> str | None:
    """The first expected field the topology disagrees with, described; None when all agree."""
    for name, want in expect.items():
        got = getattr(info, name)
        if got != want:
            return f"{name}: the prefill instance has {got!r}, this decode instance expects {want!r}"
    return None
