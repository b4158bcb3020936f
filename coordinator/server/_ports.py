"""Ports on this host: which family an address is, and one nothing listens on right now."""

from __future__ import annotations

import socket


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (connecting to it is refused)."""
    with socket.socket(family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port
