"""Where a running mount publishes its PID and statistics, keyed by mountpoint.

`mlfs status MOUNTPOINT` reads the file, `mlfs reload MOUNTPOINT` sends SIGHUP to the PID
in it. The directory is `$MLFS_RUN_DIR`, else `/run/mlfs` when writable, else a
per-user directory under the system temp dir.

Whoever can write the directory decides which process `mlfs reload` signals, so the
directory must belong to the current user (or root) and be writable by nobody else; the
file is trusted only if it has the same owner. The published PID is checked too: it
must still be the process that wrote the file (same start time) and hold a FUSE
connection open, or it is not signalled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

from mlfs.errors import MountError
from mlfs.procs import process_start_time


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


def _trusted_owner(uid: int) -> bool:
    return uid in (os.getuid(), 0)


def checked_run_dir(create: bool) -> Path:
    """The run directory, created private (0700) if asked, refused if anyone else controls it."""
    path = run_dir()
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise MountError(f"run directory {path}: cannot create: {exc.strerror}") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"run directory {path} is not a directory (a symlink or file put there?)")
    if not _trusted_owner(st.st_uid):
        raise MountError(f"run directory {path} belongs to uid {st.st_uid}, not to you; refusing to use it")
    if st.st_mode & 0o022:
        raise MountError(f"run directory {path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                         "refusing to use it")
    return path


def info_path(mountpoint: str | os.PathLike[str], create: bool = False) -> Path:
    key = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:24]
    return checked_run_dir(create) / f"{key}.json"


def publisher() -> dict[str, Any]:
    """Identity of this process and the time of publication, for the info file."""
    return {"pid": os.getpid(), "pid_start": process_start_time(os.getpid()), "published": time.time()}


def write_info(mountpoint: str | os.PathLike[str], doc: dict[str, Any]) -> None:
    path = info_path(mountpoint, create=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps({**doc, **publisher()}, indent=1, default=str))
    os.replace(tmp, path)


def read_info(mountpoint: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = info_path(mountpoint)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise MountError(f"mount statistics {path}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd) as fh:
        if not _trusted_owner(os.fstat(fh.fileno()).st_uid):
            raise MountError(f"mount statistics {path} belong to another user; refusing to trust them")
        try:
            return json.loads(fh.read())
        except ValueError:
            return None


def verified_mount_pid(doc: dict[str, Any], mountpoint: str | os.PathLike[str]) -> int:
    """The PID published for `mountpoint`, once it is shown to be that mount's process."""
    pid, started = doc.get("pid"), doc.get("pid_start")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or not isinstance(started, int):
        raise MountError(f"the statistics of {mountpoint} name no valid mount process")
    now = process_start_time(pid)
    if now is None:
        raise MountError(f"the mlfs process of {mountpoint} (pid {pid}) is gone")
    if now != started:
        raise MountError(f"pid {pid} is no longer the mlfs process of {mountpoint} (it was reused)")
    if not _holds_fuse_device(pid):
        raise MountError(f"pid {pid} holds no FUSE connection; it is not the mlfs process of {mountpoint}")
    return pid


def _holds_fuse_device(pid: int) -> bool:
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        with contextlib.suppress(OSError):
            if os.readlink(f"{fd_dir}/{name}") == "/dev/fuse":
                return True
    return False


def remove_info(mountpoint: str | os.PathLike[str]) -> None:
    with contextlib.suppress(FileNotFoundError, MountError):
        info_path(mountpoint).unlink()
