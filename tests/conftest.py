"""Shared fixtures; helpers (transports, servers, ports) come from coordinator.testing."""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.testing import FakeClock, example_payload

# The real-SGLang tier runs where sglang is installed (scripts/real_sglang.sh), not here.
collect_ignore = [] if importlib.util.find_spec("sglang") else ["sglang_real"]


@pytest.fixture
def payload() -> dict[str, Any]:
    return example_payload()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET: (its path, the socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()

