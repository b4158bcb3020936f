"""SGLang's bootstrap registry rules, pure: payloads in, a rank table and a topology out.

No sockets and no logging: :mod:`coordinator.server._http` serves this over HTTP.
The rules are those of SGLang 0.5.23's ``CommonKVBootstrapServer._handle_route_put``,
but for what the package docstring lists: readiness counts distinct ranks, and a later
PUT whose table sizes differ from the first is rejected (409).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from coordinator.protocol import PrefillInfo, RankKey, dp_of, rank_key


class Rejected(Exception):
    """A well-formed PUT the registry refuses; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _shape(p: Mapping[str, Any]) -> dict[str, int]:
    """The payload fields that size the rank table, in the order conflicts are reported."""
    shape = {f: p[f] for f in ("attn_tp_size", "attn_cp_size", "pp_size", "system_dp_size")}
    if p["system_dp_size"] == 1:
        shape["attn_dp_size"] = p["attn_dp_size"]  # only then does it size the dp axis
    return shape


# Fields every rank must send alike (upstream's two 400s, its texts first): each accepted
# PUT's value replaces the last, as upstream, so the topology carries the last one sent.
_ALIKE = {
    "dsv41_spec_layout": (None, "DeepSeek-V4.1 DSpark PD layout differs across prefill ranks"),
    "decode_allocation_policy": ("early", "Inconsistent prefill allocation policies"),
}
# Taken from the first PUT that carries them (not null), as upstream.
_FIRST_NOT_NULL = ("kv_layout", "prefill_http_port")


class Registry:
    """The registered ranks and the topology they declare."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topology: dict[str, Any] | None = None  # PrefillInfo's fields, once a PUT is accepted
        self._shape: dict[str, int] = {}
        self._ranks: dict[RankKey, dict[str, Any]] = {}
        self._puts = 0

    def register(self, p: Mapping[str, Any]) -> bool:
        """Store one validated payload, or raise Rejected. True when this one completed
        the instance (the server then answers the long-polls it holds)."""
        key = rank_key(p)
        alike = {name: p.get(name, default) for name, (default, _) in _ALIKE.items()}
        with self._lock:
            was_complete = self._complete()
            if self._topology is None:
                self._topology = {
                    "attn_tp_size": p["attn_tp_size"],
                    "attn_cp_size": p["attn_cp_size"],
                    "dp_size": dp_of(p, "size"),
                    "pp_size": p["pp_size"],
                    "page_size": p["page_size"],
                    "kv_cache_dtype": p["kv_cache_dtype"],
                    "follow_bootstrap_room": p.get("load_balance_method", "follow_bootstrap_room")
                    == "follow_bootstrap_room",
                    "enable_dsa_cache_layer_split": p.get("enable_dsa_cache_layer_split", False),
                    "enable_kv_cache_sharding": p.get("enable_kv_cache_sharding", False),
                    **dict.fromkeys(_FIRST_NOT_NULL),
                }
                self._shape = _shape(p)
            else:
                self._check_matches(p, alike, self._topology)
            topology = self._topology
            topology.update(alike)
            for name in _FIRST_NOT_NULL:
                if topology[name] is None:
                    topology[name] = p.get(name)
            self._ranks[key] = {"rank_ip": p["rank_ip"], "rank_port": p["rank_port"]}
            self._puts += 1
            return not was_complete and self._complete()

    def _check_matches(self, p: Mapping[str, Any], alike: Mapping[str, Any], topology: Mapping[str, Any]) -> None:
        for name, (_, upstream_text) in _ALIKE.items():
            if alike[name] != topology[name]:
                raise Rejected(400, f"{upstream_text}: payload field {name!r} differs from the registered ranks'")
        for field, first in self._shape.items():
            if p[field] != first:
                raise Rejected(
                    409,
                    f"payload field {field!r}: {p[field]} conflicts with {first} "
                    "of the first registration",
                )

    def _expected(self) -> int | None:  # caller holds the lock
        t = self._topology
        if t is None:
            return None
        size: int = t["dp_size"] * t["attn_cp_size"] * t["attn_tp_size"] * t["pp_size"]
        return size

    def _complete(self) -> bool:  # caller holds the lock
        return self._topology is not None and len(self._ranks) == self._expected()

    def counts(self) -> tuple[int, int | None, int]:
        """(distinct ranks, expected ranks or None before the first PUT, accepted PUTs)."""
        with self._lock:
            return len(self._ranks), self._expected(), self._puts

    def topology(self) -> dict[str, Any] | None:
        """The topology answer (SGLang's, key for key) once every expected rank is
        registered, else None."""
        with self._lock:
            if self._topology is None or not self._complete():
                return None
            info = PrefillInfo(**self._topology)
        return info.topology_json()

    def lookup(self, key: RankKey) -> dict[str, Any] | None:
        with self._lock:
            info = self._ranks.get(key)
            return dict(info) if info else None

    def ranks(self) -> dict[RankKey, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self._ranks.items()}
