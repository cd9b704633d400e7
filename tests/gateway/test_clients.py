"""Real S3 clients run scripted sessions against `mlfs serve` and compare bytes.

boto3 (multipart upload_file/download_file of 100 MiB), AWS CLI (s3 cp/sync/ls/rm,
s3api tagging and metadata), s3cmd (put/get/ls/del) and rclone (copy/sync/check with
checksums). A missing client is a failure, not a skip.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import boto3.s3.transfer
import pytest

from tests.gateway.server import GatewayServer
from tests.servers import ACCESS_KEY, SECRET_KEY, s3_env

pytestmark = pytest.mark.s3

MiB = 1024 * 1024


@pytest.fixture
def bucket(gateway: GatewayServer, bucket_on) -> str:  # type: ignore[no-untyped-def]
    return bucket_on(gateway)


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed; the client tests need it"
    return path


def _run(cmd: list[str], env: dict[str, str], timeout: float = 300) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _tree(root: Path, files: dict[str, int]) -> None:
    for rel, size in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


def _same_trees(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert filecmp.cmp(a / rel, b / rel, shallow=False), rel


def test_boto3_multipart_upload_and_download(gateway: GatewayServer, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    with open(src, "wb") as fh:
        for _ in range(100):
            fh.write(os.urandom(MiB))
    client = gateway.client()
    config = boto3.s3.transfer.TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=4)
    client.upload_file(str(src), bucket, "models/big.bin", Config=config)
    head = client.head_object(Bucket=bucket, Key="models/big.bin")
    assert head["ContentLength"] == 100 * MiB
    assert head["ETag"].endswith('-13"')  # 12 parts of 8 MiB and one of 4 MiB
    dst = tmp_path / "back.bin"
    client.download_file(bucket, "models/big.bin", str(dst), Config=config)
    assert filecmp.cmp(src, dst, shallow=False)
    # The manifest agrees with the bytes: 16 MiB chunks re-cut from the 8 MiB parts.
    manifest = json.loads(_manifest(gateway, bucket, "models/"))
    entry = manifest["files"][0]
    data = src.read_bytes()
    assert entry["path"] == "big.bin"
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["chunks"] == [hashlib.sha256(data[i:i + 16 * MiB]).hexdigest() for i in range(0, len(data), 16 * MiB)]


def _manifest(gateway: GatewayServer, bucket: str, prefix: str) -> str:
    from urllib.parse import quote

    from tests.gateway.clients import send_raw, sign_headers

    path = f"/{bucket}?mlfs-manifest&prefix={quote(prefix, safe='')}"
    status, body = send_raw(gateway, "GET", path, sign_headers(gateway, "GET", path))
    assert status == 200, body
    return body.decode()


def test_aws_cli_session(gateway: GatewayServer, bucket: str, tmp_path: Path) -> None:
    aws = _tool("aws")
    env = s3_env(gateway.endpoint)
    src = tmp_path / "src"
    _tree(src, {"a.txt": 1000, "sub/b.bin": 300_000, "sub/deep/c.bin": 20 * MiB, "empty": 0})
    _run([aws, "s3", "cp", str(src / "a.txt"), f"s3://{bucket}/single/a.txt"], env)
    _run([aws, "s3", "sync", str(src), f"s3://{bucket}/tree"], env)
    listing = _run([aws, "s3", "ls", "--recursive", f"s3://{bucket}/tree/"], env)
    assert sorted(line.split()[-1] for line in listing.splitlines()) == [
        "tree/a.txt", "tree/empty", "tree/sub/b.bin", "tree/sub/deep/c.bin"]
    # A second sync has nothing to do.
    assert _run([aws, "s3", "sync", str(src), f"s3://{bucket}/tree"], env).strip() == ""
    back = tmp_path / "back"
    _run([aws, "s3", "sync", f"s3://{bucket}/tree", str(back)], env)
    _same_trees(src, back)
    _run([aws, "s3", "cp", f"s3://{bucket}/single/a.txt", str(tmp_path / "a.copy")], env)
    assert (tmp_path / "a.copy").read_bytes() == (src / "a.txt").read_bytes()
    # s3api: metadata and tagging
    _run([aws, "s3api", "put-object", "--bucket", bucket, "--key", "meta/obj", "--body", str(src / "a.txt"),
          "--metadata", "framework=pytorch,stage=prod", "--content-type", "application/x-model"], env)
    head = json.loads(_run([aws, "s3api", "head-object", "--bucket", bucket, "--key", "meta/obj"], env))
    assert head["Metadata"] == {"framework": "pytorch", "stage": "prod"}
    assert head["ContentType"] == "application/x-model"
    _run([aws, "s3api", "put-object-tagging", "--bucket", bucket, "--key", "meta/obj",
          "--tagging", json.dumps({"TagSet": [{"Key": "owner", "Value": "ml-team"}]})], env)
    tags = json.loads(_run([aws, "s3api", "get-object-tagging", "--bucket", bucket, "--key", "meta/obj"], env))
    assert tags["TagSet"] == [{"Key": "owner", "Value": "ml-team"}]
    _run([aws, "s3", "rm", "--recursive", f"s3://{bucket}/tree"], env)
    _run([aws, "s3", "rm", f"s3://{bucket}/single/a.txt"], env)
    left = _run([aws, "s3", "ls", "--recursive", f"s3://{bucket}/"], env)
    assert [line.split()[-1] for line in left.splitlines()] == ["meta/obj"]


@pytest.mark.parametrize("signature_v2", [False, True], ids=["sigv4", "sigv2"])
def test_s3cmd_session(gateway: GatewayServer, bucket: str, tmp_path: Path, signature_v2: bool) -> None:
    s3cmd = _tool("s3cmd")
    host = gateway.endpoint.split("://", 1)[1]
    config = tmp_path / "s3cfg"
    config.write_text(
        "[default]\n"
        f"access_key = {ACCESS_KEY}\nsecret_key = {SECRET_KEY}\n"
        f"host_base = {host}\nhost_bucket = {host}\n"
        f"use_https = False\nsignature_v2 = {signature_v2}\nbucket_location = us-east-1\n"
        "check_ssl_certificate = False\n"
    )
    env = s3_env(gateway.endpoint)
    base = [s3cmd, "-c", str(config), "--no-progress"]
    src = tmp_path / "src"
    _tree(src, {"small.txt": 4321, "multi.bin": 20 * MiB})
    _run([*base, "put", str(src / "small.txt"), f"s3://{bucket}/s3cmd/small.txt"], env)
    _run([*base, "put", str(src / "multi.bin"), f"s3://{bucket}/s3cmd/multi.bin"], env)
    listing = _run([*base, "ls", f"s3://{bucket}/s3cmd/"], env)
    assert f"s3://{bucket}/s3cmd/small.txt" in listing and f"s3://{bucket}/s3cmd/multi.bin" in listing
    dst = tmp_path / "dst"
    dst.mkdir()
    for name in ("small.txt", "multi.bin"):
        _run([*base, "get", f"s3://{bucket}/s3cmd/{name}", str(dst / name)], env)
        assert filecmp.cmp(src / name, dst / name, shallow=False), name
    _run([*base, "del", f"s3://{bucket}/s3cmd/small.txt"], env)
    assert "small.txt" not in _run([*base, "ls", f"s3://{bucket}/s3cmd/"], env)


def test_rclone_session(gateway: GatewayServer, bucket: str, tmp_path: Path) -> None:
    rclone = _tool("rclone")
    env = {k: v for k, v in s3_env(gateway.endpoint).items() if k != "AWS_CA_BUNDLE"}
    env.update(
        RCLONE_CONFIG_GW_TYPE="s3", RCLONE_CONFIG_GW_PROVIDER="Other",
        RCLONE_CONFIG_GW_ACCESS_KEY_ID=ACCESS_KEY, RCLONE_CONFIG_GW_SECRET_ACCESS_KEY=SECRET_KEY,
        RCLONE_CONFIG_GW_ENDPOINT=gateway.endpoint, RCLONE_CONFIG_GW_REGION="us-east-1",
        RCLONE_CONFIG_GW_FORCE_PATH_STYLE="true", RCLONE_CONFIG=str(tmp_path / "none.conf"),
    )
    flags = ["--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", "--retries", "1", "--low-level-retries", "2"]
    src = tmp_path / "src"
    _tree(src, {"x.bin": 123_456, "dir/y.bin": 12 * MiB, "dir/z.txt": 10})
    _run([rclone, *flags, "copy", str(src), f"gw:{bucket}/rc"], env)
    _run([rclone, *flags, "check", "--checksum", str(src), f"gw:{bucket}/rc"], env)
    (src / "x.bin").unlink()
    (src / "new.bin").write_bytes(os.urandom(7777))
    _run([rclone, *flags, "sync", str(src), f"gw:{bucket}/rc"], env)
    _run([rclone, *flags, "check", "--checksum", str(src), f"gw:{bucket}/rc"], env)
    back = tmp_path / "back"
    _run([rclone, *flags, "copy", f"gw:{bucket}/rc", str(back)], env)
    _same_trees(src, back)
