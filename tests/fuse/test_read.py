"""Reading a real mount with ordinary syscalls: every byte, every access style."""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import random
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from tests.fuse.conftest import Artifact, all_files
from tests.mlfs_cli import mlfs, mounted


def test_every_byte_of_every_file_matches(artifact: Artifact, demo_mount: Path) -> None:
    expected = all_files(artifact.local)
    assert all_files(demo_mount) == sorted(expected + ["latest.safetensors"]) or \
        set(expected) <= set(all_files(demo_mount))
    for rel in expected:
        assert (demo_mount / rel).read_bytes() == (artifact.local / rel).read_bytes(), rel


def test_every_byte_through_botocore(artifact: Artifact, tmp_path: Path) -> None:
    # Mounts configured by environment keys use mlfs's own SigV4 client; the botocore
    # path (profiles, roles, config files) serves the same bytes.
    env = dict(artifact.env, MLFS_S3_CLIENT="botocore")
    with mounted(artifact.manifest, tmp_path / "mnt", env, "--cache", tmp_path / "cache") as mp:
        for rel in all_files(artifact.local):
            assert (mp / rel).read_bytes() == (artifact.local / rel).read_bytes(), rel
        assert json.loads(mlfs("status", "--json", mp, env=env).stdout)["s3"]["client"] == "botocore"


def test_a_mount_configured_by_environment_keys_signs_its_own_requests(artifact: Artifact, demo_mount: Path) -> None:
    assert (demo_mount / "config.json").read_bytes() == (artifact.local / "config.json").read_bytes()
    doc = json.loads(mlfs("status", "--json", demo_mount, env=artifact.env).stdout)
    assert doc["s3"] == {"endpoint": artifact.server.endpoint, "client": "sigv4"}


def test_attributes_are_read_only_and_sized(artifact: Artifact, demo_mount: Path) -> None:
    st = os.stat(demo_mount / "odd.bin")
    assert st.st_size == (artifact.local / "odd.bin").stat().st_size
    assert stat.S_ISREG(st.st_mode) and not st.st_mode & 0o222
    assert stat.S_ISDIR(os.stat(demo_mount / "nested").st_mode)
    assert os.stat(demo_mount / "empty.bin").st_size == 0
    assert (demo_mount / "empty.bin").read_bytes() == b""
    vfs = os.statvfs(demo_mount)
    assert vfs.f_bfree == 0 and vfs.f_blocks > 0


def test_random_preads_match(artifact: Artifact, demo_mount: Path) -> None:
    rng = random.Random(7)
    for name in ("odd.bin", "exact.bin", "model.safetensors"):
        want = (artifact.local / name).read_bytes()
        fd = os.open(demo_mount / name, os.O_RDONLY)
        try:
            for _ in range(200):
                off = rng.randrange(0, len(want) + 10)
                size = rng.choice([1, 17, 4096, 65536, 1 << 20, 3 << 20])
                assert os.pread(fd, size, off) == want[off:off + size], (name, off, size)
        finally:
            os.close(fd)


def test_sixteen_concurrent_readers(artifact: Artifact, demo_mount: Path) -> None:
    want = hashlib.sha256((artifact.local / "odd.bin").read_bytes()).hexdigest()
    results: list[str] = []
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        try:
            h = hashlib.sha256()
            with open(demo_mount / "odd.bin", "rb", buffering=0) as fh:
                step = [4096, 65536, 131072, 1 << 20][seed % 4]
                while block := fh.read(step):
                    h.update(block)
            results.append(h.hexdigest())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and results == [want] * 16


def test_mmap_and_safetensors_through_the_mount(artifact: Artifact, demo_mount: Path) -> None:
    with open(demo_mount / "model.safetensors", "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert m[: 1 << 16] == (artifact.local / "model.safetensors").read_bytes()[: 1 << 16]
    with safe_open(demo_mount / "model.safetensors", "np") as mounted, \
            safe_open(artifact.local / "model.safetensors", "np") as local:
        assert sorted(mounted.keys()) == sorted(local.keys())
        for key in local.keys():  # noqa: SIM118 - safe_open has no __iter__
            np.testing.assert_array_equal(mounted.get_tensor(key), local.get_tensor(key))


def test_readdir_of_a_thousand_files(demo_mount: Path) -> None:
    names = os.listdir(demo_mount / "many")
    assert len(names) == 1000 and len(set(names)) == 1000
    assert sorted(names) == [f"f{i:04d}.txt" for i in range(1000)]
    with os.scandir(demo_mount / "many") as it:
        sizes = {e.name: e.stat().st_size for e in it}
    assert sizes["f0999.txt"] == len("file 999\n")


def test_symlinks(artifact: Artifact, demo_mount: Path) -> None:
    link = demo_mount / "latest.safetensors"
    assert link.is_symlink() and os.readlink(link) == "model.safetensors"
    assert link.read_bytes()[:64] == (artifact.local / "model.safetensors").read_bytes()[:64]
    assert os.readlink(demo_mount / "nested" / "link-up") == "../config.json"
    assert (demo_mount / "nested" / "link-up").read_text() == (artifact.local / "config.json").read_text()


@pytest.mark.parametrize("action", ["write", "create", "mkdir", "unlink", "rename", "chmod", "truncate"])
def test_writes_answer_erofs(demo_mount: Path, action: str) -> None:
    target = demo_mount / "config.json"
    ops = {
        "write": lambda: open(target, "r+b"),
        "create": lambda: open(demo_mount / "new.txt", "wb"),
        "mkdir": lambda: os.mkdir(demo_mount / "newdir"),
        "unlink": lambda: os.unlink(target),
        "rename": lambda: os.rename(target, demo_mount / "renamed.json"),
        "chmod": lambda: os.chmod(target, 0o644),
        "truncate": lambda: os.truncate(target, 0),
    }
    with pytest.raises(OSError) as info:
        ops[action]()
    assert info.value.errno == errno.EROFS


def test_missing_names(demo_mount: Path) -> None:
    for _ in range(3):  # the second and third hit the kernel's negative cache
        assert not (demo_mount / "nope.json").exists()
    with pytest.raises(FileNotFoundError):
        open(demo_mount / "nested" / "nope")
    with pytest.raises(NotADirectoryError):
        os.listdir(demo_mount / "config.json")
