"""`mlfs mount M MNT -- CMD`: the mount lives exactly as long as CMD, and CMD's exit
status (or the signal that ended it) becomes mlfs's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from mlfs.fuse.mountpoints import find_mount
from tests.fuse.conftest import Artifact
from tests.mlfs_cli import mlfs
from tests.ops.helpers import wait_for

VERIFY = """
import hashlib, json, pathlib, sys
mp, manifest = pathlib.Path(sys.argv[1]), json.load(open(sys.argv[2]))
for f in manifest["files"]:
    data = (mp / f["path"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != f["sha256"]:
        sys.exit(f"{f['path']}: wrong bytes")
print(f"verified {len(manifest['files'])} files")
"""


def test_command_succeeds_with_every_byte_verified(artifact: Artifact, tmp_path: Path) -> None:
    mp = tmp_path / "deep" / "mnt"  # --mkdir creates it, parents included
    result = mlfs("mount", artifact.manifest, mp, "--mkdir", "--cache", tmp_path / "cache",
                  "--", sys.executable, "-c", VERIFY, mp, artifact.manifest, env=artifact.env, check=False)
    assert result.returncode == 0, result.stderr
    assert "verified 1007 files" in result.stdout
    assert find_mount(mp) is None
    assert "Traceback" not in result.stderr


def test_command_failure_status_passes_through(artifact: Artifact, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    result = mlfs("mount", artifact.manifest, mp, "--cache", tmp_path / "cache",
                  "--", "sh", "-c", f"test -s {mp}/config.json && exit 7", env=artifact.env, check=False)
    assert result.returncode == 7
    assert find_mount(mp) is None


def test_command_killed_by_a_signal_reports_128_plus_signal(artifact: Artifact, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    result = mlfs("mount", artifact.manifest, mp, "--cache", tmp_path / "cache",
                  "--", "sh", "-c", "kill -KILL $$", env=artifact.env, check=False)
    assert result.returncode == 128 + signal.SIGKILL
    assert find_mount(mp) is None


def test_sigterm_reaches_the_command_and_the_mount_ends_with_it(artifact: Artifact, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlfs", "mount", str(artifact.manifest), str(mp), "--cache", str(tmp_path / "cache"),
         "--", "sh", "-c", f"cat {mp}/nested/deeper/notes.txt > {ready}; exec sleep 600"],
        env=artifact.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: ready.exists() and ready.read_text() == "nested file\n", "command started")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert find_mount(mp) is None
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_missing_command_mounts_nothing(artifact: Artifact, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    result = mlfs("mount", artifact.manifest, mp, "--", "no-such-program-xyz", env=artifact.env, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "mlfs: command not found: no-such-program-xyz"
    assert find_mount(mp) is None
