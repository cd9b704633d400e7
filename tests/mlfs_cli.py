"""Run the real `mlfs` CLI in subprocesses, and find/stop mount daemons."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mlfs.fuse.mountpoints import find_mount, lazy_unmount
from mlfs.procs import process_alive
from tests.daemon_logs import DAEMON_LOGS, mount_log_path

# `mlfs mount` checks S3 with one HEAD of an object before mounting, which SeaweedFS
# counts among a bucket's GET requests.
MOUNT_PROBE_GETS = 1


def mlfs(*args: str | os.PathLike[str], env: dict[str, str], check: bool = True,
         timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "mlfs", *map(str, args)],
        env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mlfs {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def require_fuse() -> None:
    """FUSE tests never skip: a machine without FUSE fails them loudly."""
    problems = []
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse is missing")
    if shutil.which("fusermount3") is None:
        problems.append("fusermount3 is not installed (apt-get install fuse3)")
    try:
        import pyfuse3  # noqa: F401
    except ImportError as exc:
        problems.append(f"pyfuse3 cannot be imported: {exc}")
    if problems:
        raise RuntimeError("FUSE tests need FUSE: " + "; ".join(problems))


def daemon_pid(mountpoint: Path) -> int | None:
    """PID of the `mlfs mount` daemon serving `mountpoint`."""
    target = str(mountpoint)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if "mount" in args and any(os.path.abspath(a) == target for a in args if a.startswith("/") or a == target):
            return int(entry)
    return None


def wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Reap if it is our child (it is not, for daemons, but be tidy).
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not process_alive(pid):  # a zombie counts as gone: init may reap it late
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} still running after {timeout}s")


@contextlib.contextmanager
def mounted(manifest: Path, mountpoint: Path, env: dict[str, str], *extra: str,
            said: list[str] | None = None) -> Iterator[Path]:
    """Mount with the real CLI (daemon mode); always unmounted afterwards. `said` gets
    the lines `mlfs mount` printed."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    DAEMON_LOGS.watch(mount_log_path(extra, env))
    result = mlfs("mount", manifest, mountpoint, *extra, env=env)
    if said is not None:
        said.extend(result.stderr.strip().splitlines())
    assert find_mount(mountpoint) is not None, "mlfs mount returned 0 but nothing is mounted"
    pid = daemon_pid(mountpoint)
    try:
        yield mountpoint
    finally:
        if find_mount(mountpoint) is not None:
            result = mlfs("unmount", mountpoint, env=env, check=False)
            if result.returncode != 0:
                lazy_unmount(mountpoint)
        if pid is not None:
            try:
                wait_gone(pid, 30)
            except AssertionError:
                os.kill(pid, signal.SIGKILL)
