"""Random reads of a manifest with block digests fetch and verify one block, not the
whole chunk (real SeaweedFS, real mount)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from tests.fuse.conftest import CHUNK, Artifact
from tests.mlfs_cli import mlfs, mounted

BLOCK = 64 * 1024


def _blocked_manifest(artifact: Artifact, tmp_path: Path, bucket: str, prefix: str) -> Path:
    manifest = tmp_path / "blocks.json"
    # No prefetch at mount: every request the mount makes is one of the test's reads.
    mlfs("generate", f"s3://{bucket}/{prefix}", "-o", manifest, "--chunk-size", "1M", "--block-size", "64K",
         "--no-prefetch", "-q", env=artifact.env)
    return manifest


def test_generate_records_block_digests(artifact: Artifact, tmp_path: Path) -> None:
    doc = json.loads(_blocked_manifest(artifact, tmp_path, artifact.bucket, artifact.prefix).read_text())
    assert doc["block_size"] == BLOCK
    odd = next(f for f in doc["files"] if f["path"] == "odd.bin")
    data = (artifact.local / "odd.bin").read_bytes()
    assert odd["blocks"] == [hashlib.sha256(data[i:i + BLOCK]).hexdigest() for i in range(0, len(data), BLOCK)]
    # Chunk digests are the same as without blocks.
    plain = json.loads(artifact.manifest.read_text())
    assert odd["chunks"] == next(f for f in plain["files"] if f["path"] == "odd.bin")["chunks"]


def _read_at(artifact: Artifact, manifest: Path, tmp_path: Path, offsets: list[int]) -> tuple[list[bytes], dict]:
    """4 KiB of odd.bin at each offset through a fresh mount; the mount's fetch counters."""
    with mounted(manifest, tmp_path / "mnt", artifact.env, "--cache", tmp_path / "cache", "--no-policy") as mp:
        fd = os.open(mp / "odd.bin", os.O_RDONLY)
        try:
            got = [os.pread(fd, 4096, o) for o in offsets]
        finally:
            os.close(fd)
        return got, json.loads(mlfs("status", "--json", mp, env=artifact.env).stdout)["fetch"]


def test_random_reads_fetch_single_blocks(artifact: Artifact, tmp_path: Path) -> None:
    manifest = _blocked_manifest(artifact, tmp_path, artifact.bucket, artifact.prefix)
    data = (artifact.local / "odd.bin").read_bytes()
    rng = random.Random(5)
    # Jumps between the chunks after the first (a first read in the first chunk would
    # begin a scan), one of them across a block border.
    offsets = [2 * CHUNK + rng.randrange(0, CHUNK - 4096), CHUNK + 3 * BLOCK - 100, 3 * CHUNK + 100]
    got, fetch = _read_at(artifact, manifest, tmp_path, offsets)
    assert got == [data[o:o + 4096] for o in offsets]
    blocks = {o // BLOCK for o in offsets} | {(o + 4095) // BLOCK for o in offsets}
    # Only blocks were fetched: at least the ones read (the kernel may read a little
    # around each offset), far from the three 1 MiB chunks the reads touch.
    assert fetch["block_requests"] == fetch["requests"] and len(blocks) <= fetch["requests"] <= 2 * len(blocks)
    assert fetch["bytes"] <= 2 * len(blocks) * BLOCK


def test_a_chunk_read_at_random_again_and_again_is_fetched_whole(artifact: Artifact, tmp_path: Path) -> None:
    from mlfs.reader import BLOCK_READS_PER_CHUNK

    manifest = _blocked_manifest(artifact, tmp_path, artifact.bucket, artifact.prefix)
    data = (artifact.local / "odd.bin").read_bytes()
    # Reads two blocks apart inside the third chunk: every one a jump, so a random reader's.
    offsets = [2 * CHUNK + b * BLOCK + 100 for b in (1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14)]
    assert len(offsets) > BLOCK_READS_PER_CHUNK and 16 * BLOCK == CHUNK
    got, fetch = _read_at(artifact, manifest, tmp_path, offsets)
    assert got == [data[o:o + 4096] for o in offsets]
    # The first reads went by block; then the chunk was fetched once, and the rest were local.
    assert fetch["requests"] - fetch["block_requests"] == 1, fetch
    assert 1 <= fetch["block_requests"] <= BLOCK_READS_PER_CHUNK, fetch


@pytest.mark.expect_warnings
def test_a_block_changed_in_s3_is_refused(artifact: Artifact, tmp_path: Path) -> None:
    client = artifact.server.client()
    client.create_bucket(Bucket="blocks-changed")
    data = (artifact.local / "odd.bin").read_bytes()
    client.put_object(Bucket="blocks-changed", Key="m/v1/odd.bin", Body=data)
    manifest = _blocked_manifest(artifact, tmp_path, "blocks-changed", "m/v1/")
    # Same size, one byte different in the third chunk: the ETag changes too.
    changed = bytearray(data)
    changed[2 * CHUNK + 5] ^= 0xFF
    client.put_object(Bucket="blocks-changed", Key="m/v1/odd.bin", Body=bytes(changed))
    with mounted(manifest, tmp_path / "mnt", artifact.env, "--cache", tmp_path / "cache", "--no-policy") as mp:
        fd = os.open(mp / "odd.bin", os.O_RDONLY)
        try:
            with pytest.raises(OSError) as info:
                os.pread(fd, 4096, 2 * CHUNK)
        finally:
            os.close(fd)
    # The manifest names the object's ETag: the changed object is refused as stale.
    assert info.value.errno == errno.ESTALE
