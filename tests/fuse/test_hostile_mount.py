"""Hostile manifests and file contents against a real mount: the mount stays up, serves
exactly the manifest's bytes, and never grants more than a read-only tree can."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from mlfs.fuse.mountpoints import find_mount
from tests.fuse.conftest import Artifact
from tests.mlfs_cli import daemon_pid, mlfs, mounted
from tests.unit.test_hostile_input import lying_safetensors


def publish(artifact: Artifact, tmp_path: Path, files: dict[str, bytes], tag: str) -> Path:
    """Upload `files` under a fresh prefix and generate their manifest."""
    client = artifact.server.client()
    prefix = f"hostile/{tmp_path.name}-{tag}/"
    for name, data in files.items():
        client.put_object(Bucket=artifact.bucket, Key=prefix + name, Body=data)
    manifest = tmp_path / f"{tag}.json"
    mlfs("generate", f"s3://{artifact.bucket}/{prefix}", "-o", manifest, "--chunk-size", "64K", "-q",
         "--no-prefetch", env=artifact.env)
    return manifest


def patch(manifest: Path, **changes) -> Path:
    doc = json.loads(manifest.read_text())
    doc.update(changes)
    manifest.write_text(json.dumps(doc))
    return manifest


def one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlfs: ") and expected in lines[0], result.stderr


def test_lying_safetensors_header_leaves_the_mount_serving(artifact: Artifact, tmp_path: Path,
                                                          fault_case) -> None:
    # A 64 KiB file claiming a tensor of 2^40 elements at offsets up to 2^62, mounted with
    # the default rules (safetensors files prefetch header-then-tensors on open).
    lie = lying_safetensors(64 * 1024 * 4, 1 << 62)
    manifest = publish(artifact, tmp_path, {"model.safetensors": lie, "config.json": b"{}"}, "lie")
    with mounted(manifest, tmp_path / "mnt", artifact.env, "--cache", tmp_path / "cache") as mp:
        pid = daemon_pid(mp)
        got = (mp / "model.safetensors").read_bytes()
        assert (mp / "config.json").read_bytes() == b"{}"
        assert daemon_pid(mp) == pid, "the mount daemon died"
    wrong = sum(a != b for a, b in zip(got, lie, strict=True))
    fault_case.record("lying header prefetched within the file; reads exact", wrong_bytes=wrong)


def test_setuid_modes_are_stripped_and_the_mount_is_nosuid_nodev(artifact: Artifact, tmp_path: Path,
                                                                 fault_case) -> None:
    manifest = publish(artifact, tmp_path, {"tool": b"#!/bin/sh\necho hi\n"}, "suid")
    doc = json.loads(manifest.read_text())
    doc["files"][0]["mode"] = 0o6755
    manifest.write_text(json.dumps(doc))
    with mounted(manifest, tmp_path / "mnt", artifact.env, "--cache", tmp_path / "cache") as mp:
        mode = stat.S_IMODE(os.stat(mp / "tool").st_mode)
        options = find_mount(mp).options
    assert mode == 0o555, f"served as {mode:o}"
    assert {"ro", "nosuid", "nodev"} <= options, options
    fault_case.record("mode 6755 served as 555 on a ro,nosuid,nodev mount")


def test_noexec_reaches_the_kernel(artifact: Artifact, tmp_path: Path) -> None:
    with mounted(artifact.manifest, tmp_path / "mnt", artifact.env, "--cache", tmp_path / "cache",
                 "-o", "noexec,nosuid") as mp:
        assert "noexec" in find_mount(mp).options


@pytest.mark.parametrize("option", ["bogus", "suid", "exec"])
def test_unknown_or_weakening_mount_options_mount_nothing(artifact: Artifact, tmp_path: Path, option: str) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    result = mlfs("mount", artifact.manifest, mp, "--cache", tmp_path / "cache", "-o", option,
                  env=artifact.env, check=False)
    one_line_error(result, repr(option))
    assert find_mount(mp) is None


# A link at depth d whose target climbs through a symlinked component: lexically it stays
# inside, resolved it climbs one directory above the mount.
def _escaping_links(depth: int) -> list[dict[str, str]]:
    base = "/".join(f"d{i}" for i in range(depth))
    up = "/".join([".."] * depth) or "."
    pre = f"{base}/" if base else ""
    return [{"path": f"{pre}s", "target": up},
            {"path": f"{pre}p", "target": "s/" + "/".join([".."] * (depth + 1)) + "/secret"}]


@pytest.mark.parametrize("depth", [0, 1, 2, 4])
def test_symlink_escape_through_a_symlink_mounts_nothing(artifact: Artifact, tmp_path: Path, depth: int,
                                                         fault_case) -> None:
    # The mountpoint sits next to a secret the escaping link would reach.
    (tmp_path / "secret").write_text("host secret\n")
    files = {"/".join([*(f"d{i}" for i in range(depth)), "f.txt"]): b"inside\n"}
    manifest = patch(publish(artifact, tmp_path, files, f"esc{depth}"), symlinks=_escaping_links(depth))
    mp = tmp_path / "mnt"
    mp.mkdir()
    result = mlfs("mount", manifest, mp, "--cache", tmp_path / "cache", env=artifact.env, check=False)
    one_line_error(result, "escapes the mount")
    assert find_mount(mp) is None
    fault_case.record(f"refused at depth {depth}: one-line error, nothing mounted")


def test_symlinks_through_symlinks_inside_the_mount_resolve(artifact: Artifact, tmp_path: Path) -> None:
    files = {"a/b/c/data.bin": os.urandom(100_000), "top.txt": b"top\n"}
    manifest = patch(publish(artifact, tmp_path, files, "inside"), symlinks=[
        {"path": "a/b/c/up", "target": "../../.."},          # the mount root, from depth 3
        {"path": "a/b/c/again", "target": "up/a/b/c/data.bin"},
        {"path": "a/b/root-top", "target": "c/up/top.txt"},
        {"path": "x", "target": "a/b"},
        {"path": "y", "target": "x/../../top.txt"},          # lexically "../top.txt"
    ])
    with mounted(manifest, tmp_path / "deep" / "er" / "mnt", artifact.env, "--cache", tmp_path / "cache") as mp:
        assert (mp / "a/b/c/again").read_bytes() == files["a/b/c/data.bin"]
        assert (mp / "a/b/root-top").read_bytes() == b"top\n"
        assert (mp / "y").read_bytes() == b"top\n"
        assert os.path.realpath(mp / "a/b/c/up") == str(mp)


def test_lookup_below_a_file_is_enotdir(artifact: Artifact, tmp_path: Path) -> None:
    from mlfs.fuse.inodes import InodeTable
    from mlfs.fuse.operations import MlfsOperations
    from mlfs.manifest.validate import load_manifest

    table = InodeTable(load_manifest(artifact.manifest))
    ops = MlfsOperations(table, reader=None, uid=0, gid=0)
    config = next(n for n in table.nodes.values() if n.name == b"config.json")
    import pyfuse3
    import trio

    with pytest.raises(pyfuse3.FUSEError) as info:
        trio.run(ops.lookup, config.inode, b"x")
    assert info.value.errno == errno.ENOTDIR
    with mounted(artifact.manifest, tmp_path / "mnt", artifact.env, "--cache", tmp_path / "cache") as mp:
        with pytest.raises(OSError) as info:
            os.stat(mp / "config.json" / "x")
        assert info.value.errno == errno.ENOTDIR


def test_readdir_lists_dot_and_dotdot(artifact: Artifact, tmp_path: Path) -> None:
    with mounted(artifact.manifest, tmp_path / "mnt", artifact.env, "--cache", tmp_path / "cache") as mp:
        # ls -a prints what readdir returns, in order (-f: unsorted).
        listing = subprocess.run(["ls", "-a1f", mp / "nested"], capture_output=True, text=True, check=True)
        many = subprocess.run(["ls", "-a1f", mp / "many"], capture_output=True, text=True, check=True)
    assert listing.stdout.split() == [".", "..", "deeper", "link-up"]
    names = many.stdout.split()
    assert names[:2] == [".", ".."] and len(names) == 1002 and len(set(names)) == 1002


def test_reload_signals_only_the_mount_process(artifact: Artifact, tmp_path: Path, fault_case) -> None:
    from mlfs.procs import process_start_time

    env = dict(artifact.env, MLFS_RUN_DIR=str(tmp_path / "run"))
    with mounted(artifact.manifest, tmp_path / "mnt", env, "--cache", tmp_path / "cache") as mp:
        path = _wait_for_info(mp, env)
        assert "asked the mount process" in mlfs("reload", mp, env=env).stderr
        # Someone rewrites the published PID to a process of their choosing. The daemon
        # is stopped meanwhile so that its next publication cannot undo the forgery.
        daemon = daemon_pid(mp)
        bystander = subprocess.Popen(["sleep", "60"])
        os.kill(daemon, signal.SIGSTOP)
        try:
            doc = json.loads(path.read_text())
            doc.update(pid=bystander.pid, pid_start=process_start_time(bystander.pid))
            path.write_text(json.dumps(doc))
            result = mlfs("reload", mp, env=env, check=False)
            one_line_error(result, "holds no FUSE connection")
            assert bystander.poll() is None, "the bystander was signalled"
        finally:
            os.kill(daemon, signal.SIGCONT)
            bystander.send_signal(signal.SIGKILL)
            bystander.wait(10)
    fault_case.record("forged PID refused; bystander not signalled")


def _wait_for_info(mp: Path, env: dict[str, str]) -> Path:
    import time

    run = Path(env["MLFS_RUN_DIR"])
    deadline = time.monotonic() + 30
    while not any(run.glob("*.json")):
        assert time.monotonic() < deadline, "the mount never published its statistics"
        time.sleep(0.05)
    return next(run.glob("*.json"))
