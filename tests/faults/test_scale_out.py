"""Scale-out: a mount reading through a replicated SeaweedFS cluster loses a volume
server mid-read and still delivers every byte, verified."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from pathlib import Path

import numpy as np

from tests.cluster import start_cluster
from tests.mlfs_cli import mlfs, mounted

MIB = 1 << 20


def _data_bytes(volume_dir: Path) -> int:
    return sum(p.stat().st_size for p in volume_dir.glob("*.dat"))


def test_cold_read_survives_losing_a_volume_server(tmp_path: Path, fault_case) -> None:
    cluster = start_cluster(tmp_path / "cluster", volumes=3, replication="001")
    try:
        data = np.random.default_rng(7).bytes(24 * MIB + 4321)
        client = cluster.s3.client()
        # Under load a create may time out and be retried by the client: idempotent here.
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket="fleet")
        client.put_object(Bucket="fleet", Key="models/fleet/v1/weights.bin", Body=data)
        client.put_object(Bucket="fleet", Key="models/fleet/v1/config.json", Body=b'{"fleet": true}')
        manifest = tmp_path / "fleet.json"
        env = cluster.s3.env()
        mlfs("generate", "s3://fleet/models/fleet/v1/", "-o", manifest, "--chunk-size", "1M", "-q",
             "--no-prefetch", env=env)
        # The victim is the volume server holding the most of the object.
        victim = max(cluster.volume_servers(), key=lambda n: _data_bytes(tmp_path / "cluster" / n))
        assert _data_bytes(tmp_path / "cluster" / victim) > 0

        progress = {"bytes": 0}
        result: dict = {}
        with mounted(manifest, tmp_path / "mnt", env, "--cache", tmp_path / "cache",
                     "-o", "read_ahead_max=2") as mp:
            def read() -> None:
                h = hashlib.sha256()
                try:
                    with open(mp / "weights.bin", "rb", buffering=0) as fh:
                        while block := fh.read(256 * 1024):
                            h.update(block)
                            progress["bytes"] += len(block)
                except OSError as exc:
                    result["errno"] = exc.errno
                result["sha256"] = h.hexdigest()

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            deadline = time.monotonic() + 60
            while progress["bytes"] < 2 * MIB and reader.is_alive():
                assert time.monotonic() < deadline, "the cold read made no progress"
                time.sleep(0.01)
            at_kill = progress["bytes"]
            cluster.kill(victim)
            reader.join(300)
            assert not reader.is_alive(), "the read hung after a volume server died"
            config = (mp / "config.json").read_bytes()
        assert at_kill < len(data), "the read finished before the volume server was killed"
        assert result.get("errno") is None, f"the read failed: {os.strerror(result['errno'])}"
        assert result["sha256"] == hashlib.sha256(data).hexdigest()
        assert config == b'{"fleet": true}'
    finally:
        cluster.stop()
    fault_case.record(f"{victim} killed after {at_kill // MIB} MiB; all {len(data) // MIB} MiB verified")
