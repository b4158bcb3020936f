"""The body of ``PUT /route``: what SGLang's bootstrap server needs from one prefill rank.

Validation is shared by the client (before any network call) and by
:class:`coordinator.BootstrapServer` (which answers 400 naming the field,
where upstream answers 500 or accepts it). Every field SGLang 0.5.23 sends is known;
sizes and ranks are bounded, so that no payload can make the rank table's expected size
a number too large to print, nor a decode instance resolve a rank to a non-address.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from coordinator import validate

T = TypeVar("T")

_SIZE_RANK_PAIRS = (
    ("attn_tp_size", "attn_tp_rank"),
    ("attn_cp_size", "attn_cp_rank"),
    ("attn_dp_size", "attn_dp_rank"),
    ("pp_size", "pp_rank"),
    ("system_dp_size", "system_dp_rank"),
)

REQUIRED_FIELDS: tuple[str, ...] = (
    *(name for pair in _SIZE_RANK_PAIRS for name in pair),
    "rank_ip",
    "rank_port",
    "page_size",
    "kv_cache_dtype",
)

OPTIONAL_FIELDS: tuple[str, ...] = (
    "kv_layout",
    "dsv41_spec_layout",
    "load_balance_method",
    "enable_dsa_cache_layer_split",
    "enable_kv_cache_sharding",
    "prefill_http_port",
    "decode_allocation_policy",
)

_MAX_SIZE = 65_536  # per parallel dimension; far above any deployment, far below trouble
_MAX_PAGE_SIZE = 1_048_576  # tokens per KV page
_PROBLEM_CHARS = 200  # a 50,000-character value is not echoed back whole


class PayloadError(ValueError):
    """A payload SGLang's bootstrap server would not accept; ``field`` names the culprit."""

    def __init__(self, field: str, problem: str) -> None:
        if len(problem) > _PROBLEM_CHARS:
            problem = problem[:_PROBLEM_CHARS] + "..."
        super().__init__(f"payload field {field!r}: {problem}")
        self.field = field


def _rule(field: str, check: Callable[[str], T]) -> T:
    """Run a :mod:`coordinator.validate` rule on ``field``; its error as a PayloadError."""
    try:
        return check("value")
    except (TypeError, ValueError) as exc:
        raise PayloadError(field, str(exc).removeprefix("value").strip()) from None


def _int(payload: Mapping[str, Any], field: str, *, low: int, high: int | None = None) -> int:
    return _rule(field, lambda name: validate.int_in(payload[field], name, low=low, high=high))


def _str(payload: Mapping[str, Any], field: str) -> str:
    value = payload[field]
    if not isinstance(value, str) or not value:
        raise PayloadError(field, "must be a non-empty string")
    return value


def validate_payload(payload: Any) -> dict[str, Any]:
    """Check a registration payload; return a plain-dict copy or raise PayloadError.

    Unknown keys are kept: newer SGLang versions add fields this library need not know.
    Optional fields may be null where SGLang sends null (``kv_layout``,
    ``dsv41_spec_layout``, ``prefill_http_port``).
    """
    if not isinstance(payload, Mapping):
        raise PayloadError("payload", f"must be a JSON object, got {type(payload).__name__}")
    for field in REQUIRED_FIELDS:
        if field not in payload:
            raise PayloadError(field, "is required by SGLang's bootstrap server")
    for size_field, rank_field in _SIZE_RANK_PAIRS:
        size = _int(payload, size_field, low=1, high=_MAX_SIZE)
        _int(payload, rank_field, low=0, high=size - 1)
    _rule("rank_ip", lambda name: validate.host(payload["rank_ip"], name))
    _int(payload, "rank_port", low=1, high=65535)
    _int(payload, "page_size", low=1, high=_MAX_PAGE_SIZE)
    _str(payload, "kv_cache_dtype")
    if payload.get("kv_layout") is not None:
        _str(payload, "kv_layout")
    if payload.get("dsv41_spec_layout") is not None:
        _rule("dsv41_spec_layout", lambda name: validate.of_type(payload["dsv41_spec_layout"], dict, name))
    for field in ("load_balance_method", "decode_allocation_policy"):
        if field in payload:
            _str(payload, field)
    for field in ("enable_dsa_cache_layer_split", "enable_kv_cache_sharding"):
        _rule(field, lambda name: validate.flag(payload.get(field, False), name))
    if payload.get("prefill_http_port") is not None:
        _int(payload, "prefill_http_port", low=1, high=65535)
    return dict(payload)


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """Serialise once, up front, so a value JSON cannot carry fails before any network call."""
    try:
        return json.dumps(dict(payload), allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError):
        pass
    for field, value in payload.items():  # find the culprit, to name it
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"payload field {field!r} is not JSON-serialisable: {exc}") from None
    raise TypeError("payload is not JSON-serialisable")


def example_payload(rank: int = 0, tp_size: int = 1, *, rank_port: int = 17000) -> dict[str, Any]:
    """A valid payload for tensor-parallel rank ``rank`` of a single-DP, single-PP group (the demo,
    the simulator, tests)."""
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
