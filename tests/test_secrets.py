"""A bearer token never leaks: not in logs, snapshots, reprs, exceptions or probe bodies."""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any

import pytest
import requests

from coordinator import BootstrapServer, FakeClock, Registration, RegistrationFailed, RetryPolicy, health

TOKEN = "tok-9f8e7d6c5b4a-SECRET"


def test_token_is_sent_and_never_exposed(payload: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    exposed: list[str] = []
    with BootstrapServer(token="another-token") as wrong, BootstrapServer(token=TOKEN) as right:
        # Against a server expecting another token: 401, a permanent failure, raised.
        failing = Registration(wrong.url, payload, clock=FakeClock(), token=TOKEN, policy=RetryPolicy())
        with health.serve(failing) as probes, requests.Session() as http:
            http.trust_env = False
            with pytest.raises(RegistrationFailed) as info:
                failing.run()
            for path in health.PATHS:
                exposed.append(http.get(probes.url + path, timeout=5).text)
        exposed += [str(info.value), repr(info.value), "".join(traceback.format_exception(info.value))]
        exposed += [repr(failing), json.dumps(failing.snapshot().to_dict()), repr(failing.snapshot())]
        assert info.value.snapshot.last_status == 401

        ok = Registration(right.url, payload, clock=FakeClock(), token=TOKEN)
        snap = ok.run()
        assert snap.state.value == "REGISTERED" and right.registered_count == 1
        exposed += [repr(ok), repr(ok.transport), json.dumps(snap.to_dict()), repr(right), repr(wrong)]
    exposed += [r.getMessage() for r in caplog.records]
    exposed += [json.dumps(getattr(r, "structlog", {}), default=str) for r in caplog.records]
    assert caplog.records  # something was logged, and searched
    leaks = [text for text in exposed if TOKEN in text]
    assert not leaks


@pytest.mark.parametrize("bad", ["", "with space", "line\nbreak", "tökén", 123])
def test_malformed_token_rejected_without_echoing_it(bad: str | int, payload: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="token") as info:
        Registration("http://127.0.0.1:1/route", payload, token=bad)  # type: ignore[arg-type]  # the point: 123 raises
    if isinstance(bad, str) and bad:
        assert bad not in str(info.value)


def test_bootstrap_server_token_not_in_repr() -> None:
    server = BootstrapServer(token=TOKEN)
    assert TOKEN not in repr(server)
