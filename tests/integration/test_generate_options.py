"""`mlfs generate` refuses every bad option before it lists or hashes anything.

The S3 endpoint given is a real SeaweedFS: a command that started work would list the
prefix (visible in SeaweedFS's request counters) before failing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mlfs_cli import mlfs
from tests.servers import S3Server

CASES = {
    "chunk size zero": (["--chunk-size", "0"], "--chunk-size must be between"),
    "chunk size too small": (["--chunk-size", "1K"], "--chunk-size must be between"),
    "chunk size too large": (["--chunk-size", "2G"], "--chunk-size must be between"),
    "chunk size not a size": (["--chunk-size", "lots"], "is not a size"),
    "workers zero": (["--workers", "0"], "--workers must be between"),
    "block size not dividing the chunk": (["--block-size", "96K"], "--block-size must be 0 (none) or"),
    "block size too small": (["--block-size", "4K"], "--block-size must be 0 (none) or"),
    "prefetch and no-prefetch": (["--prefetch", "*.json", "--no-prefetch"], "contradict"),
    "missing local mirror": (["--local", "/nonexistent/mirror"], "no such directory"),
    "output directory missing": (["-o", "/nonexistent/dir/m.json"], "does not exist"),
}


@pytest.fixture(scope="module")
def bucket(seaweedfs: S3Server) -> str:
    client = seaweedfs.client()
    client.create_bucket(Bucket="genopts")
    client.put_object(Bucket="genopts", Key="m/v1/weights.bin", Body=b"x" * 200_000)
    return "genopts"


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_option_is_refused_before_any_work(seaweedfs: S3Server, bucket: str, tmp_path: Path,
                                               case: str, fault_case) -> None:
    args, message = CASES[case]
    before = seaweedfs.get_count(bucket)
    # A bounded timeout: --chunk-size 0 used to loop forever.
    result = mlfs("generate", f"s3://{bucket}/m/v1/", "-q", *args, env=seaweedfs.env(), check=False, timeout=60)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlfs: ") and message in lines[0], result.stderr
    assert seaweedfs.get_count(bucket) == before, "generate read the bucket before refusing its options"
    fault_case.record("one-line error, no S3 request")


def test_bad_url_is_refused(seaweedfs: S3Server, tmp_path: Path) -> None:
    result = mlfs("generate", "http://not-s3/x", "-q", env=seaweedfs.env(), check=False, timeout=60)
    assert result.returncode == 1 and "is not an s3://bucket/prefix URL" in result.stderr, result.stderr
