"""Probe answers, pure: snapshots and a time in, a status and a body out. No server here.

Kubernetes conventions:
- ``/livez``: 200 in every state but FAILED. Restarting a process during a bootstrap
  outage would only re-synchronise the ranks, so liveness fails only when the driver
  has given up for good.
- ``/readyz`` and ``/startupz``: 200 only when REGISTERED.
- ``/status``: 200 with the whole snapshot.
With ``?verbose``, kube-apiserver's text form: one ``[+]``/``[-]`` line per driver,
then ``<check> check passed`` or ``failed``. ``exclude`` leaves drivers out of the verdict
(by label), in both forms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.instrumentation._text import one_line
from coordinator.snapshot import Kind, Snapshot
from states import State

PATHS = ("/livez", "/readyz", "/startupz", "/status")
CHECKS = PATHS[:3]  # the paths with a verbose form
_WAITING = ("/readyz", "/startupz")  # the paths an expectation holds back


MAX_NAMED = 64  # missing ranks named in a JSON body; verbose names every one


@dataclass(frozen=True)
class Expected:
    """What readiness waits for beyond the drivers it sees: ``ranks`` registrations
    REGISTERED (a rank not seen yet counts as waiting). ``where`` ends the message:
    "waiting for 1 of 2 ranks on this node".

    ``roster``, where the whole instance's registrations are known (the bootstrap
    server's own table, on the node that hosts it): every rank by name and whether it
    has registered; then it, not the drivers seen, says who is missing."""

    ranks: int
    where: str = "on this node"
    roster: tuple[tuple[str, bool], ...] | None = None

    def missing(self, snapshots: Sequence[Snapshot]) -> list[str]:
        """The ranks still waited for: by name from the roster, else as many "?" as not seen."""
        if self.roster is not None:
            return [name for name, registered in self.roster if not registered]
        registered = {label(s) for s in snapshots if s.kind is Kind.REGISTRATION and s.state is State.REGISTERED}
        return ["?"] * max(0, self.ranks - len(registered))

    def describe(self, waiting: int) -> str:
        if waiting:
            return f"waiting for {waiting} of {self.ranks} ranks {self.where}"
        return f"{self.ranks} of {self.ranks} ranks registered {self.where}"

    def roster_lines(self) -> list[str]:
        return [f"[+]rank {name} registered" if registered else f"[-]rank {name}: missing"
                for name, registered in self.roster or ()]


def _summary(snapshot: Snapshot, now: float) -> dict[str, Any]:
    err = snapshot.last_error
    return {
        "name": snapshot.name,
        "kind": snapshot.kind.value,
        "state": snapshot.state.value,
        "attempt": snapshot.attempt,
        "max_attempts": snapshot.max_attempts,
        "seconds_to_next_attempt": snapshot.seconds_to_next_attempt(now),
        "last_status": snapshot.last_status,
        "last_error": None if err is None else {"type": err.type, "message": err.message},
        "reason": None if snapshot.reason is None else snapshot.reason.value,
    }


def _ok(path: str, snapshot: Snapshot) -> bool:
    if path == "/livez":
        return snapshot.state is not State.FAILED
    if path in ("/readyz", "/startupz"):
        return snapshot.state is State.REGISTERED
    return True  # /status always answers


def probe(path: str, snapshot: Snapshot, now: float) -> tuple[int, dict[str, Any]]:
    """The answer to one probe path; ``now`` is on the driver's clock.

    Raises KeyError for an unknown path, so a framework can map it to its own 404.
    """
    if path not in PATHS:
        raise KeyError(path)
    ok = _ok(path, snapshot)
    body = _summary(snapshot, now)
    if path == "/status":
        body["snapshot"] = snapshot.report(now)
    body["ok"] = ok
    return (200 if ok else 503), body


def probe_all(path: str, snapshots: Sequence[Snapshot], now: float,
              exclude: Sequence[str] = (), expected: Expected | None = None) -> tuple[int, dict[str, Any]]:
    """One probe over several drivers in a process: OK only when every one is, but for
    those whose label is in ``exclude``. With ``exclude``, the body also lists the labels
    ``excluded`` and the names that matched nothing (``unmatched``). With ``expected``,
    readyz and startupz are also held back while ranks are missing (``waiting`` says so)."""
    answers = [probe(path, s, now) for s in snapshots]
    ok = all(code == 200 for (code, _), s in zip(answers, snapshots) if label(s) not in exclude)
    body: dict[str, Any] = {"ok": ok, "registrations": [body for _, body in answers]}
    if expected is not None:
        missing = expected.missing(snapshots)
        body["expected_ranks"] = expected.ranks
        if path in _WAITING and missing:
            body["ok"] = ok = False
            body["waiting"] = expected.describe(len(missing))
            if expected.roster is not None:
                body["missing"] = missing[:MAX_NAMED]
    if exclude:
        body["excluded"] = [label(s) for s in snapshots if label(s) in exclude]
        body["unmatched"] = unmatched(snapshots, exclude)
    return (200 if ok else 503), body


def label(snapshot: Snapshot) -> str:
    """How probes name a driver: its ``name``, else its URL."""
    return snapshot.name or snapshot.url


def unmatched(snapshots: Sequence[Snapshot], exclude: Sequence[str]) -> list[str]:
    known = {label(s) for s in snapshots}
    return [x for x in exclude if x not in known]


def verbose(path: str, snapshots: Sequence[Snapshot], now: float, exclude: Sequence[str] = (),
            expected: Expected | None = None) -> tuple[int, str]:
    """kube-apiserver's ``?verbose`` text for ``path``; drivers named in ``exclude`` are left out.
    With ``expected``, a first line says how many ranks readiness still waits for."""
    if path not in CHECKS:
        raise KeyError(path)
    lines, ok = [], True
    if expected is not None and path in _WAITING:
        waiting = len(expected.missing(snapshots))
        ok = not waiting
        lines.append(f"[{'-' if waiting else '+'}]ranks {expected.describe(waiting)}")
        lines += expected.roster_lines()
    for s in snapshots:
        name = f"{s.kind} {label(s)}"
        if label(s) in exclude:
            lines.append(f"[+]{name} excluded: ok")
        elif _ok(path, s):
            lines.append(f"[+]{name} ok")
        else:
            ok = False
            lines.append(f"[-]{name} failed: {s.describe(now)}")
    lines += [f'warn: some health checks cannot be excluded: no matches for "{x}"'
              for x in unmatched(snapshots, exclude)]
    # Names, excluded names and error messages come from outside: none may start a line
    # of its own (a forged "readyz check passed").
    lines = [one_line(line) for line in lines]
    lines.append(f"{path.lstrip('/')} check {'passed' if ok else 'failed'}")
    return (200 if ok else 503), "\n".join(lines) + "\n"
