"""Mounts on top of the embedded gateway: shared chunk store, and plain S3 access."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.conftest import all_files, write_tree
from tests.gateway.server import GatewayServer, start_gateway
from tests.mlfs_cli import mlfs, mounted

MIB = 1 << 20


@pytest.fixture
def gateway_with_model(tmp_path: Path, fuse_ready: None) -> Iterator[tuple[GatewayServer, Path]]:
    server = start_gateway(tmp_path / "gw")
    try:
        local = tmp_path / "src"
        local.mkdir()
        write_tree(local)
        # A multipart upload with 8 MiB parts: the gateway re-cuts it into 16 MiB chunks.
        (local / "big.bin").write_bytes(os.urandom(40 * MIB + 5))
        client = server.client()
        client.create_bucket(Bucket="models")
        for p in sorted(local.rglob("*")):
            if p.is_file() and "many" not in p.parts:
                client.upload_file(str(p), "models", "m/demo/v1/" + p.relative_to(local).as_posix())
        yield server, local
    finally:
        server.stop()


def _expected(local: Path) -> list[str]:
    return [p for p in all_files(local) if not p.startswith("many/")]


def test_generate_uses_gateway_digests(gateway_with_model, tmp_path: Path) -> None:
    server, _local = gateway_with_model
    fast = tmp_path / "fast.json"
    result = mlfs("generate", "s3://models/m/demo/v1/", "-o", fast, env=server.env())
    assert "no re-hashing" in result.stderr
    slow = mlfs("generate", "s3://models/m/demo/v1/", "--rehash", "-q", env=server.env()).stdout
    digests = {f["path"]: (f["sha256"], f["chunks"]) for f in json.loads(fast.read_text())["files"]}
    assert digests == {f["path"]: (f["sha256"], f["chunks"]) for f in json.loads(slow)["files"]}


def test_mount_reads_gateway_objects_over_s3_and_from_the_shared_store(gateway_with_model, tmp_path: Path) -> None:
    server, local = gateway_with_model
    manifest = tmp_path / "m.json"
    mlfs("generate", "s3://models/m/demo/v1/", "-o", manifest, "-q", env=server.env())
    expected = _expected(local)

    # Another machine: its own chunk store, bytes over S3, verified.
    with mounted(manifest, tmp_path / "mnt", server.env(), "--cache", tmp_path / "own-cache") as mp:
        for rel in expected:
            assert (mp / rel).read_bytes() == (local / rel).read_bytes(), rel
    assert any((tmp_path / "own-cache" / "chunks").rglob("*")), "nothing was fetched over S3"

    # Same machine: the gateway's own store. The gateway is stopped first, so any byte
    # that reaches the reader came from the shared store with no request at all.
    store = server.data_dir / "store"
    server.stop()
    with mounted(manifest, tmp_path / "mnt", server.env(), "--cache", store) as mp:
        for rel in expected:
            assert (mp / rel).read_bytes() == (local / rel).read_bytes(), rel
