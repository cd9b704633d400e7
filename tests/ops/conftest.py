"""Operations tests: the FUSE tests' demo artifact, uploaded to a bucket of their own.

(Importing the FUSE tests' session fixture here would create it a second time in the
same SeaweedFS, so the tree is rebuilt under another bucket instead.)
"""

from __future__ import annotations

import json

import pytest

from tests.fuse.conftest import Artifact, upload_tree, write_tree
from tests.mlfs_cli import mlfs, require_fuse
from tests.servers import S3Server


@pytest.fixture(scope="session")
def ops_artifact(seaweedfs: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    require_fuse()
    base = tmp_path_factory.mktemp("ops-artifact")
    local = base / "src"
    local.mkdir()
    write_tree(local)
    client = seaweedfs.client()
    bucket, prefix = "ops-artifacts", "models/demo/v1/"
    client.create_bucket(Bucket=bucket)
    upload_tree(client, local, bucket, prefix)
    manifest = base / "demo.json"
    mlfs("generate", f"s3://{bucket}/{prefix}", "-o", manifest, "--chunk-size", "1M", "-q", env=seaweedfs.env())
    doc = json.loads(manifest.read_text())
    doc["symlinks"] = [{"path": "latest.safetensors", "target": "model.safetensors"}]
    manifest.write_text(json.dumps(doc))
    return Artifact(local, manifest, bucket, prefix, seaweedfs)


@pytest.fixture
def artifact(ops_artifact: Artifact) -> Artifact:
    return ops_artifact


