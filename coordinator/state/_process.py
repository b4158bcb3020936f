"""Whether a process is still the one that wrote a file: its pid, and its start time
(``/proc/<pid>/stat``), so a pid reused by another process does not pass as alive."""

from __future__ import annotations

import os


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: fields follow the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[19])  # field 22 of stat(5), counted from field 3
    except (IndexError, ValueError):
        return None


def alive(pid: int, ticks: int | None) -> bool:
    """Whether ``pid`` runs and, where both are known, started at ``ticks``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if ticks is None:
        return True
    now = start_ticks(pid)
    return now is None or now == ticks
