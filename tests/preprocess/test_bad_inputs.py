"""Hostile and broken inputs, and broken pipelines, against a real S3 server (SeaweedFS).

Each bad image is reported by key with a one-line reason, nothing is cached for it,
the other images are processed, and the exit status says that something failed. A
bad pipeline is refused before any object is read.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mlfs_cli import mlfs
from tests.preprocess.conftest import jpeg, preprocess_run, upload
from tests.servers import S3Server

GOOD = 3


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb(width: int = 10_000, height: int = 10_000) -> bytes:
    """A few hundred bytes claiming 100 megapixels: past Pillow's limit (which alone only warns)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


BAD_IMAGES = {
    "truncated_jpeg": (lambda: jpeg(99, size=(64, 64))[:400], "truncated or corrupt image"),
    "decompression_bomb": (decompression_bomb, "decompression bomb refused"),
    "non_image": (lambda: b"%PDF-1.7 this is not an image\n" * 20, "not an image"),
    "zero_bytes": (lambda: b"", "empty object (0 bytes)"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_is_reported_skipped_and_not_cached(case: str, seaweedfs: S3Server, bucket_name: str,
                                                      tmp_path: Path, fault_case) -> None:
    make, reason = BAD_IMAGES[case]
    client = seaweedfs.client()
    src, out = f"datasets/{case}/v1/", f"datasets/{case}-224/v1/"
    objects = {f"{src}good-{i}.jpg": jpeg(i) for i in range(GOOD)}
    objects[f"{src}bad.jpg"] = make()
    upload(client, bucket_name, objects)
    cache = tmp_path / "cache"
    result = preprocess_run(seaweedfs.env(), "imagenet-224", f"s3://{bucket_name}/{src}",
                            "--out", f"s3://{bucket_name}/{out}", "--cache", cache, "--workers", "2")
    assert result.returncode == 2, f"a run with a failed input must exit 2: {result.stderr}"
    failures = result.summary["failures"]
    assert len(failures) == 1 and failures[0]["input"] == f"s3://{bucket_name}/{src}bad.jpg"
    assert failures[0]["error"].startswith(reason), failures[0]["error"]
    line = f"mlfs: failed: s3://{bucket_name}/{src}bad.jpg: {failures[0]['error']}"
    assert line in result.stderr.splitlines(), "the failure must be one line naming the key"
    assert (result.summary["done"], result.summary["failed"]) == (GOOD, 1), "the other images must be processed"
    stats = json.loads(mlfs("preprocess", "cache", "stats", "--cache", cache, env=seaweedfs.env()).stdout)
    assert stats["results"] == GOOD, "nothing may be cached for the failed input"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket_name, Prefix=out)["Contents"]}
    assert keys == {f"{out}good-{i}.npy" for i in range(GOOD)} | {f"{out}.mlfs/manifest.json"}, \
        "only the good inputs have outputs"
    fault_case.record(f"exit 2, skipped: {failures[0]['error'][:60]}")


BAD_PIPELINES = {
    "unknown_step": ("steps: [decode, {blur: {radius: 2}}, arrays]\n", "mlfs: step 2: unknown step 'blur'"),
    "bad_parameter": ("steps: [decode, {resize: {size: 8, filter: fancy}}, arrays]\n",
                      "mlfs: step 2 (resize): filter must be one of"),
    "negative_size": ("steps: [decode, {center_crop: {size: 8}}, {resize: {size: -4}}, arrays]\n",
                      "mlfs: step 3 (resize): size must be a positive integer or [w, h], got -4"),
    "unknown_template": (None, "mlfs: unknown template 'imagenet-999'"),
}


@pytest.mark.parametrize("case", sorted(BAD_PIPELINES))
def test_bad_pipeline_is_refused_before_any_image_is_read(case: str, seaweedfs: S3Server, bucket_name: str,
                                                          tmp_path: Path, fault_case) -> None:
    text, message = BAD_PIPELINES[case]
    client = seaweedfs.client()
    upload(client, bucket_name, {f"pipelines/{case}/v1/img-{i}.jpg": jpeg(i) for i in range(2)})
    spec: str | Path = "imagenet-999"
    if text is not None:
        spec = tmp_path / f"{case}.yaml"
        spec.write_text(text)
    gets_before = seaweedfs.get_count(bucket_name)
    for command in (["validate", spec], ["run", spec, f"s3://{bucket_name}/pipelines/{case}/v1/",
                                         "--out", f"s3://{bucket_name}/out/{case}/", "--cache", tmp_path / "cache"]):
        proc = mlfs("preprocess", *command, env=seaweedfs.env(), check=False)
        assert proc.returncode == 1, f"{command[0]}: a bad pipeline must exit 1"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), f"{command[0]}: got {proc.stderr!r}"
    assert seaweedfs.get_count(bucket_name) == gets_before, "no object may be read for an invalid pipeline"
    assert "Contents" not in client.list_objects_v2(Bucket=bucket_name, Prefix=f"out/{case}/"), "nothing may be written"
    fault_case.record(f"exit 1: {lines[0][:70]}")


@pytest.fixture(scope="module")
def shared_bucket(seaweedfs: S3Server) -> Iterator[str]:
    # One bucket for every case (SeaweedFS gives each bucket its own volumes), emptied after.
    client = seaweedfs.client()
    client.create_bucket(Bucket="pp-bad-inputs")
    yield "pp-bad-inputs"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="pp-bad-inputs"):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket="pp-bad-inputs", Key=obj["Key"])
    client.delete_bucket(Bucket="pp-bad-inputs")


@pytest.fixture
def bucket_name(shared_bucket: str, seaweedfs: S3Server) -> str:
    return shared_bucket
