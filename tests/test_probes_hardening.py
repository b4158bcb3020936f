"""Probe edges on their own: ?exclude without ?verbose, bounded excludes, names and errors
that hold a newline (in verbose text and in sd_notify), whatever the drivers let through."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import replace

import pytest
import requests

from coordinator import FakeClock, Registration, health
from coordinator.instrumentation import SystemdNotifier, TransitionRecord
from coordinator.outcome import Cause, Reason
from coordinator.snapshot import Snapshot
from coordinator.testing import ScriptedTransport, example_payload
from states import State, Trigger

URL = "http://127.0.0.1:8998/route"
FORGED = "readyz check passed"


def driver(name: str, script: list[str | int]) -> Registration:
    """Polled once per script item after the start: REGISTERED after [200], BACKOFF after ["refused"]."""
    clock = FakeClock()
    reg = Registration(URL, example_payload(), clock=clock, name=name, hooks=(),
                       transport=ScriptedTransport(script, clock=clock))
    for _ in range(len(script) + 1):
        reg.poll()
    return reg


class Fixed:
    """What the probes read of a driver, holding a snapshot no driver would make (a name
    with a newline): the probes must be safe on their own."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self.clock = FakeClock(snapshot.taken_at)

    def snapshot(self) -> Snapshot:
        return self._snapshot


def backoff_named(name: str) -> Snapshot:
    return replace(driver("rank1", ["refused"]).snapshot(), name=name)


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False
        yield s


def test_exclude_works_without_verbose(http: requests.Session) -> None:
    ok, waiting = driver("rank0", [200]), driver("rank1", ["refused"])
    assert (ok.state, waiting.state) == (State.REGISTERED, State.BACKOFF)
    with health.serve([ok, waiting]) as probes:
        plain = http.get(f"{probes.url}/readyz", timeout=5)
        excluded = http.get(f"{probes.url}/readyz?exclude=rank1", timeout=5)
        unmatched = http.get(f"{probes.url}/readyz?exclude=rank9", timeout=5)
    with health.serve(waiting) as alone:
        single = http.get(f"{alone.url}/readyz?exclude=rank1", timeout=5)
    assert plain.status_code == 503
    assert excluded.status_code == 200
    body = excluded.json()
    assert body["ok"] is True and body["excluded"] == ["rank1"] and body["unmatched"] == []
    assert [r["state"] for r in body["registrations"]] == ["REGISTERED", "BACKOFF"]  # still shown, not counted
    assert unmatched.status_code == 503 and unmatched.json()["unmatched"] == ["rank9"]
    assert single.status_code == 200 and single.json()["excluded"] == ["rank1"]


def test_excludes_are_bounded(http: requests.Session) -> None:
    reg = driver("rank0", [200])
    with health.serve(reg) as probes:
        at_most = http.get(f"{probes.url}/readyz", params={"exclude": ["x" * 256] * 64}, timeout=5)
        too_many = http.get(f"{probes.url}/readyz", params={"exclude": [f"r{i}" for i in range(65)]}, timeout=5)
        too_long = http.get(f"{probes.url}/readyz?verbose", params={"exclude": "x" * 257}, timeout=5)
    assert at_most.status_code == 200
    for r in (too_many, too_long):
        assert r.status_code == 400 and r.json()["error"].startswith("exclude: at most 64 values")


def test_a_newline_in_a_name_cannot_forge_a_verbose_line(http: requests.Session) -> None:
    waiting = Fixed(backoff_named(f"rank1\n{FORGED}"))
    # Fixed is no driver, only what the probes read of one (Probed): handed in as a source, typed as such.
    with health.serve(lambda: [waiting]) as probes:
        r = http.get(f"{probes.url}/readyz?verbose", timeout=5)
        echoed = http.get(f"{probes.url}/readyz?verbose&exclude=x%0A{FORGED.replace(' ', '%20')}", timeout=5)
    lines = r.text.splitlines()
    assert r.status_code == 503 and len(lines) == 2 and lines[1] == "readyz check failed"
    assert r.text.startswith(f"[-]registration rank1\\n{FORGED} failed: BACKOFF, attempt 1, ")
    assert FORGED not in echoed.text.splitlines() and echoed.text.splitlines()[-1] == "readyz check failed"
    assert f'no matches for "x\\n{FORGED}"' in echoed.text


def test_a_newline_in_an_error_cannot_forge_a_verbose_line() -> None:
    failed = replace(driver("rank0", [200]).snapshot(), state=State.FAILED, reason=Reason.PERMANENT, last_status=None,
                     last_error=Cause("ValueError", f"bad\n[+]registration rank0 ok\n{FORGED}\x1b[2J"))
    status, text = health.verbose("/readyz", [failed], failed.taken_at)
    assert status == 503
    assert text.splitlines() == [
        f"[-]registration rank0 failed: FAILED (permanent), attempt 1, ValueError: bad\\n[+]registration rank0 ok"
        f"\\n{FORGED}\\x1b[2J",
        "readyz check failed"]


def test_a_newline_in_a_name_sends_no_ready_to_systemd(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    snap = backoff_named("rank1\nREADY=1")
    notifier = SystemdNotifier(path)
    notifier(TransitionRecord(1, snap, Trigger.ATTEMPT_DONE, State.REGISTERING, State.BACKOFF))
    notifier.close()
    lines = sock.recv(4096).decode().splitlines()
    assert [line.split("=", 1)[0] for line in lines] == ["STATUS", "EXTEND_TIMEOUT_USEC"]
    assert lines[0].startswith("STATUS=rank1\\nREADY=1: BACKOFF, attempt 1, ")


def test_probe_all_takes_exclude_too() -> None:
    snaps = [driver("rank0", [200]).snapshot(), driver("rank1", ["refused"]).snapshot()]
    assert health.probe_all("/readyz", snaps, 0.0)[0] == 503
    status, body = health.probe_all("/readyz", snaps, 0.0, exclude=["rank1", "rank9"])
    assert (status, body["ok"], body["excluded"], body["unmatched"]) == (200, True, ["rank1"], ["rank9"])
