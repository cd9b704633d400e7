"""Who may use the registry (basic auth and SigV4 as gateway users, rights per bucket),
and pushing a Hugging Face cache snapshot (symlinks into blobs/, revision recorded)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.gateway.server import GatewayServer, start_gateway
from tests.mlfs_cli import mlfs
from tests.registry.conftest import check_log, env_for, make_model_dir, mlfs_json
from tests.servers import ACCESS_KEY, SECRET_KEY

pytestmark = [pytest.mark.s3]
SEARCH = "/api/2.0/mlflow/registered-models/search"


def _call(url: str, headers: dict[str, str], data: bytes | None = None, method: str = "GET") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _basic(key: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()}


def _sigv4(method: str, url: str, key: str, secret: str, body: bytes = b"") -> dict[str, str]:
    request = AWSRequest(method=method, url=url, data=body)
    S3SigV4Auth(Credentials(key, secret), "s3", "us-east-1").add_auth(request)
    return dict(request.prepare().headers)


def test_registry_users_rights_and_signatures(tmp_path: Path) -> None:
    creds = tmp_path / "users.toml"
    creds.write_text('[[user]]\nname = "reader"\naccess_key = "AKREADER"\nsecret_key = "reader-secret-1234"\n'
                     'read = ["models"]\n')
    server = start_gateway(tmp_path / "gw", "--credentials", str(creds))
    try:
        server.client().create_bucket(Bucket="models")
        env = env_for(server)
        mlfs("push", make_model_dir(tmp_path / "m", shard_mib=1, shards=1), "--name", "guarded", "--version", "v1",
             "-q", env=env)
        url = server.endpoint + SEARCH

        status, doc = _call(url, {})
        assert (status, doc["error_code"]) == (401, "UNAUTHENTICATED")
        status, doc = _call(url, _basic(ACCESS_KEY, "wrong-secret"))
        assert (status, doc["error_code"]) == (401, "UNAUTHENTICATED")
        status, doc = _call(url, _basic("AKREADER", "reader-secret-1234"))
        assert status == 200 and [m["name"] for m in doc["registered_models"]] == ["guarded"]
        status, doc = _call(url, _sigv4("GET", url, ACCESS_KEY, SECRET_KEY))
        assert status == 200 and [m["name"] for m in doc["registered_models"]] == ["guarded"]
        status, doc = _call(url, _sigv4("GET", url, ACCESS_KEY, "not-the-secret"))
        assert status == 401

        promote = server.endpoint + "/api/2.0/mlflow/model-versions/transition-stage"
        body = json.dumps({"name": "guarded", "version": "1", "stage": "Production"}).encode()
        status, doc = _call(promote, {**_basic("AKREADER", "reader-secret-1234"), "Content-Type": "application/json"},
                            body, "POST")
        assert (status, doc["error_code"]) == (403, "PERMISSION_DENIED")
        headers = _sigv4("POST", promote, ACCESS_KEY, SECRET_KEY, body)
        status, doc = _call(promote, headers, body, "POST")
        assert (status, doc["model_version"]["current_stage"]) == (200, "Production")
        # A body that is not the one signed is refused.
        status, doc = _call(promote, headers, body.replace(b"Production", b"Archived\x20\x20"), "POST")
        assert status == 401
    finally:
        server.stop()
    check_log(server)


def test_push_of_a_hugging_face_snapshot(registry_gateway: GatewayServer, tmp_path: Path) -> None:
    source = make_model_dir(tmp_path / "plain", shard_mib=1, shards=1)
    repo = tmp_path / "hub" / "models--acme--tiny"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for f in sorted(source.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        os.symlink(os.path.relpath(blob, repo / "snapshots" / revision), repo / "snapshots" / revision / f.name)
    doc = mlfs_json("push", repo / "snapshots" / revision, "--name", "acme-tiny", "--version", "main", "-q",
                    env=env_for(registry_gateway))
    assert {k: doc["metadata"][k] for k in ("hf_revision", "hf_repo", "hf_ref")} == {
        "hf_revision": revision, "hf_repo": "acme/tiny", "hf_ref": "main"}
    assert sorted(f["path"] for f in doc["files"]) == sorted(f.name for f in source.iterdir())
    assert doc["bytes"] == sum(f.stat().st_size for f in source.iterdir())
