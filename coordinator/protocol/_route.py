"""Where the bootstrap server is and how ``/route`` is addressed, as SGLang does it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from coordinator import validate

ROUTE_PATH = "/route"
HEALTH_PATH = "/health"
# The query of GET /route, in the order of a rank key; all four -1 asks for the topology.
QUERY_FIELDS = ("prefill_dp_rank", "prefill_cp_rank", "target_tp_rank", "target_pp_rank")
RankKey = tuple[int, int, int, int]  # (dp group, attn_cp_rank, attn_tp_rank, pp_rank)
TOPOLOGY_KEY: RankKey = (-1, -1, -1, -1)

# Our server's extensions, in headers only: upstream's decode builds PrefillServerInfo(**json),
# so nothing may be added to the JSON. Every answer carries the server's generation (drawn
# at start: a restart changes it); the long-poll header advertises ``&wait=S`` up to its value.
GENERATION_HEADER = "X-Prefill-Startup-Generation"
LONG_POLL_HEADER = "X-Prefill-Startup-Long-Poll"
WAIT_PARAM = "wait"  # &wait=S: hold a topology lookup up to S seconds for a change
SEEN_PARAM = "seen"  # &seen=G: the generation the client resolved; another one answers at once
EXTENSION_PREFIX = "x-prefill-startup-"

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def route_query(key: RankKey) -> str:
    """The query string of ``GET /route`` for rank ``key`` (:data:`TOPOLOGY_KEY`: the topology)."""
    return urlencode(dict(zip(QUERY_FIELDS, key)))


def dp_of(payload: Mapping[str, Any], kind: str) -> int:
    """A registration's dp group (``kind="rank"``) or dp size (``kind="size"``): the
    attention-DP value when there is one system DP group, else the system one."""
    value: int = payload[f"attn_dp_{kind}"] if payload["system_dp_size"] == 1 else payload[f"system_dp_{kind}"]
    return value


def rank_key(payload: Mapping[str, Any]) -> RankKey:
    """Where a validated registration is stored, and how GET /route finds it."""
    return dp_of(payload, "rank"), payload["attn_cp_rank"], payload["attn_tp_rank"], payload["pp_rank"]


def bootstrap_url(host: str, port: int, dist_init_addr: str | None = None) -> str:
    """The ``PUT /route`` URL, as SGLang computes it.

    Multi-node (``dist_init_addr`` given): that address's host with the *bootstrap* port.
    Single node: the serving host, with wildcards rewritten to loopback.
    """
    validate.port(port, "port")
    if dist_init_addr is not None:
        host, _ = validate.host_port(dist_init_addr, "dist_init_addr")
    if not isinstance(host, str) or not host.strip():
        raise ValueError(f"host must be a non-empty string, got {host!r}")
    name = validate.host(host.strip(), "host")
    name = _WILDCARDS.get(name, name)
    return f"http://{validate.url_host(name)}:{port}{ROUTE_PATH}"


def base_url(bootstrap: object, field: str = "bootstrap") -> str:
    """What a decode instance is given (``host:port``, ``[v6]:port``, or an http(s) URL)
    → ``http://host:port``, no path."""
    if not isinstance(bootstrap, str):
        raise TypeError(f"{field} must be a str, got {type(bootstrap).__name__}")
    if "://" in bootstrap:
        parts = urlsplit(validate.url(bootstrap, field))
        if parts.path.rstrip("/") not in ("", ROUTE_PATH) or parts.query or parts.fragment:
            raise ValueError(f"{field} URL must be the server's base (or {ROUTE_PATH}), got {bootstrap!r}")
        return f"{parts.scheme}://{parts.netloc}"
    host, port = validate.host_port(bootstrap, field)
    return f"http://{validate.url_host(host)}:{port}"
