"""/metrics of a mount scraped during and after a cold read: its byte counters equal
the bytes read and fetched, and `mlfs status --json` reports the same numbers."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import botocore.exceptions
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fuse.conftest import Artifact
from tests.gateway.server import start_gateway
from tests.mlfs_cli import mlfs, mounted
from tests.ops.helpers import assert_clean_log
from tests.servers import free_port


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + (json.dumps(sample.labels, sort_keys=True) if sample.labels else "")
            out[key] = sample.value
    return out


def test_metrics_and_status_match_a_cold_read(artifact: Artifact, tmp_path: Path) -> None:
    doc = json.loads(artifact.manifest.read_text())
    doc["prefetch"] = []  # nothing fetched but what the test reads
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(doc))
    sizes = {f["path"]: f["size"] for f in doc["files"]}
    port = free_port()
    log = tmp_path / "mount.log"
    with mounted(manifest, tmp_path / "mnt", artifact.env, "--cache", tmp_path / "cache", "--no-policy",
                 "--metrics-addr", f"127.0.0.1:{port}", "--log-file", log) as mp:
        first = scrape(port)
        assert first["mlfs_served_bytes_total"] == 0
        assert first["mlfs_fetched_bytes_total"] == 0
        info = json.dumps({"manifest": "demo", "mountpoint": str(mp), "version": "v1"}, sort_keys=True)
        assert first["mlfs_mount_info" + info] == 1

        read = 0
        for name in ("odd.bin", "exact.bin"):
            read += len((mp / name).read_bytes())
            during = scrape(port)
            assert during["mlfs_served_bytes_total"] == read
            assert during["mlfs_fetched_bytes_total"] == read  # every chunk of a cold file, once
            assert during["mlfs_store_misses_total"] == during["mlfs_fetch_requests_total"]

        read += len((mp / "config.json").read_bytes())
        assert read == sizes["odd.bin"] + sizes["exact.bin"] + sizes["config.json"]
        # Read again: served from the page cache, nothing more fetched or served.
        (mp / "odd.bin").read_bytes()
        after = scrape(port)
        assert after["mlfs_served_bytes_total"] == read
        assert after["mlfs_fetched_bytes_total"] == read
        assert after["mlfs_fetch_duration_seconds_count"] == after["mlfs_store_misses_total"]
        assert after['mlfs_fetch_errors_total{"kind": "integrity"}'] == 0
        assert after["mlfs_open_files"] == 0

        status = json.loads(mlfs("status", "--json", mp, env=artifact.env).stdout)
        assert status["bytes_served"] == after["mlfs_served_bytes_total"]
        assert status["bytes_fetched"] == after["mlfs_fetched_bytes_total"]
        assert status["manifest"] == {"name": "demo", "version": "v1"}
        assert status["top_files"][0] == {"path": "odd.bin", "bytes": sizes["odd.bin"]}
        assert status["recent_errors"] == []
        everything = json.loads(mlfs("status", "--json", env=artifact.env).stdout)
        assert str(mp) in [m["mountpoint"] for m in everything["mounts"]]
        table = mlfs("status", mp, env=artifact.env).stdout
        assert table.splitlines()[0].split()[:3] == ["MOUNTPOINT", "MANIFEST", "VERSION"]
        assert table.splitlines()[1].split()[:3] == [str(mp), "demo", "v1"]
    assert_clean_log(log)


def test_gateway_metrics_count_requests_by_operation_and_status(tmp_path: Path) -> None:
    port = free_port()
    gateway = start_gateway(tmp_path / "gw", "--metrics-addr", f"127.0.0.1:{port}")
    try:
        client = gateway.client()
        client.create_bucket(Bucket="metrics-test")
        client.put_object(Bucket="metrics-test", Key="a.bin", Body=b"x" * 1000)
        assert client.get_object(Bucket="metrics-test", Key="a.bin")["Body"].read() == b"x" * 1000
        with pytest.raises(botocore.exceptions.ClientError):
            client.get_object(Bucket="metrics-test", Key="missing")
        got = scrape(port)
    finally:
        gateway.stop()

    def requests(op: str, status: int) -> float:
        labels = json.dumps({"operation": op, "status": str(status)}, sort_keys=True)
        return got.get("mlfs_gateway_requests_total" + labels, 0)

    assert requests("create_bucket", 200) == 1
    assert requests("put_object", 200) == 1
    assert requests("get_object", 200) == 1
    assert requests("get_object", 404) == 1
    assert got['mlfs_gateway_request_duration_seconds_count{"operation": "get_object"}'] == 2
    log = gateway.log_path.read_text()
    assert "WARNING" not in log and "Traceback" not in log, log
