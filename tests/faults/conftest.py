"""Fixtures for fault cases: a small artifact on a real SeaweedFS, mounted through a
fault-injecting proxy (tests/faults/proxy.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.faults.proxy import Fault, FaultProxy
from tests.mlfs_cli import mlfs, require_fuse
from tests.servers import S3Server

CHUNK = 256 * 1024
BUCKET = "faults"


@dataclass
class FaultArtifact:
    data: bytes  # data.bin as uploaded
    config: bytes
    manifest: Path
    prefix: str
    server: S3Server

    def copy(self, tmp_path: Path, tag: str) -> FaultArtifact:
        """The same artifact under a fresh key (for cases that overwrite the object)."""
        client = self.server.client()
        prefix = f"copies/{tmp_path.name}-{tag}/"
        etags = {}
        for name, body in (("data.bin", self.data), ("config.json", self.config)):
            etags[name] = client.put_object(Bucket=BUCKET, Key=prefix + name, Body=body)["ETag"]
        doc = json.loads(self.manifest.read_text())
        for f in doc["files"]:
            f["source"]["key"] = prefix + f["path"]
            f["source"]["etag"] = etags[f["path"]]
        manifest = tmp_path / f"{tag}.json"
        manifest.write_text(json.dumps(doc))
        return FaultArtifact(self.data, self.config, manifest, prefix, self.server)


@pytest.fixture(scope="session")
def fault_artifact(seaweedfs: S3Server, tmp_path_factory: pytest.TempPathFactory) -> FaultArtifact:
    require_fuse()
    base = tmp_path_factory.mktemp("fault-artifact")
    data = np.random.default_rng(2024).bytes(6 * CHUNK + 54321)
    config = json.dumps({"model_type": "fault-demo"}).encode()
    client = seaweedfs.client()
    client.create_bucket(Bucket=BUCKET)
    prefix = "models/fault-demo/v1/"
    client.put_object(Bucket=BUCKET, Key=prefix + "data.bin", Body=data)
    client.put_object(Bucket=BUCKET, Key=prefix + "config.json", Body=config)
    manifest = base / "fault-demo.json"
    mlfs("generate", f"s3://{BUCKET}/{prefix}", "-o", manifest, "--chunk-size", "256K", "-q",
         "--no-prefetch", env=seaweedfs.env())
    return FaultArtifact(data, config, manifest, prefix, seaweedfs)


@pytest.fixture
def proxy_for(seaweedfs: S3Server) -> Iterator:
    """`proxy_for(*faults, seed=N)` starts a fault proxy in front of SeaweedFS."""
    started: list[FaultProxy] = []

    def make(*faults: Fault, seed: int = 0) -> FaultProxy:
        proxy = FaultProxy(seaweedfs.endpoint, list(faults), seed)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.close()


def wrong_bytes(got: bytes, want: bytes) -> int:
    """Bytes served that are not the artifact's (a short read is not a wrong byte)."""
    n = min(len(got), len(want))
    a = np.frombuffer(got[:n], dtype=np.uint8)
    b = np.frombuffer(want[:n], dtype=np.uint8)
    return int(np.count_nonzero(a != b)) + max(0, len(got) - len(want))


def read_sequential(path: Path, block: int = 128 * 1024) -> tuple[bytes, int | None]:
    """Read a file start to end; returns (bytes read, errno of the first failure or None)."""
    out = bytearray()
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            try:
                piece = os.read(fd, block)
            except OSError as exc:
                return bytes(out), exc.errno
            if not piece:
                return bytes(out), None
            out += piece
    finally:
        os.close(fd)


def read_random(path: Path, want: bytes, seed: int, reads: int = 40) -> tuple[int, int, list[int]]:
    """Seeded random preads; returns (bytes read, wrong bytes, errnos of failed reads)."""
    rng = np.random.default_rng(seed)
    total = wrong = 0
    errors = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(reads):
            off = int(rng.integers(0, len(want)))
            size = int(rng.integers(1, 200_000))
            try:
                got = os.pread(fd, size, off)
            except OSError as exc:
                errors.append(exc.errno)
                continue
            total += len(got)
            wrong += wrong_bytes(got, want[off:off + size])
    finally:
        os.close(fd)
    return total, wrong, errors
