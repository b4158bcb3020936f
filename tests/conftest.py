"""Shared test helpers: outcomes, a scripted loopback HTTP server; transports come from coordinator.testing."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from coordinator.clock import FakeClock
from coordinator.outcome import Cause, Failure, Outcome
from coordinator.testing import example_payload
from coordinator.testing import ScriptedTransport, free_port, ipv6_available  # noqa: F401 - shared with the tests

REFUSED = Outcome.of_failure(Failure.REFUSED, Cause("ConnectionRefusedError", "[Errno 111] Connection refused"))
TIMEOUT = Outcome.of_failure(Failure.TIMEOUT, Cause("TimeoutError", "timed out"))


def status(code: int, body: str = "", **headers: str) -> Outcome:
    return Outcome.of_status(code, body, **headers)


class ScriptedServer:
    """A loopback HTTP server answering each PUT with the next (status, body, headers)."""

    def __init__(self, *answers: tuple[int, str] | tuple[int, str, dict[str, str]]) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_PUT(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                owner.requests.append({
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": json.loads(self.rfile.read(length) or b"null"),
                })
                answer = owner.answers.pop(0) if len(owner.answers) > 1 else owner.answers[0]
                code, text, extra = (*answer, {})[:3]
                data = text.encode()
                self.send_response(code)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/route"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def payload() -> dict[str, Any]:
    return example_payload()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def scripted_server(request: pytest.FixtureRequest) -> Iterator[ScriptedServer]:
    server = ScriptedServer(*request.param)
    yield server
    server.close()
