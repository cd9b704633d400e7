"""Helpers for operations tests: bounded polling and daemon log checks."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout}s")
        time.sleep(0.05)


def assert_clean_log(path: Path) -> None:
    """A daemon's log (text or JSON lines) holds no warning, error or traceback."""
    text = path.read_text() if path.exists() else ""
    bad = [line for line in text.splitlines()
           if " WARNING " in line or " ERROR " in line or "Traceback" in line
           or '"level": "warning"' in line or '"level": "error"' in line]
    assert not bad, f"unexpected problems in {path}:\n" + "\n".join(bad)
