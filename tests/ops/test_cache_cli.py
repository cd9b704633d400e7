"""`mlfs cache warm|ls|du|verify|gc` on a real store filled from SeaweedFS."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fuse.conftest import Artifact, corrupt_byte
from tests.mlfs_cli import mlfs, mounted
from tests.servers import free_port


def test_warm_then_mount_fetches_nothing_verify_and_gc(artifact: Artifact, tmp_path: Path) -> None:
    doc = json.loads(artifact.manifest.read_text())
    doc["files"] = [f for f in doc["files"] if f["path"] in ("odd.bin", "exact.bin", "config.json")]
    doc["symlinks"], doc["prefetch"] = [], []
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(doc))
    chunks = {d for f in doc["files"] for d in f["chunks"]}
    total = sum(f["size"] for f in doc["files"])
    cache = tmp_path / "cache"

    warmed = mlfs("cache", "warm", manifest, "--cache", cache, env=artifact.env)
    assert warmed.stderr.strip().splitlines()[-1] == f"mlfs: demo v1: {len(chunks)}/{len(chunks)} chunks in {cache}"
    held = json.loads(mlfs("cache", "ls", manifest, "--cache", cache, "--json", env=artifact.env).stdout)
    assert held == [{"name": "demo", "version": "v1", "chunks": len(chunks), "chunks_present": len(chunks),
                     "bytes": total, "bytes_present": total}]
    du = json.loads(mlfs("cache", "du", "--cache", cache, "--json", env=artifact.env).stdout)
    assert (du["chunks"], du["bytes"], du["quarantined"]) == (len(chunks), total, 0)

    # A warmed store serves the mount without a single GET.
    with mounted(manifest, tmp_path / "mnt", artifact.env, "--cache", cache, "--no-policy") as mp:
        before = artifact.server.get_count(artifact.bucket)
        for name in ("odd.bin", "exact.bin", "config.json"):
            assert (mp / name).read_bytes() == (artifact.local / name).read_bytes()
        assert artifact.server.get_count(artifact.bucket) == before
        assert json.loads(mlfs("status", "--json", mp, env=artifact.env).stdout)["fetch"]["requests"] == 0

    # With every chunk local, an unreachable S3 does not stop the mount (an offline node).
    # The daemon finds that out after it forked; the terminal still hears why.
    offline = dict(artifact.env, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    said: list[str] = []
    with mounted(manifest, tmp_path / "mnt", offline, "--cache", cache, "--no-policy", said=said) as mp:
        assert (mp / "exact.bin").read_bytes() == (artifact.local / "exact.bin").read_bytes()
    assert said == ["mlfs: S3 cannot be used, but the cache holds every chunk: mounting from the cache"]

    assert mlfs("cache", "verify", "--cache", cache, env=artifact.env).returncode == 0
    victim = sorted(chunks)[0]
    corrupt_byte(cache / "chunks" / victim[:2] / victim, 100)
    bad = mlfs("cache", "verify", "--cache", cache, env=artifact.env, check=False)
    assert bad.returncode == 1
    assert f"mlfs: chunk {victim} did not match its SHA-256; quarantined" in bad.stderr
    assert not (cache / "chunks" / victim[:2] / victim).exists()

    mlfs("cache", "gc", "--cache", cache, "--to", "0", env=artifact.env)
    du = json.loads(mlfs("cache", "du", "--cache", cache, "--json", env=artifact.env).stdout)
    assert (du["chunks"], du["bytes"]) == (0, 0)

    missing = mlfs("cache", "du", "--cache", tmp_path / "nowhere", env=artifact.env, check=False)
    assert missing.returncode == 1 and missing.stderr.strip() == f"mlfs: no chunk store at {tmp_path / 'nowhere'} (give --cache DIR)"
