"""What /proc says about another process: when it started, and whether it still runs."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(path: str) -> list[str] | None:
    """Fields 3 on of a /proc .../stat file (None if it is gone). The command name
    (field 2) may hold spaces and parentheses; the fields after the last ')' are plain."""
    try:
        return Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22); None if it is gone.
    With the PID it names one process for good: PIDs are reused, this pair is not."""
    fields = _stat_fields(f"/proc/{pid}/stat")
    return int(fields[19]) if fields else None


def process_alive(pid: int) -> bool:
    """`pid` may still do something: it exists and not every thread of it has exited.

    A process that has exited stays a zombie until its parent reaps it, which in a
    container whose init does not reap may be never, and some inits reap only every
    second or two. Its main thread alone shows as a zombie while other threads run.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        # Reaped since, or no /proc to tell: only the first is certain.
        return not os.path.isdir("/proc/self") or os.path.isdir(f"/proc/{pid}")
    for task in tasks:
        fields = _stat_fields(f"/proc/{pid}/task/{task}/stat")
        if fields is not None and fields[0] not in ("Z", "X"):
            return True
    return False
