"""What a decode instance learns from a prefill instance's bootstrap server. Pure: no I/O.

``GET /route`` with all four query values ``-1`` answers the topology once every
prefill rank registered; with a target rank, that rank's ``{rank_ip, rank_port}``.
The parsers here turn those bodies into values, or raise :class:`AnswerError`
naming the field: a malformed answer is an error, never a crash.

The topology answer is SGLang's ``dataclasses.asdict(PrefillServerInfo(...))``
(0.5.23): :meth:`PrefillInfo.topology_json` gives it back key for key, so that it can
be handed to upstream's ``PrefillServerInfo(**data)``, which takes no unknown key.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from coordinator import validate
from coordinator.protocol._route import RankKey

Address = tuple[str, int]

# Topology fields: name -> type, in the order of upstream's answer. Sizes must be >= 1.
_SIZES = ("attn_tp_size", "attn_cp_size", "dp_size", "pp_size", "page_size")
TOPOLOGY_FIELDS: Mapping[str, type] = {
    **dict.fromkeys(_SIZES, int),
    "kv_cache_dtype": str,
    "follow_bootstrap_room": bool,
    "enable_dsa_cache_layer_split": bool,
    "dsv41_spec_layout": dict,
    "kv_layout": str,
    "decode_allocation_policy": str,
    "enable_kv_cache_sharding": bool,
    "prefill_http_port": int,
}
# Optional fields and their value when absent (or null).
_OPTIONAL: Mapping[str, Any] = {
    "follow_bootstrap_room": True, "enable_dsa_cache_layer_split": False, "dsv41_spec_layout": None,
    "kv_layout": None, "decode_allocation_policy": "early", "enable_kv_cache_sharding": False,
    "prefill_http_port": None,
}
# Left out of upstream's answer when None (``payload.pop``), unlike prefill_http_port.
_OMITTED_WHEN_NONE = ("dsv41_spec_layout", "kv_layout")
# The decode side's rank mapping, always null in the answer: it computes them itself.
_DECODE_SIDE_FIELDS = ("target_tp_rank", "target_tp_ranks", "target_cp_ranks", "target_pp_ranks",
                      "required_dst_info_num", "required_prefill_response_num")


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
    kv_layout: str | None = None
    dsv41_spec_layout: Mapping[str, Any] | None = None
    decode_allocation_policy: str = "early"
    enable_kv_cache_sharding: bool = False
    ranks: Mapping[RankKey, Address] = field(default_factory=lambda: MappingProxyType({}))

    def topology_json(self) -> dict[str, Any]:
        """The topology answer as SGLang 0.5.23's bootstrap server sends it: same keys, same
        order, ``dsv41_spec_layout`` and ``kv_layout`` left out when None. A new dict
        (the layout deep-copied) each call: upstream's decode side keeps what it is given."""
        out: dict[str, Any] = {}
        for name in TOPOLOGY_FIELDS:
            value = getattr(self, name)
            if value is None and name in _OMITTED_WHEN_NONE:
                continue
            out[name] = copy.deepcopy(dict(value)) if isinstance(value, Mapping) else value
        out.update(dict.fromkeys(_DECODE_SIDE_FIELDS))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Every topology field (None included) and the resolved ranks, JSON-ready."""
        out: dict[str, Any] = {name: getattr(self, name) for name in TOPOLOGY_FIELDS}
        if self.dsv41_spec_layout is not None:
            out["dsv41_spec_layout"] = copy.deepcopy(dict(self.dsv41_spec_layout))
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
    except RecursionError:  # thousands of nested brackets: an answer, not a bug of ours
        raise AnswerError("body", "JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise AnswerError("body", f"not a JSON object: {type(data).__name__}")
    return data


def _typed(data: Mapping[str, Any], name: str, kind: type) -> Any:
    try:
        return validate.of_type(data[name], kind, "value")
    except TypeError as exc:
        raise AnswerError(name, str(exc).removeprefix("value").strip()) from None


def parse_topology(body: str) -> PrefillInfo:
    """The topology answer (ranks still empty). Unknown keys, and the decode side's
    rank-mapping fields (null from a bootstrap server), are ignored."""
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
    try:
        validate.host(ip, "value")
    except ValueError as exc:
        raise AnswerError("rank_ip", str(exc).removeprefix("value").strip()[:200]) from None
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
