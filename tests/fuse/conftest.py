"""Fixtures for FUSE tests: a real SeaweedFS holding a test artifact, real mounts."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xxhash
from safetensors.numpy import save_file

from tests.mlfs_cli import mlfs, mounted, require_fuse
from tests.servers import S3Server

CHUNK = 1 << 20  # small chunks make multi-chunk paths cheap to exercise


@dataclass
class Artifact:
    local: Path  # the bytes as uploaded
    manifest: Path
    bucket: str
    prefix: str
    server: S3Server

    @property
    def env(self) -> dict[str, str]:
        return self.server.env()


def write_tree(root: Path) -> None:
    rng = np.random.default_rng(1234)
    (root / "config.json").write_text(json.dumps({"model_type": "demo", "hidden": 256}))
    (root / "tokenizer.json").write_text(json.dumps({"vocab": {f"t{i}": i for i in range(2000)}}))
    tensors = {f"layer{i}.weight": rng.standard_normal((256, 512), dtype=np.float32) for i in range(12)}
    save_file(tensors, str(root / "model.safetensors"), metadata={"format": "np"})
    (root / "empty.bin").write_bytes(b"")
    (root / "exact.bin").write_bytes(rng.bytes(2 * CHUNK))  # ends on a chunk boundary
    (root / "odd.bin").write_bytes(rng.bytes(3 * CHUNK + 12345))
    sub = root / "nested" / "deeper"
    sub.mkdir(parents=True)
    (sub / "notes.txt").write_text("nested file\n")
    many = root / "many"
    many.mkdir()
    for i in range(1000):
        (many / f"f{i:04d}.txt").write_text(f"file {i}\n")


def upload_tree(client, root: Path, bucket: str, prefix: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    paths = [p for p in root.rglob("*") if p.is_file()]

    def put(p: Path) -> None:
        # put_object, not upload_file: the latter builds a thread pool per call.
        client.put_object(Bucket=bucket, Key=prefix + p.relative_to(root).as_posix(), Body=p.read_bytes())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, paths))


@pytest.fixture(scope="session")
def fuse_ready() -> None:
    require_fuse()


def build_artifact(server: S3Server, base: Path, bucket: str, symlinks: list[dict[str, str]]) -> Artifact:
    """The demo tree written under `base`, uploaded to `bucket` and described by a manifest."""
    local = base / "src"
    local.mkdir()
    write_tree(local)
    client = server.client()
    prefix = "models/demo/v1/"
    client.create_bucket(Bucket=bucket)
    upload_tree(client, local, bucket, prefix)
    manifest = base / "demo.json"
    mlfs("generate", f"s3://{bucket}/{prefix}", "-o", manifest, "--chunk-size", "1M", "-q", env=server.env())
    doc = json.loads(manifest.read_text())
    doc["symlinks"] = symlinks
    manifest.write_text(json.dumps(doc))
    return Artifact(local, manifest, bucket, prefix, server)


@pytest.fixture(scope="session")
def artifact(seaweedfs: S3Server, tmp_path_factory: pytest.TempPathFactory, fuse_ready: None) -> Artifact:
    # Symlinks exist only in manifests (S3 has none): add two, one into a subdirectory.
    return build_artifact(seaweedfs, tmp_path_factory.mktemp("artifact"), "artifacts", [
        {"path": "latest.safetensors", "target": "model.safetensors"},
        {"path": "nested/link-up", "target": "../config.json"},
    ])


@pytest.fixture
def mount_dir(tmp_path: Path) -> Path:
    mp = tmp_path / "mnt"
    mp.mkdir()
    return mp


@pytest.fixture
def demo_mount(artifact: Artifact, tmp_path: Path) -> Iterator[Path]:
    with mounted(artifact.manifest, tmp_path / "mnt", artifact.env, "--cache", tmp_path / "cache") as mp:
        yield mp


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def hash_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def corrupt_byte(path: Path, offset: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        b = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([b[0] ^ 0xFF]), offset)
    finally:
        os.close(fd)


GIB = 1 << 30


@pytest.fixture(scope="session")
def big_object(artifact: Artifact, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp("big")
    src = base / "big.bin"
    rng = np.random.default_rng(99)
    digest = xxhash.xxh3_128()
    with open(src, "wb") as fh:
        for _ in range(GIB // (64 << 20)):
            block = rng.bytes(64 << 20)
            digest.update(block)
            fh.write(block)
    client = artifact.server.client()
    client.create_bucket(Bucket="bigdata")
    client.upload_file(str(src), "bigdata", "big/v1/big.bin")
    manifest = base / "big.json"
    mlfs("generate", "s3://bigdata/big/v1/", "-o", manifest, "-q", env=artifact.env)
    src.unlink()  # only the digest is needed from here on
    return manifest, digest.hexdigest()
