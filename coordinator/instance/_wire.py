"""The datagrams an instance's processes send its main process, and their strict reading.

One datagram carries one driver's snapshot, or says that driver retired (stopped,
superseded). The socket can be reached by any process of the user, so nothing is built
from a datagram before its size, shape, types and ranges are checked: a bad one is a
:class:`BadMessage` with a short reason, never an exception from deeper down.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from coordinator.outcome import Cause, Reason
from coordinator.snapshot import Kind, Snapshot
from states import State

FORMAT = 1
MAX_DATAGRAM = 8192  # a snapshot is about 600 bytes; an error message is capped below
MAX_TEXT = 1024  # url, name, error type and message
MAX_COUNT = 2**31  # attempts, seq, invalidations, a driver's number


class BadMessage(ValueError):
    """A datagram that is not one of ours; the message says why, in a few words."""


MAX_REPLY = 200_000  # a status reply: under Linux's default socket buffer (208 KiB)
QUERY = json.dumps({"format": FORMAT, "query": "status"}).encode()


@dataclass(frozen=True)
class Message:
    driver: int  # the sender's number for the driver, unique within its process
    snapshot: Snapshot | None  # None: the driver retired


@dataclass(frozen=True)
class Report:
    """A main process's answer to a status query: what its probes read."""

    expected_ranks: int | None
    where: str
    members: tuple[tuple[int, Snapshot], ...]  # (pid, snapshot as the probes see it)
    truncated: bool = False


def _wired(snapshot: Snapshot) -> dict[str, Any]:
    """A snapshot as the wire carries it."""
    data = snapshot.to_dict()
    data.pop("info", None)  # the probes never show the topology; it only costs bytes
    err = data.get("last_error")
    if err is not None:
        err["message"] = err["message"][:MAX_TEXT]
    return data


def encode(driver: int, snapshot: Snapshot | None) -> bytes:
    body: dict[str, Any] = {"format": FORMAT, "driver": driver}
    if snapshot is not None:
        body["snapshot"] = _wired(snapshot)
    return json.dumps(body, separators=(",", ":")).encode()


def encode_report(report: Report) -> bytes:
    members = [{"pid": pid, "snapshot": _wired(snap)} for pid, snap in report.members]
    body: dict[str, Any] = {"format": FORMAT, "expected_ranks": report.expected_ranks, "where": report.where,
                            "members": members, "truncated": report.truncated}
    data = json.dumps(body, separators=(",", ":")).encode()
    while len(data) > MAX_REPLY and members:  # the first ones fit; the reply says it is cut
        del members[len(members) // 2:]
        body["truncated"] = True
        data = json.dumps(body, separators=(",", ":")).encode()
    return data


def decode_report(data: bytes) -> Report:
    body = _object(data, MAX_REPLY)
    raw = body.get("members")
    if not isinstance(raw, list) or not all(isinstance(m, dict) and isinstance(m.get("snapshot"), dict)
                                            for m in raw):
        raise BadMessage("members: not a list of objects")
    return Report(_count(body, "expected_ranks", optional=True), _text(body, "where", optional=True) or "",
                  tuple((_count(m, "pid"), _snapshot(m["snapshot"])) for m in raw), body.get("truncated") is True)


def is_query(data: bytes) -> bool:
    return data == QUERY


def _object(data: bytes, limit: int) -> dict[str, Any]:
    if len(data) > limit:
        raise BadMessage(f"{len(data)} bytes, more than {limit}")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        raise BadMessage("not JSON") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise BadMessage("not a prefill-startup record")
    return body


def decode(data: bytes) -> Message:
    body = _object(data, MAX_DATAGRAM)
    driver = _count(body, "driver")
    raw = body.get("snapshot")
    if raw is None:
        return Message(driver, None)
    if not isinstance(raw, dict):
        raise BadMessage("snapshot: not an object")
    return Message(driver, _snapshot(raw))


def _snapshot(d: dict[str, Any]) -> Snapshot:
    err = d.get("last_error")
    if err is not None:
        if not isinstance(err, dict):
            raise BadMessage("last_error: not an object")
        try:
            cause = Cause(_text(err, "type"), _text(err, "message"))
        except BadMessage as exc:
            raise BadMessage(f"last_error.{exc}") from None
    return Snapshot(
        state=_enum(State, d, "state"), url=_text(d, "url"), attempt=_count(d, "attempt"),
        max_attempts=_count(d, "max_attempts", optional=True), started_at=_time(d, "started_at", optional=True),
        state_since=_time(d, "state_since"), next_attempt_at=_time(d, "next_attempt_at", optional=True),
        last_status=_status(d), last_error=None if err is None else cause,
        reason=None if d.get("reason") is None else _enum(Reason, d, "reason"), taken_at=_time(d, "taken_at"),
        seq=_count(d, "seq"), name=_text(d, "name", optional=True), kind=_enum(Kind, d, "kind"),
        deadline_s=_time(d, "deadline_s", optional=True), invalidations=_count(d, "invalidations"),
    )


def _get(d: dict[str, Any], key: str, optional: bool) -> Any:
    value = d.get(key)
    if value is None and not optional:
        raise BadMessage(f"{key}: missing")
    return value


def _count(d: dict[str, Any], key: str, optional: bool = False) -> Any:
    value = _get(d, key, optional)
    if value is not None and (type(value) is not int or not 0 <= value < MAX_COUNT):
        raise BadMessage(f"{key}: not a count")
    return value


def _time(d: dict[str, Any], key: str, optional: bool = False) -> Any:
    value = _get(d, key, optional)
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise BadMessage(f"{key}: not a finite number")
    return float(value)


def _text(d: dict[str, Any], key: str, optional: bool = False) -> Any:
    value = _get(d, key, optional)
    if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
        raise BadMessage(f"{key}: not a string of at most {MAX_TEXT} characters")
    return value


def _status(d: dict[str, Any]) -> int | None:
    value = d.get("last_status")
    if value is not None and (type(value) is not int or not 100 <= value <= 599):
        raise BadMessage("last_status: not an HTTP status")
    return value


def _enum(enum: Any, d: dict[str, Any], key: str) -> Any:
    try:
        return enum(_get(d, key, False))
    except (ValueError, TypeError):
        raise BadMessage(f"{key}: not one of {', '.join(m.value for m in enum)}") from None
