"""Published snapshots read back, as driver-like views the probes take."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from coordinator.clock import Clock, SystemClock
from coordinator.outcome import Cause
from coordinator.policy import Reason
from coordinator.snapshot import Snapshot
from coordinator.state._process import alive
from coordinator.state._publish import FORMAT, SUFFIX
from states import State

_CLOCK = SystemClock()  # the writers' clock: monotonic time is one per host


@dataclass(frozen=True)
class Published:
    """One driver of another process: ``snapshot()`` as it last published it, or, when
    that process is gone, FAILED with reason ``gone`` (its last state in the error)."""

    path: Path
    pid: int
    alive: bool
    raw: dict[str, Any]  # the snapshot as written (``Snapshot.to_dict()``)
    _snapshot: Snapshot
    clock: Clock = _CLOCK

    def snapshot(self) -> Snapshot:
        return self._snapshot


def _parse(path: Path) -> Published | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") != FORMAT:
            return None
        pid = int(record["pid"])
        raw = record["snapshot"]
        snapshot = Snapshot.from_dict(raw)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # being replaced, or not ours: the next read sees it whole
    running = alive(pid, record.get("start_ticks"))
    if not running and not (snapshot.state is State.FAILED and snapshot.reason is not None):
        gone = Cause("ProcessGone", f"process {pid} exited; its last state was {snapshot.state.value}")
        snapshot = replace(snapshot, state=State.FAILED, reason=Reason.GONE, last_error=gone, next_attempt_at=None)
    return Published(path, pid, running, raw, snapshot)


def read_published(directory: str | os.PathLike[str]) -> list[Published]:
    """Every driver published in ``directory``, in a stable order (by process, then driver)."""
    found = [p for p in map(_parse, sorted(Path(directory).glob(f"*{SUFFIX}"))) if p is not None]
    return sorted(found, key=lambda p: (p.pid, p.path.name))
