"""Bad things happen: changed or corrupted objects, corrupted cache, bad manifests.

Whatever happens, the mount never returns bytes that do not match the manifest, and a
failing file does not take the rest of the mount down.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from mlfs.fuse.mountpoints import find_mount
from tests.fuse.conftest import Artifact, corrupt_byte, hash_file
from tests.mlfs_cli import MOUNT_PROBE_GETS, mlfs, mounted


def _private_copy(artifact: Artifact, tmp_path: Path, name: str, key_suffix: str) -> tuple[Path, str, bytes]:
    """Upload `name` under a fresh key and return (manifest, key, original bytes)."""
    client = artifact.server.client()
    data = (artifact.local / name).read_bytes()
    prefix = f"scratch/{tmp_path.name}-{key_suffix}/"
    client.put_object(Bucket=artifact.bucket, Key=prefix + name, Body=data)
    client.put_object(Bucket=artifact.bucket, Key=prefix + "config.json", Body=b'{"ok": true}')
    manifest = tmp_path / "m.json"
    mlfs("generate", f"s3://{artifact.bucket}/{prefix}", "-o", manifest, "--chunk-size", "1M", "-q",
         "--no-prefetch", env=artifact.env)
    return manifest, prefix + name, data


def _read_error(path: Path) -> int:
    with pytest.raises(OSError) as info:
        path.read_bytes()
    return info.value.errno


@pytest.mark.expect_warnings
def test_object_replaced_after_generate_gives_estale(artifact: Artifact, tmp_path: Path) -> None:
    manifest, key, data = _private_copy(artifact, tmp_path, "odd.bin", "replaced")
    client = artifact.server.client()
    client.put_object(Bucket=artifact.bucket, Key=key, Body=bytes(reversed(data)))
    with mounted(manifest, tmp_path / "mnt", artifact.env, "--cache", tmp_path / "cache") as mp:
        assert _read_error(mp / "odd.bin") == errno.ESTALE
        # The mount is alive and other files still read.
        assert json.loads((mp / "config.json").read_text()) == {"ok": True}
    assert not any((tmp_path / "cache" / "tmp").iterdir()), "temp files left behind"


@pytest.mark.expect_warnings
def test_object_corrupted_without_etag_gives_eio(artifact: Artifact, tmp_path: Path) -> None:
    """Without an ETag to send as If-Match, the per-chunk SHA-256 is what catches it."""
    manifest, key, data = _private_copy(artifact, tmp_path, "odd.bin", "corrupt")
    doc = json.loads(manifest.read_text())
    for f in doc["files"]:
        f["source"].pop("etag", None)
    manifest.write_text(json.dumps(doc))
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF  # one flipped byte in the middle chunk
    artifact.server.client().put_object(Bucket=artifact.bucket, Key=key, Body=bytes(bad))
    with mounted(manifest, tmp_path / "mnt", artifact.env, "--cache", tmp_path / "cache") as mp:
        fd = os.open(mp / "odd.bin", os.O_RDONLY)
        try:
            # Chunks before the corruption are fine and verified...
            assert os.pread(fd, 1 << 20, 0) == data[: 1 << 20]
            # ...the corrupted chunk is never served.
            with pytest.raises(OSError) as info:
                os.pread(fd, 4096, len(data) // 2 - 100)
            assert info.value.errno == errno.EIO
        finally:
            os.close(fd)
        assert (mp / "config.json").read_bytes() == b'{"ok": true}'
    chunks = list((tmp_path / "cache" / "chunks").rglob("*"))
    stored = {p.name for p in chunks if p.is_file()}
    assert stored <= set(sum((f["chunks"] for f in doc["files"]), [])), "unverified chunk stored"


@pytest.mark.expect_warnings
def test_corrupted_cache_chunk_is_quarantined_and_refetched(artifact: Artifact, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    want = hash_file(artifact.local / "odd.bin")
    with mounted(artifact.manifest, tmp_path / "mnt", artifact.env, "--cache", cache, "--wait-prefetch") as mp:
        assert hash_file(mp / "odd.bin") == want
    doc = json.loads(artifact.manifest.read_text())
    entry = next(f for f in doc["files"] if f["path"] == "odd.bin")
    victim = cache / "chunks" / entry["chunks"][1][:2] / entry["chunks"][1]
    corrupt_byte(victim, 1000)
    before = artifact.server.get_count(artifact.bucket)
    with mounted(artifact.manifest, tmp_path / "mnt", artifact.env, "--cache", cache) as mp:
        assert hash_file(mp / "odd.bin") == want
    refetched = artifact.server.get_count(artifact.bucket) - before - MOUNT_PROBE_GETS
    assert refetched == 1, "exactly the corrupt chunk is refetched"
    assert any(p.name.startswith(entry["chunks"][1]) for p in (cache / "quarantine").iterdir())
    assert hash_file(victim) == entry["chunks"][1]


def test_warm_cache_needs_no_requests(artifact: Artifact, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with mounted(artifact.manifest, tmp_path / "mnt", artifact.env, "--cache", cache, "--wait-prefetch") as mp:
        first = (mp / "model.safetensors").read_bytes()
    before = artifact.server.get_count(artifact.bucket)
    with mounted(artifact.manifest, tmp_path / "mnt", artifact.env, "--cache", cache) as mp:
        assert (mp / "model.safetensors").read_bytes() == first
        assert (mp / "many" / "f0007.txt").read_text() == "file 7\n"
    assert artifact.server.get_count(artifact.bucket) == before + MOUNT_PROBE_GETS


BAD_MANIFESTS = {
    "dotdot": ({"path": "../etc/passwd"}, "'..' components"),
    "absolute": ({"path": "/etc/passwd"}, "absolute paths"),
    "empty component": ({"path": "a//b"}, "empty path component"),
    "nul": ({"path": "a\x00b"}, "NUL"),
    "negative size": ({"size": -1}, "size must be"),
    "chunk count": ({"size": 5 << 20}, "chunk digests"),
    "bad digest": ({"sha256": "xyz"}, "sha256 must be"),
    "unknown key": ({"colour": "red"}, "unknown key"),
    "bad source": ({"source": {"url": "ftp://x/y"}}, "must start with s3://"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_mounts_nothing(artifact: Artifact, tmp_path: Path, case: str) -> None:
    patch, message = BAD_MANIFESTS[case]
    doc = json.loads(artifact.manifest.read_text())
    entry = next(f for f in doc["files"] if f["path"] == "config.json")
    entry.update(patch)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    mp = tmp_path / "mnt"
    mp.mkdir()
    result = mlfs("mount", bad, mp, "--cache", tmp_path / "cache", env=artifact.env, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlfs: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert find_mount(mp) is None


def test_duplicate_and_clashing_paths(artifact: Artifact, tmp_path: Path) -> None:
    doc = json.loads(artifact.manifest.read_text())
    config = next(f for f in doc["files"] if f["path"] == "config.json")
    for extra, message in ((dict(config), "duplicate path"), (dict(config, path="config.json/x"), "is a file")):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(dict(doc, files=doc["files"] + [extra])))
        result = mlfs("mount", bad, tmp_path, env=artifact.env, check=False)
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("problem", ["missing", "not empty", "a file", "no manifest file", "not json"])
def test_mountpoint_and_input_errors(artifact: Artifact, tmp_path: Path, problem: str) -> None:
    manifest = artifact.manifest
    mp = tmp_path / "mnt"
    expected = {
        "missing": "does not exist",
        "not empty": "is not empty",
        "a file": "not a directory",
        "no manifest file": "no such file",
        "not json": "not valid JSON",
    }[problem]
    if problem == "not empty":
        mp.mkdir()
        (mp / "something").write_text("x")
    elif problem == "a file":
        mp.write_text("x")
    elif problem == "no manifest file":
        mp.mkdir()
        manifest = tmp_path / "nope.json"
    elif problem == "not json":
        mp.mkdir()
        manifest = tmp_path / "bad.json"
        manifest.write_text("{not json")
    result = mlfs("mount", manifest, mp, "--cache", tmp_path / "cache", env=artifact.env, check=False)
    assert result.returncode == 1, result
    assert result.stderr.count("\n") == 1 and expected in result.stderr and "Traceback" not in result.stderr
    assert find_mount(mp) is None


def test_unreachable_endpoint_fails_reads_not_the_mount(artifact: Artifact, tmp_path: Path) -> None:
    # The S3 endpoint itself is checked before mounting (tests/ops/test_startup_failures.py);
    # a file whose own source is unreachable fails its reads, not the mount.
    doc = json.loads(artifact.manifest.read_text())
    entry = next(f for f in doc["files"] if f["path"] == "odd.bin")
    entry["source"] = {"url": "http://127.0.0.1:9/artifacts/models/demo/v1/odd.bin"}
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(doc))
    env = dict(artifact.env, AWS_MAX_ATTEMPTS="1")
    cache = tmp_path / "cache"
    with mounted(manifest, tmp_path / "mnt", env, "--cache", cache, "-o", "read_ahead_max=0") as mp:
        assert _read_error(mp / "odd.bin") == errno.EIO
        assert sorted(os.listdir(mp / "nested")) == ["deeper", "link-up"]
    shutil.rmtree(cache)
