"""Where the bootstrap server is, resolved the way SGLang resolves it."""

from __future__ import annotations

from coordinator import validate

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


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
    return f"http://{validate.url_host(name)}:{port}/route"
