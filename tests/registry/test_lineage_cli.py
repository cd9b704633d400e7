"""Datasets with splits, lineage both ways (from manifests' metadata.lineage, as the
preprocessing runner writes it, and from `push --trained-on`), mounting a dataset split,
`registry scan` of an existing SeaweedFS bucket, and the CLI's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.gateway.server import GatewayServer
from tests.mlfs_cli import mlfs, mounted
from tests.registry.conftest import env_for, make_model_dir, mlfs_json
from tests.servers import S3Server

pytestmark = [pytest.mark.s3]


def _dataset(root: Path, splits: dict[str, int], tag: str) -> Path:
    for split, count in splits.items():
        (root / split).mkdir(parents=True)
        for i in range(count):
            (root / split / f"{i:03d}.jpg").write_bytes(f"{tag} {split} image {i}".encode() * 50)
    return root


def _write_with_lineage(server: GatewayServer, bucket: str, prefix: str, local: Path, lineage: dict,
                        tmp: Path) -> None:
    """What the preprocessing runner does: outputs first, then the manifest with metadata.lineage."""
    client = server.client()
    for f in sorted(local.rglob("*")):
        if f.is_file():
            client.put_object(Bucket=bucket, Key=prefix + f.relative_to(local).as_posix(), Body=f.read_bytes())
    out = tmp / "derived.json"
    mlfs("generate", f"s3://{bucket}/{prefix}", "-o", out, "-q", env=env_for(server))
    doc = json.loads(out.read_text())
    doc["metadata"]["lineage"] = lineage
    client.put_object(Bucket=bucket, Key=prefix + ".mlfs/manifest.json", Body=json.dumps(doc).encode())


@pytest.mark.fuse
def test_datasets_splits_lineage_and_split_mount(registry_gateway: GatewayServer, tmp_path: Path,
                                                  fuse_ready: None) -> None:
    env = env_for(registry_gateway)
    registry_gateway.client().create_bucket(Bucket="data")
    raw = _dataset(tmp_path / "raw", {"train": 5, "val": 2}, "raw")
    mlfs("push", raw, "--name", "raw", "--version", "v1", "--bucket", "data", "--prefix", "datasets", "-q", env=env)
    shown = mlfs_json("datasets", "show", "datasets:/raw/v1", env=env)
    assert shown["splits"] == {"train": {"objects": 5, "bytes": sum(f.stat().st_size for f in (raw / "train").iterdir())},
                               "val": {"objects": 2, "bytes": sum(f.stat().st_size for f in (raw / "val").iterdir())}}

    pipeline = {"name": "imagenet-224", "digest": "sha256:" + "ab" * 32}
    _write_with_lineage(registry_gateway, "data", "datasets/raw-224/v1/",
                        _dataset(tmp_path / "small", {"train": 3}, "resized"),
                        {"inputs": [{"uri": "s3://data/datasets/raw/v1/", "name": "raw", "version": "v1"}],
                         "pipeline": pipeline}, tmp_path)
    mlfs("push", make_model_dir(tmp_path / "model", shard_mib=1, shards=1), "--name", "vision", "--version", "v1",
         "--trained-on", "datasets:/raw-224/v1", "-q", env=env)

    derived = mlfs_json("lineage", "datasets:/raw-224/v1", env=env)
    assert [(i["kind"], i["name"], i["version"]) for i in derived["inputs"]] == [("dataset", "raw", "v1")]
    assert derived["pipeline"] == pipeline
    assert [(o["kind"], o["name"]) for o in derived["used_by"]] == [("model", "vision")]
    model = mlfs_json("lineage", "models:/vision/1", env=env)
    assert [(i["name"], i["version"]) for i in model["inputs"]] == [("raw-224", "v1")]
    upstream = mlfs_json("lineage", "datasets:/raw/v1", env=env)
    assert [(o["name"], o["label"]) for o in upstream["used_by"]] == [("raw-224", "v1")]
    human = mlfs("lineage", "datasets:/raw-224/v1", env=env).stdout
    assert "imagenet-224" in human and "used by model vision" in human

    listing = mlfs_json("datasets", "ls", env=env)
    assert {a["name"] for a in listing} >= {"raw", "raw-224"}

    with mounted("datasets:/raw/v1/val", tmp_path / "mnt", env, "--cache", tmp_path / "cache") as mp:
        assert sorted(p.name for p in mp.iterdir()) == ["000.jpg", "001.jpg"]
        assert (mp / "001.jpg").read_bytes() == (raw / "val" / "001.jpg").read_bytes()


def test_scan_registers_an_existing_bucket(seaweedfs: S3Server, registry_gateway: GatewayServer, sw_bucket: str,
                                          tmp_path: Path) -> None:
    bucket = sw_bucket
    client = seaweedfs.client()
    local = make_model_dir(tmp_path / "m", shard_mib=1, shards=1)
    for f in sorted(local.iterdir()):
        client.put_object(Bucket=bucket, Key=f"scan/models/scanned/v1/{f.name}", Body=f.read_bytes())
    client.put_object(Bucket=bucket, Key="scan/models/scanned/v10/config.json",
                      Body=(local / "config.json").read_bytes())
    client.put_object(Bucket=bucket, Key="scan/unrelated/file.txt", Body=b"not an artifact")
    env = env_for(seaweedfs, registry_gateway)
    doc = mlfs_json("registry", "scan", f"s3://{bucket}/scan/", env=env)
    assert doc["failed"] == []
    got = {v["label"]: v for v in doc["registered"]}
    assert sorted(got) == ["v1", "v10"]
    assert got["v1"]["formats"] == ["hf-config", "json", "onnx", "safetensors"]
    assert got["v1"]["objects"] == len(list(local.iterdir()))
    assert got["v10"]["objects"] == 1  # v1 is a directory: v10's objects are not v1's
    manifest = json.loads(client.get_object(Bucket=bucket, Key="scan/models/scanned/v1/.mlfs/manifest.json")["Body"].read())
    assert sorted(f["path"] for f in manifest["files"]) == sorted(f.name for f in local.iterdir())
    # The objects were read to hash them: block digests as generate records them.
    shard = next(f for f in manifest["files"] if f["path"].endswith(".safetensors"))
    assert manifest["block_size"] == 256 << 10 and len(shard["blocks"]) == -(-shard["size"] // (256 << 10))
    # Scanning again registers the same versions (same manifests), nothing new.
    again = mlfs_json("registry", "scan", f"s3://{bucket}/scan/models/", env=env)
    assert sorted(v["version"] for v in again["registered"]) == sorted(v["version"] for v in doc["registered"])


def test_gateway_manifest_prefix_is_a_directory(registry_gateway: GatewayServer, tmp_path: Path) -> None:
    client = registry_gateway.client()
    client.put_object(Bucket="models", Key="plain/m/v1/a.bin", Body=b"a")
    client.put_object(Bucket="models", Key="plain/m/v10/b.bin", Body=b"b")
    client.put_object(Bucket="models", Key="plain/m/v1/.mlfs/note.json", Body=b"{}")
    doc = json.loads(mlfs("generate", "s3://models/plain/m/v1", env=env_for(registry_gateway)).stdout)
    assert [f["path"] for f in doc["files"]] == ["a.bin"]


def test_cli_errors_are_one_line(registry_gateway: GatewayServer, tmp_path: Path) -> None:
    env = env_for(registry_gateway)
    (tmp_path / "mnt").mkdir()
    cases = [
        (("mount", "models:/no-such-model@production", tmp_path / "mnt"), "no-such-model"),
        (("mount", "models:/bad name", tmp_path / "mnt"), "expected models:/NAME/VERSION"),
        (("models", "show", "models:/no-such-model/1"), "does not exist"),
        (("models", "promote", "models:/no-such-model/1", "production"), "does not exist"),
        (("push", tmp_path / "missing-dir", "--name", "x", "--version", "v1"), "not a directory"),
    ]
    for args, words in cases:
        result = mlfs(*args, env=env, check=False)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and words in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not any((tmp_path / "mnt").iterdir())
    env_without = {k: v for k, v in env.items() if k not in ("AWS_ENDPOINT_URL", "MLFS_REGISTRY_URL")}
    result = mlfs("models", "ls", env=env_without, check=False)
    assert result.returncode == 1 and "no registry" in result.stderr


def test_push_claims_a_version_seen_only_as_unregistered_objects(registry_gateway: GatewayServer,
                                                                 tmp_path: Path) -> None:
    env = env_for(registry_gateway)
    local = make_model_dir(tmp_path / "m", shard_mib=1, shards=1)
    registry_gateway.client().put_object(Bucket="models", Key="models/claimed/v1/config.json",
                                         Body=(local / "config.json").read_bytes())
    assert mlfs_json("models", "show", "models:/claimed/v1", env=env)["status"] == "PENDING_REGISTRATION"
    doc = mlfs_json("push", local, "--name", "claimed", "--version", "v1", "-q", env=env)
    assert (doc["status"], doc["uri"]) == ("READY", "s3://models/model-data/claimed/v1/")
    assert doc["formats"] == ["hf-config", "json", "onnx", "safetensors"]


def test_preprocessing_run_of_a_split_records_lineage(registry_gateway: GatewayServer, tmp_path: Path) -> None:
    """The real preprocessing runner writes one split and its manifest with metadata.lineage;
    the registry links the derived dataset version to its source version and pipeline."""
    from tests.preprocess.conftest import jpeg, preprocess_run, upload

    env = env_for(registry_gateway)
    client = registry_gateway.client()
    client.create_bucket(Bucket="pre")
    upload(client, "pre", {f"datasets/photos/v1/train/{i}.jpg": jpeg(i) for i in range(4)})
    result = preprocess_run(env, "imagenet-224", "s3://pre/datasets/photos/v1/train/",
                            "--out", "s3://pre/datasets/photos-224/v1/train/", "--cache", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    doc = mlfs_json("lineage", "datasets:/photos-224/v1", env=env)
    assert [(i["kind"], i["name"], i["version"]) for i in doc["inputs"]] == [("dataset", "photos", "v1")]
    assert doc["pipeline"]["name"] == "imagenet-224" and doc["pipeline"]["digest"].startswith("sha256:")
    shown = mlfs_json("datasets", "show", "datasets:/photos-224/v1", env=env)
    assert all(".mlfs" not in f["path"] for f in shown["files"]) and len(shown["files"]) >= 4
    upstream = mlfs_json("lineage", "datasets:/photos/v1", env=env)
    assert [o["name"] for o in upstream["used_by"]] == ["photos-224"]
