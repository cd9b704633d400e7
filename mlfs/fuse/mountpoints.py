"""Mountpoint checks, stale-mount cleanup and unmounting (no pyfuse3 needed).

A daemon killed with SIGKILL leaves its mount behind: the kernel answers ENOTCONN
("Transport endpoint is not connected") for it until someone unmounts it. Both
`mlfs mount` and `mlfs unmount` detect that state and clean it with a lazy unmount.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mlfs.errors import MountError

FSNAME = "mlfs"


@dataclass(frozen=True)
class MountInfo:
    mountpoint: str
    fstype: str
    source: str
    device: str  # "major:minor", names the mount's backing_dev_info in sysfs
    options: frozenset[str] = frozenset()  # per-mount flags as the kernel applies them

    @property
    def is_mlfs(self) -> bool:
        return self.fstype in ("fuse.mlfs", "fuse") and self.source == FSNAME


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    return field.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")


def find_mount(mountpoint: str | os.PathLike[str]) -> MountInfo | None:
    target = os.path.abspath(mountpoint)
    found = None
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            parts = left.split()
            rparts = right.split()
            if len(parts) < 5 or len(rparts) < 2:
                continue
            if _unescape(parts[4]) == target:
                # The last entry wins: it is the one stacked on top.
                found = MountInfo(target, rparts[0], _unescape(rparts[1]), parts[2],
                                  frozenset(parts[5].split(",")) if len(parts) > 5 else frozenset())
    return found


def mlfs_mounts() -> list[MountInfo]:
    """Every mlfs mount visible to this process, in mount order."""
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            parts, rparts = left.split(), right.split()
            if len(parts) >= 5 and len(rparts) >= 2:
                info = MountInfo(_unescape(parts[4]), rparts[0], _unescape(rparts[1]), parts[2])
                if info.is_mlfs:
                    found.append(info)
    return found


def is_stale(mountpoint: str | os.PathLike[str]) -> bool:
    # statfs always reaches the daemon; stat may be answered from the kernel's attribute
    # cache (mounts cache attributes for a day), which outlives a killed daemon.
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def lazy_unmount(mountpoint: str | os.PathLike[str]) -> None:
    path = os.path.abspath(mountpoint)
    for cmd in (["fusermount3", "-u", "-z", path], ["umount", "-l", path]):
        if shutil.which(cmd[0]) is None:
            continue
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode == 0:
            return
        last = result.stderr.strip()
    else:
        last = "neither fusermount3 nor umount is available"
    raise MountError(f"cannot unmount {path}: {last}")


def clean_stale(mountpoint: str | os.PathLike[str]) -> bool:
    """Unmount a dead mlfs mount at `mountpoint`; True if there was one."""
    info = find_mount(mountpoint)
    if info is not None and info.is_mlfs and is_stale(mountpoint):
        lazy_unmount(mountpoint)
        return True
    return False


def check_mountpoint(mountpoint: str | os.PathLike[str]) -> tuple[Path, bool]:
    """Validate a mountpoint before mounting; returns (absolute path, cleaned_stale)."""
    path = Path(os.path.abspath(mountpoint))
    cleaned = clean_stale(path)
    info = find_mount(path)
    if info is not None and info.is_mlfs:
        raise MountError(f"{path} is already an mlfs mount (unmount it first: mlfs unmount {path})")
    if not path.exists():
        raise MountError(f"mountpoint {path} does not exist")
    if not path.is_dir():
        raise MountError(f"mountpoint {path} is not a directory")
    try:
        if any(os.scandir(path)):
            raise MountError(f"mountpoint {path} is not empty")
    except PermissionError:
        raise MountError(f"mountpoint {path}: permission denied") from None
    return path, cleaned


def unmount(mountpoint: str | os.PathLike[str]) -> str:
    """Unmount an mlfs mount, live or stale; returns a message describing what happened."""
    path = os.path.abspath(mountpoint)
    info = find_mount(path)
    if info is None:
        raise MountError(f"{path} is not mounted")
    if not info.is_mlfs:
        raise MountError(f"{path} is not an mlfs mount (it is {info.fstype} from {info.source})")
    if is_stale(path):
        lazy_unmount(path)
        return f"cleaned stale mount at {path} (its mlfs process had died)"
    result = subprocess.run(["fusermount3", "-u", path], capture_output=True, text=True)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "unknown error"
        raise MountError(f"cannot unmount {path}: {detail}")
    return f"unmounted {path}"


def tune_kernel_read_ahead(info: MountInfo, kib: int) -> bool:
    """Raise the kernel's read-ahead for this mount so sequential reads arrive in large,
    overlapping requests; best effort (needs root and sysfs)."""
    try:
        with open(f"/sys/class/bdi/{info.device}/read_ahead_kb", "w") as fh:
            fh.write(str(kib))
        return True
    except OSError:
        return False
