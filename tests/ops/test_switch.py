"""`mlfs switch` under concurrent readers: files open before the switch read the old
version to the end, opens after it read the new one, and only chunks the new version
does not share with the old are fetched."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

from tests.fuse.conftest import Artifact
from tests.mlfs_cli import mlfs, mounted
from tests.ops.helpers import assert_clean_log

MIB = 1 << 20


def _versions(artifact: Artifact, tmp_path: Path) -> tuple[dict, dict, Path, Path]:
    rng = np.random.default_rng(5)
    v1 = {f"f{i}.bin": rng.bytes(4 * MIB) for i in range(8)}
    v1["gone.txt"] = b"only in v1\n"
    v2 = {name: data for name, data in v1.items() if name != "gone.txt"}
    for i in range(4, 8):  # half the files change one chunk (the third)
        data = bytearray(v1[f"f{i}.bin"])
        data[2 * MIB: 3 * MIB] = rng.bytes(MIB)
        v2[f"f{i}.bin"] = bytes(data)
    v2["sub/new.txt"] = b"only in v2\n"
    # The artifact's bucket: every bucket takes volumes of its own on the shared server.
    client = artifact.server.client()
    manifests = []
    for version, files in (("v1", v1), ("v2", v2)):
        for name, data in files.items():
            client.put_object(Bucket=artifact.bucket, Key=f"models/sw/{version}/{name}", Body=data)
        out = tmp_path / f"{version}.json"
        mlfs("generate", f"s3://{artifact.bucket}/models/sw/{version}/", "-o", out, "--chunk-size", "1M",
             "--no-prefetch", "-q", env=artifact.env)
        manifests.append(out)
    return v1, v2, manifests[0], manifests[1]


def test_switch_under_concurrent_readers(artifact: Artifact, tmp_path: Path) -> None:
    v1, v2, m1, m2 = _versions(artifact, tmp_path)
    log = tmp_path / "mount.log"
    with mounted(m1, tmp_path / "mnt", artifact.env, "--cache", tmp_path / "cache", "--no-policy",
                 "--log-file", log, "--log-format", "json") as mp:
        # The kernel caches these answers; the switch must invalidate them.
        assert (mp / "gone.txt").read_bytes() == b"only in v1\n"
        assert not (mp / "sub").exists()
        opened = threading.Barrier(9)
        switched = threading.Event()
        results: dict[str, bytes | BaseException] = {}

        def read_old(name: str) -> None:
            try:
                with open(mp / name, "rb", buffering=0) as fh:
                    data = fh.read(MIB)
                    opened.wait(60)
                    assert switched.wait(120), "switch never happened"
                    while block := fh.read(MIB):
                        data += block
                results[name] = data
            except BaseException as exc:  # reported by the main thread
                results[name] = exc
                opened.abort()

        readers = [threading.Thread(target=read_old, args=(f"f{i}.bin",)) for i in range(8)]
        for t in readers:
            t.start()
        try:
            opened.wait(60)
            result = mlfs("switch", mp, m2, env=artifact.env)
            assert result.stderr.strip() == f"mlfs: {mp} now serves sw v2"
        finally:
            switched.set()
            for t in readers:
                t.join(120)
        for i in range(8):
            got = results[f"f{i}.bin"]
            assert not isinstance(got, BaseException), f"reader of f{i}.bin failed: {got!r}"
            assert got == v1[f"f{i}.bin"], f"f{i}.bin opened before the switch did not read v1"

        before = artifact.server.get_count(artifact.bucket)
        for name, data in v2.items():
            assert (mp / name).read_bytes() == data, f"{name} opened after the switch did not read v2"
        assert not (mp / "gone.txt").exists()
        assert sorted(os.listdir(mp)) == sorted([n for n in v2 if "/" not in n] + ["sub"])
        # Only the four changed chunks and the new file's one were fetched.
        assert artifact.server.get_count(artifact.bucket) - before == 5

        status = json.loads(mlfs("status", "--json", mp, env=artifact.env).stdout)
        assert status["manifest"] == {"name": "sw", "version": "v2"}

        # A manifest that fails validation changes nothing.
        bad = json.loads(m1.read_text())
        bad["files"][0]["path"] = "../escape"
        bad_path = tmp_path / "bad.json"
        bad_path.write_text(json.dumps(bad))
        refused = mlfs("switch", mp, bad_path, env=artifact.env, check=False)
        assert refused.returncode == 1
        assert len(refused.stderr.strip().splitlines()) == 1 and "../escape" in refused.stderr
        assert (mp / "sub" / "new.txt").read_bytes() == b"only in v2\n"
        status = json.loads(mlfs("status", "--json", mp, env=artifact.env).stdout)
        assert status["manifest"]["version"] == "v2"
    assert_clean_log(log)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert all({"time", "level", "event"} <= e.keys() for e in events)
    assert any(e["event"].startswith(f"switched {mp} to sw v2") for e in events)
