"""`/api/preprocessing/` on a real `mlfs serve`, called with SigV4-signed HTTP requests."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from typing import Any

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.gateway.server import GatewayServer
from tests.mlfs_cli import mlfs
from tests.preprocess.conftest import jpeg, upload
from tests.servers import ACCESS_KEY, SECRET_KEY

API = "/api/preprocessing/"
TINY = {"name": "tiny", "steps": ["decode", {"resize": {"size": [16, 16]}}, "grayscale", {"arrays": {"format": "npy"}}]}


def call(server: GatewayServer, method: str, path: str, body: Any = None, secret: str | None = SECRET_KEY,
         payload_hash: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else b""
    request = AWSRequest(method=method, url=f"{server.endpoint}{API}{path}", data=data, headers={})
    if secret is not None:
        S3SigV4Auth(Credentials(ACCESS_KEY, secret), "s3", "us-east-1").add_auth(request)
    headers = dict(request.prepare().headers)
    if payload_hash is not None:
        headers["x-amz-content-sha256"] = payload_hash
    req = urllib.request.Request(request.url, data=data or None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for_job(server: GatewayServer, url: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job = call(server, "GET", url[len(API):])
        assert status == 200, job
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {url} still running after {timeout}s")


def test_rest_api_requires_sigv4(gateway: GatewayServer) -> None:
    status, doc = call(gateway, "GET", "pipelines", secret=None)
    assert (status, doc["error"]) == (403, "the preprocessing API needs SigV4-signed requests")
    status, doc = call(gateway, "GET", "pipelines", secret="not-the-secret")
    assert (status, doc["code"]) == (403, "SignatureDoesNotMatch")
    status, doc = call(gateway, "POST", "validate", body=TINY, payload_hash=hashlib.sha256(b"other").hexdigest())
    assert status in (400, 403), "a body that does not match its signed hash must be refused"


def test_rest_pipelines_validate_apply_and_cache_stats(gateway: GatewayServer) -> None:
    status, doc = call(gateway, "GET", "pipelines")
    assert status == 200
    assert {t["name"] for t in doc["templates"]} >= {"imagenet-224", "clip-224", "resnet-train-augment", "thumbnail-webp"}

    bad = {"steps": ["decode", {"center_crop": {"size": 4}}, {"resize": {"size": -4}}, "arrays"]}
    status, doc = call(gateway, "POST", "validate", body=bad)
    assert (status, doc) == (400, {"valid": False,
                                   "error": "step 3 (resize): size must be a positive integer or [w, h], got -4"})
    status, doc = call(gateway, "POST", "validate", body=TINY)
    assert status == 200 and doc["valid"] and doc["steps"] == ["decode", "resize", "grayscale", "arrays"]

    status, created = call(gateway, "POST", "pipelines", body=TINY)
    assert status == 201 and created["name"] == "tiny"
    status, doc = call(gateway, "GET", "pipelines/tiny")
    assert status == 200 and doc["digest"] == created["digest"]
    assert "tiny" in call(gateway, "GET", "pipelines")[1]["pipelines"]

    client = gateway.client()
    client.create_bucket(Bucket="rest")
    upload(client, "rest", {f"datasets/in/v1/{i:02d}.jpg": jpeg(700 + i) for i in range(12)} |
           {"datasets/in/v1/broken.jpg": b"garbage"})
    apply = {"pipeline": "tiny", "src": "s3://rest/datasets/in/v1/", "dst": "s3://rest/datasets/tiny/v1/",
             "workers": 2}
    status, job = call(gateway, "POST", "apply", body=apply)
    assert status == 202 and job["url"].startswith(API + "jobs/"), job
    job = wait_for_job(gateway, job["url"])
    assert job["state"] == "succeeded", job
    assert job["counts"] == {"total": 13, "done": 12, "cached": 0, "failed": 1, "decoded": 13}
    assert [f["input"] for f in job["failures"]] == ["s3://rest/datasets/in/v1/broken.jpg"]
    manifest = json.loads(client.get_object(Bucket="rest", Key="datasets/tiny/v1/.mlfs/manifest.json")["Body"].read())
    assert manifest["metadata"]["lineage"]["pipeline"] == {"name": "tiny", "digest": created["digest"]}

    again = wait_for_job(gateway, call(gateway, "POST", "apply", body=apply)[1]["url"])
    assert again["counts"]["cached"] == 12 and again["counts"]["decoded"] == 1, again

    status, stats = call(gateway, "GET", "cache/stats")
    assert status == 200 and stats["store"] == str(gateway.data_dir / "store") and stats["results"] >= 12
    cli = json.loads(mlfs("preprocess", "cache", "stats", "--gateway", env=gateway.env()).stdout)
    assert cli["results"] == stats["results"], "the CLI must report the gateway's cache over the API"

    # Clearing frees result chunks, but never one an object still uses (outputs share them).
    outputs = {k: client.get_object(Bucket="rest", Key=f"datasets/tiny/v1/{k:02d}.npy")["Body"].read() for k in range(12)}
    status, cleared = call(gateway, "POST", "cache/clear")
    assert status == 200 and cleared["removed"] == stats["results"]
    assert call(gateway, "GET", "cache/stats")[1]["results"] == 0
    for k, data in outputs.items():
        assert client.get_object(Bucket="rest", Key=f"datasets/tiny/v1/{k:02d}.npy")["Body"].read() == data, \
            f"output {k:02d}.npy lost its bytes when the cache was cleared"


def test_rest_apply_rejects_bad_requests(gateway: GatewayServer) -> None:
    status, doc = call(gateway, "POST", "apply", body={"pipeline": "imagenet-999", "src": "s3://a/b/", "dst": "s3://a/c/"})
    assert (status, doc["error"]) == (404, "no pipeline 'imagenet-999' (neither stored nor a template)")
    status, doc = call(gateway, "POST", "apply", body={"pipeline": "imagenet-224", "src": "/etc/", "dst": "s3://a/c/"})
    assert (status, doc["error"]) == (400, "src must be an s3://BUCKET/PREFIX/ URL on this gateway")
    status, doc = call(gateway, "GET", "jobs/nope")
    assert status == 404
