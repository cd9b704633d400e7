"""Mount lifecycle: daemon, foreground, signals, stale mounts, options."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlfs.fuse.mountpoints import find_mount, is_stale
from tests.fuse.conftest import Artifact
from tests.mlfs_cli import daemon_pid, mlfs, mounted, wait_gone


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_sigterm_with_a_file_open_leaves_no_mount(artifact: Artifact, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    with mounted(artifact.manifest, mp, artifact.env, "--cache", tmp_path / "cache"):
        pid = daemon_pid(mp)
        assert pid is not None
        fh = open(mp / "odd.bin", "rb")
        try:
            assert fh.read(10) == (artifact.local / "odd.bin").read_bytes()[:10]
            os.kill(pid, signal.SIGTERM)
            wait_gone(pid)
            assert find_mount(mp) is None
        finally:
            # The daemon is gone, so the kernel answers the close's flush with ENOTCONN.
            with contextlib.suppress(OSError):
                fh.close()
    assert os.listdir(mp) == []


def _wait_stale(mp: Path, timeout: float = 10) -> None:
    # The kernel ends the connection when the dead daemon's last file is released, which
    # can come a little after every thread has exited.
    deadline = time.monotonic() + timeout
    while not is_stale(mp):
        assert time.monotonic() < deadline, f"{mp} did not go stale after its daemon died"
        time.sleep(0.02)


def test_kill_9_leaves_a_stale_mount_that_unmount_cleans(artifact: Artifact, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    mlfs("mount", artifact.manifest, mp, "--cache", tmp_path / "cache", env=artifact.env)
    pid = daemon_pid(mp)
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    _wait_stale(mp)
    assert find_mount(mp) is not None
    result = mlfs("unmount", mp, env=artifact.env)
    assert "cleaned stale mount" in result.stderr
    assert find_mount(mp) is None


def test_next_mount_cleans_a_stale_mount(artifact: Artifact, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    cache = tmp_path / "cache"
    mlfs("mount", artifact.manifest, mp, "--cache", cache, env=artifact.env)
    pid = daemon_pid(mp)
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    _wait_stale(mp)
    result = mlfs("mount", artifact.manifest, mp, "--cache", cache, env=artifact.env)
    try:
        assert "cleaned a stale mount" in result.stderr
        assert (mp / "config.json").read_bytes() == (artifact.local / "config.json").read_bytes()
    finally:
        mlfs("unmount", mp, env=artifact.env)


def test_foreground_mount_ends_on_sigint(artifact: Artifact, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlfs", "mount", "--foreground", "--cache", str(tmp_path / "cache"),
         "--manifest", str(artifact.manifest), str(mp)],
        env=artifact.env, stderr=subprocess.PIPE, text=True,
    )
    try:
        _wait_for(lambda: find_mount(mp) is not None)
        assert (mp / "nested" / "deeper" / "notes.txt").read_text() == "nested file\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert find_mount(mp) is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dash_o_options_and_ownership(artifact: Artifact, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    opts = f"cache={tmp_path / 'cache'},uid=1234,gid=4321,max_threads=4,read_ahead_max=2,ro"
    with mounted(artifact.manifest, mp, artifact.env, "-o", opts):
        st = os.stat(mp / "config.json")
        assert (st.st_uid, st.st_gid) == (1234, 4321)
        assert (mp / "odd.bin").read_bytes() == (artifact.local / "odd.bin").read_bytes()
    assert (tmp_path / "cache" / "chunks").is_dir()


def test_unknown_option_and_unmount_errors(artifact: Artifact, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    bad = mlfs("mount", artifact.manifest, mp, "-o", "colour=blue", env=artifact.env, check=False)
    assert bad.returncode == 1 and "unknown mount option 'colour'" in bad.stderr
    assert find_mount(mp) is None
    not_mounted = mlfs("unmount", mp, env=artifact.env, check=False)
    assert not_mounted.returncode == 1 and "is not mounted" in not_mounted.stderr
    with mounted(artifact.manifest, mp, artifact.env, "--cache", tmp_path / "cache"):
        again = mlfs("mount", artifact.manifest, mp, env=artifact.env, check=False)
        assert again.returncode == 1 and "already an mlfs mount" in again.stderr
