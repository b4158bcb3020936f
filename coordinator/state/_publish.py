"""One JSON file per driver, rewritten atomically at every transition."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from coordinator.snapshot import Snapshot
from coordinator.state._process import alive, start_ticks

FORMAT = 1
SUFFIX = ".json"
_numbers = itertools.count(1)


class Publisher:
    """A driver listener writing each snapshot to ``directory/<pid>-<n>.json``.

    ``publisher.attach(driver)`` writes the current snapshot at once and every later one.
    Times in the file are the driver's monotonic clock (shared by every process on a
    host), plus the wall time of the write for humans. A failed write is counted in
    ``errors``, never raised: the driver must not stop because a disk is full.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._pid = os.getpid()
        self._ticks = start_ticks(self._pid)
        self.path = self.directory / f"{self._pid}-{next(_numbers)}{SUFFIX}"
        self.errors = 0

    def __repr__(self) -> str:
        return f"Publisher({str(self.path)!r})"

    def attach(self, driver: Any) -> Publisher:
        driver.add_listener(self)
        self(driver.snapshot())
        return self

    def __call__(self, snapshot: Snapshot) -> None:
        record = {"format": FORMAT, "pid": self._pid, "start_ticks": self._ticks,
                  "snapshot": snapshot.to_dict()}
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=SUFFIX)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.replace(tmp, self.path)  # readers see the old file or the new one, never half
        except OSError:
            self.errors += 1
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)


def clean_stale(directory: str | os.PathLike[str]) -> int:
    """Remove the files of writers that are gone (a previous run's); returns how many."""
    removed = 0
    for path in Path(directory).glob(f"*{SUFFIX}"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            stale = not alive(int(record["pid"]), record.get("start_ticks"))
        except (OSError, ValueError, KeyError, TypeError):
            stale = True
        if stale:
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed
