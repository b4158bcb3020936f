"""Shared fixtures; helpers (transports, servers, ports) come from coordinator.testing."""

from __future__ import annotations

import importlib.util
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator import BootstrapServer, Registration
from coordinator.testing import FakeClock, example_payload
from tests.test_server_long_poll import put

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


# -- shared by the CLI modules (test_cli_wait, test_edges_cli_server) ----------------------------

@pytest.fixture
def restore_logging() -> Iterator[None]:
    """main() configures logging, as a CLI should: give the test process its own back."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("transitions").level,
             logging.getLogger("urllib3").level)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("transitions").setLevel(saved[2])
    logging.getLogger("urllib3").setLevel(saved[3])


@pytest.fixture
def complete_prefill() -> Iterator[BootstrapServer]:
    """4 ranks of 4 registered, page_size 16 (test_cli_signals has its own, of 2 ranks)."""
    with BootstrapServer() as server:
        for rank in range(4):
            Registration(server.url, {**example_payload(rank, 4), "page_size": 16}, hooks=()).run()
        yield server


# -- shared by the long-poll modules (test_server_long_poll, test_edges_cli_server) --------------

def server_threads() -> list[threading.Thread]:
    # "bootstrap-server" serves; "_HTTPServer-conn" and "_HTTPServer-parking" are its own.
    return [t for t in threading.enumerate() if t.name.startswith(("bootstrap-server", "_HTTPServer"))]


@pytest.fixture
def server() -> Iterator[BootstrapServer]:
    """A bootstrap server with nothing registered (test_bootstrap_server and test_server_hardening have their own)."""
    with BootstrapServer() as srv:
        yield srv
    assert server_threads() == []


@pytest.fixture
def half(server: BootstrapServer) -> BootstrapServer:
    """A server with 1 rank of 2 registered: incomplete."""
    assert put(server.port, 0) == 200
    return server
