"""`mlfs generate` against real SeaweedFS: S3 prefix, local mirror, MLArtifactFS import."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.mlfs_cli import mlfs
from tests.servers import S3Server

CHUNK = 1 << 20


@pytest.fixture(scope="module")
def model(seaweedfs: S3Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    local = tmp_path_factory.mktemp("gen") / "model"
    (local / "sub").mkdir(parents=True)
    (local / "config.json").write_text('{"a": 1}')
    (local / "weights.bin").write_bytes(os.urandom(3 * CHUNK + 77))
    (local / "sub" / "empty").write_bytes(b"")
    client = seaweedfs.client()
    client.create_bucket(Bucket="gen")
    for p in sorted(local.rglob("*")):
        if p.is_file():
            client.put_object(Bucket="gen", Key="models/m/v2/" + p.relative_to(local).as_posix(), Body=p.read_bytes())
    return local, "s3://gen/models/m/v2/"


def expected_digests(local: Path) -> dict[str, tuple[str, list[str]]]:
    out = {}
    for p in sorted(local.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            chunks = [hashlib.sha256(data[i:i + CHUNK]).hexdigest() for i in range(0, len(data), CHUNK)]
            out[p.relative_to(local).as_posix()] = (hashlib.sha256(data).hexdigest(), chunks)
    return out


def digests(doc: dict) -> dict[str, tuple[str, list[str]]]:
    return {f["path"]: (f["sha256"], f["chunks"]) for f in doc["files"]}


def test_generate_from_prefix_to_stdout(seaweedfs: S3Server, model: tuple[Path, str]) -> None:
    local, url = model
    result = mlfs("generate", url, "--chunk-size", "1M", "-q", env=seaweedfs.env())
    doc = json.loads(result.stdout)
    assert doc["schema"] == "mlfs.manifest/1" and (doc["name"], doc["version"]) == ("m", "v2")
    assert digests(doc) == expected_digests(local)
    weights = next(f for f in doc["files"] if f["path"] == "weights.bin")
    assert weights["source"]["bucket"] == "gen" and weights["source"]["key"] == "models/m/v2/weights.bin"
    assert weights["source"]["etag"]
    assert doc["prefetch"] == ["*.json", "*.txt", "*.yaml", "*.model", "tokenizer*"]


def test_generate_from_local_mirror(seaweedfs: S3Server, model: tuple[Path, str], tmp_path: Path) -> None:
    local, url = model
    out = tmp_path / "m.json"
    mlfs("generate", url, "--local", local, "--chunk-size", "1M", "-o", out, "--name", "x",
         "--version", "7", "--prefetch", "*.bin", env=seaweedfs.env())
    doc = json.loads(out.read_text())
    assert digests(doc) == expected_digests(local) and doc["name"] == "x" and doc["prefetch"] == ["*.bin"]
    changed = tmp_path / "changed"
    (changed / "sub").mkdir(parents=True)
    for p in local.rglob("*"):
        if p.is_file():
            (changed / p.relative_to(local)).write_bytes(p.read_bytes())
    (changed / "config.json").write_text('{"a": 2}')  # same size, different bytes
    bad = mlfs("generate", url, "--local", changed, "-q", env=seaweedfs.env(), check=False)
    assert bad.returncode == 1 and "config.json" in bad.stderr and "differs" in bad.stderr


def test_import_mlartifactfs_manifest(seaweedfs: S3Server, model: tuple[Path, str], tmp_path: Path) -> None:
    local, _url = model
    weights = (local / "weights.bin").read_bytes()
    legacy = {
        "artifact_id": "m", "version": "2", "mount_path": "/mnt/m", "prefetch": ["config.json"],
        "files": [
            {"path": "weights.bin", "url": "s3://gen/models/m/v2/weights.bin", "size": len(weights),
             "sha256": hashlib.sha256(weights).hexdigest()},
            {"path": "config.json", "url": "s3://gen/models/m/v2/config.json", "size": 8},
        ],
    }
    src = tmp_path / "legacy.json"
    src.write_text(json.dumps(legacy))
    direct = mlfs("mount", src, tmp_path, env=seaweedfs.env(), check=False)
    assert direct.returncode == 1 and "mlfs generate --from" in direct.stderr
    out = tmp_path / "converted.json"
    mlfs("generate", "--from", src, "--chunk-size", "1M", "-o", out, "-q", env=seaweedfs.env())
    doc = json.loads(out.read_text())
    assert digests(doc)["weights.bin"] == expected_digests(local)["weights.bin"]
    assert doc["prefetch"] == ["config.json"] and doc["metadata"]["mount_path"] == "/mnt/m"
    legacy["files"][0]["sha256"] = "0" * 64
    src.write_text(json.dumps(legacy))
    bad = mlfs("generate", "--from", src, "-q", env=seaweedfs.env(), check=False)
    assert bad.returncode == 1 and "does not match" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("url, message", [
    ("s3://gen/nothing-here/", "no objects under"),
    ("s3://no-such-bucket-xyz/p/", "cannot list"),
    ("gen/models", "is not an s3://bucket/prefix URL"),
])
def test_generate_errors_are_one_line(seaweedfs: S3Server, url: str, message: str) -> None:
    result = mlfs("generate", url, "-q", env=seaweedfs.env(), check=False)
    assert result.returncode == 1 and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
