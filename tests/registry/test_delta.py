"""Pushing v2 with one changed shard sends only that shard; mounting v2 after v1 fetches
only that shard's chunks. Counted by the servers themselves: SeaweedFS's received-bytes
and GET counters, the gateway's chunk store."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from tests.gateway.server import GatewayServer
from tests.mlfs_cli import MOUNT_PROBE_GETS, mlfs, mounted
from tests.registry.conftest import env_for, make_model_dir
from tests.servers import S3Server

pytestmark = [pytest.mark.s3, pytest.mark.fuse]
CHUNK = 16 << 20
CHANGED = "model-00002-of-00002.safetensors"


def received_bytes(server: S3Server, bucket: str) -> int:
    assert server.metrics_url
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    pattern = r'SeaweedFS_s3_bucket_traffic_received_bytes_total\{bucket="' + re.escape(bucket) + r'"\} (\S+)'
    m = re.search(pattern, text)
    return int(float(m.group(1))) if m else 0


def _push(directory: Path, name: str, label: str, bucket: str, env: dict[str, str], *extra: str) -> str:
    return mlfs("push", directory, "--name", name, "--version", label, "--bucket", bucket, *extra, env=env).stderr


def test_v2_push_sends_only_the_changed_shard_to_seaweedfs(seaweedfs: S3Server, registry_gateway: GatewayServer,
                                                          sw_bucket: str, tmp_path: Path) -> None:
    bucket = sw_bucket
    env = env_for(seaweedfs, registry_gateway)
    v1 = make_model_dir(tmp_path / "v1", seed=3, shard_mib=20)
    v2 = make_model_dir(tmp_path / "v2", seed=3, shard_mib=20, changed_shard=1)
    _push(v1, "delta", "v1", bucket, env)

    before = received_bytes(seaweedfs, bucket)
    out = _push(v2, "delta", "v2", bucket, env)
    manifest = seaweedfs.client().get_object(Bucket=bucket, Key="model-data/delta/v2/.mlfs/manifest.json")
    sent = received_bytes(seaweedfs, bucket) - before
    assert sent == (v2 / CHANGED).stat().st_size + manifest["ContentLength"], out
    assert "pushed 1 files" in out and "copied 4 server-side" in out

    # A second run (as after a killed push) finds everything in place and sends nothing.
    before = received_bytes(seaweedfs, bucket)
    out = _push(v2, "delta", "v2", bucket, env)
    assert received_bytes(seaweedfs, bucket) == before
    assert "5 already there" in out

    # Mount v1 and read it all, then v2 on the same store: only the changed shard's chunks are fetched.
    cache = tmp_path / "cache"
    with mounted("models:/delta/v1", tmp_path / "mnt1", env, "--cache", cache) as mp:
        for f in sorted(v1.iterdir()):
            assert (mp / f.name).read_bytes() == f.read_bytes()
    gets_before = seaweedfs.get_count(bucket)
    with mounted("models:/delta/v2", tmp_path / "mnt2", env, "--cache", cache, "--no-policy") as mp:
        for f in sorted(v2.iterdir()):
            assert (mp / f.name).read_bytes() == f.read_bytes()
        changed_chunks = -(-(v2 / CHANGED).stat().st_size // CHUNK)
        assert seaweedfs.get_count(bucket) - gets_before - MOUNT_PROBE_GETS == changed_chunks
        status = json.loads(mlfs("status", "--json", mp, env=env).stdout)
        assert status["manifest"]["version"] == "v2"


def test_v2_push_to_the_gateway_stores_only_the_changed_shard(registry_gateway: GatewayServer,
                                                              tmp_path: Path) -> None:
    env = env_for(registry_gateway)
    v1 = make_model_dir(tmp_path / "v1", seed=4, shard_mib=20)
    v2 = make_model_dir(tmp_path / "v2", seed=4, shard_mib=20, changed_shard=1)
    _push(v1, "delta-gw", "v1", "models", env)
    assert registry_gateway.data_dir is not None
    chunks = registry_gateway.data_dir / "store" / "chunks"

    def stored() -> set[str]:
        return {p.name for p in chunks.rglob("*") if p.is_file()}

    before = stored()
    out = _push(v2, "delta-gw", "v2", "models", env)
    new = stored() - before
    # The changed shard's chunks, and the chunk of the new manifest: nothing else arrived.
    assert len(new) == -(-(v2 / CHANGED).stat().st_size // CHUNK) + 1, out
    assert "pushed 1 files" in out


def test_killed_push_resumes_without_resending_finished_files(seaweedfs: S3Server, registry_gateway: GatewayServer,
                                                              sw_bucket: str, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    bucket = sw_bucket
    client = seaweedfs.client()
    env = env_for(seaweedfs, registry_gateway)
    local = make_model_dir(tmp_path / "m", seed=5, shard_mib=2, shards=1)
    with open(local / "big.bin", "wb") as fh:
        for _ in range(24):
            fh.write(os.urandom(16 << 20))  # 384 MiB: still in flight when the small files are done
    proc = subprocess.Popen([sys.executable, "-m", "mlfs", "push", str(local), "--name", "resumed", "--version", "v1",
                             "--bucket", bucket, "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    keys: set[str] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="model-data/resumed/")
                .get("Contents", [])}
        if "model-data/resumed/v1/config.json" in keys:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert "model-data/resumed/v1/big.bin" not in keys, "the push finished before it could be killed"
    assert "model-data/resumed/v1/.mlfs/manifest.json" not in keys

    # Parts that were in flight when the push died are still being counted for a moment.
    before, settle_deadline, steady = -1, time.monotonic() + 60, 0
    while steady < 3 and time.monotonic() < settle_deadline:
        now = received_bytes(seaweedfs, bucket)
        steady = steady + 1 if now == before else 0
        before = now
        time.sleep(0.5)
    listed = {o["Key"].rsplit("/", 1)[-1]: o["Size"]
              for o in client.list_objects_v2(Bucket=bucket, Prefix="model-data/resumed/v1/").get("Contents", [])}
    # An upload cut off by the kill may leave an object short of its file's size (the
    # S3 server keeps what it received): the push must send that file again.
    stored = {name for name, size in listed.items() if size == (local / name).stat().st_size}
    assert "big.bin" not in listed and "config.json" in stored
    out = _push(local, "resumed", "v1", bucket, env, "-q")
    sent = received_bytes(seaweedfs, bucket) - before
    assert f"{len(stored)} already there" in out, out
    manifest = client.head_object(Bucket=bucket, Key="model-data/resumed/v1/.mlfs/manifest.json")["ContentLength"]
    missing = sum(f.stat().st_size for f in local.iterdir() if f.name not in stored)
    assert sent == missing + manifest, out
    doc = json.loads(mlfs("models", "show", "models:/resumed/v1", "--json", env=env).stdout)
    assert (doc["status"], doc["objects"]) == ("READY", len(list(local.iterdir())))


def test_repush_of_a_version_pushed_without_block_digests(seaweedfs: S3Server, registry_gateway: GatewayServer,
                                                          sw_bucket: str, tmp_path: Path) -> None:
    """Pushes record 256 KiB block digests; a version whose manifest predates them (none)
    pushed again with the same files is accepted and keeps its manifest as it was."""
    bucket = sw_bucket
    client = seaweedfs.client()
    env = env_for(seaweedfs, registry_gateway)
    local = make_model_dir(tmp_path / "m", seed=7, shard_mib=2)
    key = "model-data/older/v1/.mlfs/manifest.json"
    _push(local, "older", "v1", bucket, env, "-q")
    pushed = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    shard = next(f for f in pushed["files"] if f["path"].endswith(".safetensors"))
    assert pushed["block_size"] == 256 << 10 and len(shard["blocks"]) == -(-shard["size"] // (256 << 10))

    # What an earlier mlfs pushed: the same manifest without block digests, registered as such.
    older = dict(pushed)
    older.pop("block_size")
    older["files"] = [{k: v for k, v in f.items() if k != "blocks"} for f in pushed["files"]]
    older_text = json.dumps(older, indent=2, sort_keys=True) + "\n"
    mlfs("models", "rm", "models:/older/v1", env=env)
    client.put_object(Bucket=bucket, Key=key, Body=older_text.encode())
    out = _push(local, "older", "v1", bucket, env)
    assert "already there" in out, out
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read().decode() == older_text
    assert mlfs("push", local, "--name", "older", "--version", "v1", "--bucket", bucket, "-q", env=env).returncode == 0

    # Other files under the same version are refused before anything is uploaded.
    config_key = "model-data/older/v1/config.json"
    config = client.get_object(Bucket=bucket, Key=config_key)["Body"].read()
    (local / "config.json").write_text("{}")
    refused = mlfs("push", local, "--name", "older", "--version", "v1", "--bucket", bucket, "-q", env=env,
                   check=False)
    assert refused.returncode == 1 and "already holds a different manifest" in refused.stderr, refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert client.get_object(Bucket=bucket, Key=config_key)["Body"].read() == config
