"""What a server may answer: an echoed token, a huge topology, a deeply nested body."""

from __future__ import annotations

import json
import logging

import pytest

from coordinator import Discovery, FakeClock, Registration, RetryPolicy
from coordinator.outcome import Failure, Reason
from coordinator.testing import FaultServer, ScriptedTransport, example_payload
from coordinator.testing.faultserver import respond
from coordinator.transport import MAX_ANSWER_BYTES, HttpTransport
from states import State

TOKEN = "tok-echoed-0123456789-SECRET"


def test_a_token_echoed_in_an_error_body_is_redacted_from_every_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = respond(500, f"bad request, Authorization: Bearer {TOKEN}")
    with FaultServer(echo, echo, respond(403, f"denied for Bearer {TOKEN}")) as server:
        reg = Registration(server.url, example_payload(), token=TOKEN, clock=FakeClock(), on_exhausted="return",
                           policy=RetryPolicy(deadline_s=None))
        snap = reg.run()
    assert (snap.state, snap.reason, snap.last_status) == (State.FAILED, Reason.PERMANENT, 403)
    lines = [r.getMessage() for r in caplog.records]
    lines += [json.dumps(getattr(r, "structlog", {}), default=str) for r in caplog.records]
    assert any("[redacted]" in line for line in lines)
    assert not [line for line in lines if TOKEN in line]


def test_a_topology_over_the_read_cap_is_named_as_such() -> None:
    huge = json.dumps({"padding": "x" * (MAX_ANSWER_BYTES + 10)})
    with FaultServer(respond(200, huge, {"Content-Type": "application/json"})) as server:
        transport = HttpTransport()
        outcome = transport.get(server.url, 5.0)
        transport.close()
    assert outcome.failure is Failure.INVALID and outcome.cause is not None
    assert str(MAX_ANSWER_BYTES) in outcome.cause.message


def test_a_valid_topology_over_64_kib_is_read_whole() -> None:
    topology = {"attn_tp_size": 1, "attn_cp_size": 1, "dp_size": 1, "pp_size": 1, "page_size": 1,
                "kv_cache_dtype": "auto", "follow_bootstrap_room": True, "padding": "y" * 100_000}
    with FaultServer(respond(200, json.dumps(topology), {"Content-Type": "application/json"})) as server:
        d = Discovery(server.url.removesuffix("/route"), hooks=(), on_exhausted="return")
        snap = d.run()
    assert snap.state is State.REGISTERED, snap.last_error
    assert snap.info is not None and snap.info.kv_cache_dtype == "auto"


def test_a_deeply_nested_answer_is_an_invalid_answer_not_an_internal_error() -> None:
    nested = "[" * 30_000 + "]" * 30_000
    d = Discovery("bootstrap.test:8998", transport=ScriptedTransport([(200, {}, nested)]), clock=FakeClock(),
                  hooks=(), on_exhausted="return")
    snap = d.run()
    assert (snap.state, snap.reason) == (State.FAILED, Reason.PERMANENT)
    assert snap.last_error is not None and "nested too deeply" in snap.last_error.message
