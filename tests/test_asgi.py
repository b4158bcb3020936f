"""health.asgi: called directly, mounted in a real FastAPI app under uvicorn, and as the README shows it."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import requests

from coordinator import FakeClock, Registration, health
from coordinator.testing import ScriptedTransport, example_payload, free_port
from states import State

README = Path(__file__).resolve().parent.parent / "README.md"
URL = "http://127.0.0.1:8998/route"

Message = MutableMapping[str, Any]
App = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]
Serve = Callable[[Any], str]  # serve_app: start an ASGI app under uvicorn, return its base URL


def waiting_registration(name: str = "rank0") -> Registration:
    """In BACKOFF after a refusal; one more poll() (after the wait) makes it REGISTERED."""
    clock = FakeClock()
    reg = Registration(URL, example_payload(), clock=clock, name=name, hooks=(),
                       transport=ScriptedTransport(["refused", 200], clock=clock))
    reg.poll(), reg.poll()
    assert reg.state is State.BACKOFF
    return reg


def finish(reg: Registration) -> None:
    clock = reg.clock
    assert isinstance(clock, FakeClock)
    clock.advance(1.0)
    reg.poll(), reg.poll()
    assert reg.state is State.REGISTERED


def run(app: App, scope: Message, receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]]) -> None:
    async def main() -> None:
        await app(scope, receive, send)

    asyncio.run(main())


def call(app: App, method: str, path: str, query: bytes = b"", root_path: str = "") -> tuple[int, dict[str, str],
         bytes]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": query, "root_path": root_path,
             "headers": []}
    run(app, scope, receive, send)
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, sent[1]["body"]


def test_direct_calls() -> None:
    reg = waiting_registration()
    app = health.asgi(reg)
    assert call(app, "GET", "/readyz")[0] == 503
    assert call(app, "GET", "/livez")[0] == 200
    status, headers, body = call(app, "GET", "/nope")
    assert status == 404 and headers["cache-control"] == "no-store"
    status, headers, body = call(app, "POST", "/readyz")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, body = call(app, "HEAD", "/livez")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    # Mounted the way Starlette mounts: the full path, the prefix in root_path.
    assert call(app, "GET", "/startup/livez", root_path="/startup")[0] == 200
    status, _, body = call(app, "GET", "/readyz", query=b"verbose")
    assert body.decode().splitlines()[-1] == "readyz check failed"


def test_lifespan_is_answered() -> None:
    app = health.asgi(waiting_registration())
    inbox: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(message["type"])

    run(app, {"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


@pytest.fixture
def serve_app() -> Iterator[Serve]:
    uvicorn = pytest.importorskip("uvicorn")
    servers: list[tuple[Any, threading.Thread]] = []

    def start(app: Any) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        ready = threading.Event()
        for _ in range(200):  # bounded: up to 10 s for uvicorn to bind
            if server.started:
                break
            ready.wait(0.05)
        assert server.started, "uvicorn did not start"
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False
        yield s


def test_mounted_in_fastapi_under_uvicorn(serve_app: Serve, http: requests.Session) -> None:
    pytest.importorskip("fastapi")
    from fastapi import FastAPI
    from prometheus_client import CollectorRegistry

    from coordinator.instrumentation import PrometheusHook

    registry = CollectorRegistry()
    clock = FakeClock()
    reg = Registration(URL, example_payload(), clock=clock, name="rank0", hooks=[PrometheusHook(registry)],
                       transport=ScriptedTransport(["refused", 200], clock=clock))
    reg.poll(), reg.poll()
    app = FastAPI()

    @app.get("/health")
    def sglang_health() -> dict[str, bool]:
        return {"ok": True}  # the application's own routes stay as they are

    app.mount("/startup", health.asgi(reg, registry=registry))
    base = serve_app(app)
    assert http.get(f"{base}/startup/readyz", timeout=5).status_code == 503
    verbose = http.get(f"{base}/startup/readyz?verbose", timeout=5)
    assert verbose.status_code == 503
    assert verbose.text.splitlines()[0].startswith("[-]registration rank0 failed: BACKOFF, attempt 1, "
                                                   "ConnectionRefusedError, next attempt in ")
    finish(reg)
    assert http.get(f"{base}/startup/readyz", timeout=5).status_code == 200
    assert (http.get(f"{base}/startup/readyz?verbose", timeout=5).text
            == "[+]registration rank0 ok\nreadyz check passed\n")
    metrics = http.get(f"{base}/startup/metrics", timeout=5).text
    for family in ("prefill_startup_attempts_total", "prefill_startup_state", "prefill_startup_duration_seconds"):
        assert f"# TYPE {family.removesuffix('_total')}" in metrics
    assert http.get(f"{base}/health", timeout=5).json() == {"ok": True}


def test_standalone_under_uvicorn(serve_app: Serve, http: requests.Session) -> None:
    base = serve_app(health.asgi(waiting_registration()))
    assert http.get(f"{base}/livez", timeout=5).status_code == 200
    assert http.get(f"{base}/startupz", timeout=5).json()["state"] == "BACKOFF"


def test_readme_fastapi_example_runs_as_written(serve_app: Serve, http: requests.Session) -> None:
    pytest.importorskip("fastapi")
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- fastapi-example -->\n```python\n(.*?)```\n<!-- /fastapi-example -->", text, re.S)
    assert block, "README.md lost its FastAPI example"
    reg = waiting_registration()
    namespace: dict[str, Any] = {"registration": reg}
    exec(compile(block.group(1), "README.md", "exec"), namespace)  # noqa: S102 - the README's own snippet
    base = serve_app(namespace["app"])
    assert http.get(f"{base}/startup/readyz", timeout=5).status_code == 503
    finish(reg)
    assert http.get(f"{base}/startup/readyz", timeout=5).status_code == 200


def test_a_slow_scrape_does_not_block_the_event_loop(serve_app: Serve, http: requests.Session) -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily

    entered, release = threading.Event(), threading.Event()

    class Slow:
        """A custom collector taking its time (bounded: 5 s at most, released by the test)."""

        def collect(self) -> Iterator[GaugeMetricFamily]:
            entered.set()
            release.wait(5)
            yield GaugeMetricFamily("slow_collector", "takes its time", value=1)

    registry = CollectorRegistry()
    registry.register(Slow())
    base = serve_app(health.asgi(waiting_registration(), registry=registry))
    scraped: list[requests.Response] = []

    def scrape_metrics() -> None:
        with requests.Session() as scraper:
            scraper.trust_env = False
            scraped.append(scraper.get(f"{base}/metrics", timeout=10))

    scrape = threading.Thread(target=scrape_metrics)
    scrape.start()
    try:
        assert entered.wait(5), "the scrape did not reach the collector"
        answer = http.get(f"{base}/livez", timeout=3)  # with the event loop blocked: a timeout
        assert answer.status_code == 200
        assert answer.elapsed.total_seconds() < 1.0 and not release.is_set()  # answered while the scrape runs
    finally:
        release.set()
        scrape.join(10)
    assert scraped and scraped[0].status_code == 200 and "slow_collector 1.0" in scraped[0].text
