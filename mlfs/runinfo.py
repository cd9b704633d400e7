"""Where a running mount publishes its PID and statistics, keyed by mountpoint.

`mlfs status MOUNTPOINT` reads the file, `mlfs reload MOUNTPOINT` sends SIGHUP to the PID
in it. The directory is `$MLFS_RUN_DIR`, else `/run/mlfs` when writable, else a
per-user directory under the system temp dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def run_dir() -> Path:
    if env := os.environ.get("MLFS_RUN_DIR"):
        return Path(env)
    system = Path("/run/mlfs")
    try:
        system.mkdir(mode=0o755, exist_ok=True)
        if os.access(system, os.W_OK):
            return system
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"mlfs-{os.getuid()}"


def info_path(mountpoint: str | os.PathLike[str]) -> Path:
    key = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:24]
    return run_dir() / f"{key}.json"


def write_info(mountpoint: str | os.PathLike[str], doc: dict[str, Any]) -> None:
    path = info_path(mountpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)


def read_info(mountpoint: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        return json.loads(info_path(mountpoint).read_text())
    except (FileNotFoundError, ValueError):
        return None


def remove_info(mountpoint: str | os.PathLike[str]) -> None:
    with contextlib.suppress(FileNotFoundError):
        info_path(mountpoint).unlink()
