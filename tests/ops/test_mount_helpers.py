"""`mount -t fuse.mlfs` and fstab lines through the `mount.fuse.mlfs` helper, `umount`,
and systemd readiness notifications (Type=notify)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlfs.fuse.mountpoints import find_mount
from tests.fuse.conftest import Artifact
from tests.mlfs_cli import daemon_pid, wait_gone
from tests.ops.helpers import assert_clean_log, wait_for

HELPER = Path("/sbin/mount.fuse.mlfs")


@pytest.fixture
def helper_installed() -> Iterator[None]:
    """mount(8) looks for helpers in /sbin only: link this installation's helper there."""
    ours = Path(sys.executable).parent / "mount.fuse.mlfs"
    assert ours.exists(), f"{ours} missing: the package installs it (pip install -e .)"
    previous = os.readlink(HELPER) if HELPER.is_symlink() else None
    assert previous is not None or not HELPER.exists(), f"{HELPER} exists and is not a link; not touching it"
    if previous != str(ours):
        with contextlib.suppress(FileNotFoundError):
            HELPER.unlink()
        HELPER.symlink_to(ours)
    try:
        yield
    finally:
        if previous != str(ours):
            HELPER.unlink()
            if previous is not None:
                HELPER.symlink_to(previous)


def _umount(mp: Path) -> None:
    pid = daemon_pid(mp)
    result = subprocess.run(["umount", str(mp)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert find_mount(mp) is None
    if pid is not None:
        wait_gone(pid, 30)


def test_mount_t_fuse_mlfs_and_umount(artifact: Artifact, tmp_path: Path, helper_installed: None) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    log = tmp_path / "mount.log"
    opts = f"cache={tmp_path / 'cache'},allow_other,max_threads=4,log_file={log},_netdev,noauto"
    result = subprocess.run(["mount", "-t", "fuse.mlfs", str(artifact.manifest), str(mp), "-o", opts],
                            env=artifact.env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    try:
        info = find_mount(mp)
        assert info is not None and info.fstype == "fuse.mlfs"
        assert (mp / "odd.bin").read_bytes() == (artifact.local / "odd.bin").read_bytes()
    finally:
        _umount(mp)
    assert_clean_log(log)


def test_fstab_line(artifact: Artifact, tmp_path: Path, helper_installed: None) -> None:
    mp = tmp_path / "model"
    mp.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{artifact.manifest} {mp} fuse.mlfs "
                     f"cache={tmp_path / 'cache'},allow_other,_netdev,nofail,x-systemd.requires=network-online.target 0 0\n")
    result = subprocess.run(["mount", "--fstab", str(fstab), str(mp)], env=artifact.env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    try:
        assert (mp / "config.json").read_bytes() == (artifact.local / "config.json").read_bytes()
    finally:
        _umount(mp)


def test_systemd_notify_ready_and_stopping(artifact: Artifact, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(60)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlfs", "mount", "--foreground", str(artifact.manifest), str(mp),
         "--cache", str(tmp_path / "cache")],
        env=dict(artifact.env, NOTIFY_SOCKET=str(tmp_path / "notify.sock")),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ready = notify.recv(4096).decode()
        assert ready.splitlines()[0] == "READY=1"
        assert f"MAINPID={proc.pid}" in ready.splitlines()
        # READY=1 comes once the mount is live.
        assert find_mount(mp) is not None
        assert (mp / "nested" / "deeper" / "notes.txt").read_text() == "nested file\n"
        proc.send_signal(signal.SIGTERM)
        assert notify.recv(4096).decode() == "STOPPING=1"
        assert proc.wait(60) == 0
        assert find_mount(mp) is None
    finally:
        notify.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: find_mount(mp) is None, "unmounted")
