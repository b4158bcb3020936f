"""Health probes: a snapshot → (HTTP status, JSON body), and a tiny stdlib server for them.

Kubernetes conventions:
- ``/livez``: 200 in every state but FAILED. Restarting a process during a bootstrap
  outage would only re-synchronise the ranks, so liveness fails only when the
  registration has given up for good.
- ``/readyz`` and ``/startupz``: 200 only when REGISTERED.
- ``/status``: 200 with the whole snapshot.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from coordinator import validate
from coordinator.snapshot import Snapshot
from states import State

if TYPE_CHECKING:
    from coordinator.registration import Registration

PATHS = ("/livez", "/readyz", "/startupz", "/status")


def _summary(snapshot: Snapshot, now: float) -> dict[str, Any]:
    err = snapshot.last_error
    return {
        "state": snapshot.state.value,
        "attempt": snapshot.attempt,
        "max_attempts": snapshot.max_attempts,
        "seconds_to_next_attempt": snapshot.seconds_to_next_attempt(now),
        "last_status": snapshot.last_status,
        "last_error": None if err is None else {"type": err.type, "message": err.message},
        "reason": snapshot.reason,
    }


def _ok(path: str, snapshot: Snapshot) -> bool:
    if path == "/livez":
        return snapshot.state is not State.FAILED
    if path in ("/readyz", "/startupz"):
        return snapshot.state is State.REGISTERED
    return True  # /status always answers


def probe(path: str, snapshot: Snapshot, now: float) -> tuple[int, dict[str, Any]]:
    """The answer to one probe path; ``now`` is on the registration's clock.

    Raises KeyError for an unknown path, so a framework can map it to its own 404.
    """
    if path not in PATHS:
        raise KeyError(path)
    ok = _ok(path, snapshot)
    body = _summary(snapshot, now)
    if path == "/status":
        body["snapshot"] = snapshot.to_dict(now)
    body["ok"] = ok
    return (200 if ok else 503), body


def probe_all(path: str, snapshots: Sequence[Snapshot], now: float) -> tuple[int, dict[str, Any]]:
    """One probe over several registrations in a process: OK only when every one is."""
    answers = [probe(path, s, now) for s in snapshots]
    ok = all(code == 200 for code, _ in answers)
    return (200 if ok else 503), {"ok": ok, "registrations": [body for _, body in answers]}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        path = self.path.split("?", 1)[0]
        regs = self.server.registrations
        now = regs[0].clock.now()
        try:
            if len(regs) == 1:
                status, body = probe(path, regs[0].snapshot(), now)
            else:
                status, body = probe_all(path, [r.snapshot() for r in regs], now)
        except KeyError:
            status, body = 404, {"error": f"unknown path; try one of {', '.join(PATHS)}"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # probes hit every few seconds; an access log line each would drown the real events


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registrations: Sequence[Registration]


class _Server6(_Server):
    address_family = socket.AF_INET6


class HealthServer:
    """A running probe server; ``close()`` stops it and frees the port."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name="prefill-startup-health", daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> HealthServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    registration: Registration | Sequence[Registration], host: str = "127.0.0.1", port: int = 0
) -> HealthServer:
    """Serve the probes for one registration (or all of a process's) on a daemon thread.

    Binds loopback unless told otherwise: the probes show internal addresses and errors.
    """
    regs = list(registration) if isinstance(registration, Sequence) else [registration]
    if not regs:
        raise ValueError("registration: at least one is needed")
    if port != 0:
        validate.port(port, "port")
    server_cls = _Server6 if ":" in host else _Server
    server = server_cls((host, port), _Handler)
    server.registrations = regs
    return HealthServer(server)
