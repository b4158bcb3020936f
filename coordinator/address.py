"""Where the bootstrap server is, resolved the way SGLang resolves it."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def check_port(port: object, field: str = "port") -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{field} must be an integer in [1, 65535], got {port!r}")
    return port


def split_host_port(addr: str, field: str = "address") -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` → (host, port); the error names ``field``."""
    if not isinstance(addr, str) or not addr:
        raise ValueError(f"{field} must be 'host:port' or '[ipv6]:port', got {addr!r}")
    if addr.startswith("["):
        host, sep, rest = addr[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{field} must be '[ipv6]:port', got {addr!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = addr.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{field} must be 'host:port' or '[ipv6]:port', got {addr!r}")
    if not host:
        raise ValueError(f"{field} has an empty host: {addr!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{field} has a non-numeric port: {addr!r}") from None
    return host, check_port(port, field)


def url_host(host: str) -> str:
    """``host`` as written in a URL: an IPv6 address in brackets."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def bootstrap_url(host: str, port: int, dist_init_addr: str | None = None) -> str:
    """The ``PUT /route`` URL, as SGLang computes it.

    Multi-node (``dist_init_addr`` given): that address's host with the *bootstrap* port.
    Single node: the serving host, with wildcards rewritten to loopback.
    """
    check_port(port, "port")
    if dist_init_addr is not None:
        host, _ = split_host_port(dist_init_addr, "dist_init_addr")
    if not isinstance(host, str) or not host.strip():
        raise ValueError(f"host must be a non-empty string, got {host!r}")
    host = host.strip().strip("[]")
    if any(c in host for c in "/?#@ "):
        raise ValueError(f"host is not a host name or IP address: {host!r}")
    host = _WILDCARDS.get(host, host)
    return f"http://{url_host(host)}:{port}/route"


def check_url(url: object) -> str:
    """Reject what cannot be a bootstrap URL before anything touches the network."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"url must use http or https, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"url has no host: {url!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"url has an invalid port: {url!r}") from None
    if parts.username or parts.password:
        raise ValueError("url must not carry credentials; pass token= instead")
    return url
