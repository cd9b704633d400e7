"""Policy rules acting on a real mount against real SeaweedFS."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from mlfs.fuse.mountpoints import find_mount
from tests.fuse.conftest import CHUNK, Artifact
from tests.mlfs_cli import daemon_pid, mlfs, mounted

MIB = 1 << 20


def status(mp: Path, env: dict[str, str]) -> dict:
    """Statistics published after this call (they are published every 2 s)."""
    asked = time.time()
    deadline = time.monotonic() + 30
    while True:
        doc = json.loads(mlfs("status", "--json", mp, env=env).stdout)
        if doc["published"] > asked:
            return doc
        assert time.monotonic() < deadline, "the mount published no statistics for 30 s"
        time.sleep(0.2)


def chunk_files(cache: Path) -> set[str]:
    return {p.name for p in (cache / "chunks").rglob("*") if p.is_file()}


def manifest_chunks(manifest: Path, path: str) -> list[str]:
    doc = json.loads(manifest.read_text())
    return next(f["chunks"] for f in doc["files"] if f["path"] == path)


def test_json_prefetched_at_mount_opens_without_requests(artifact: Artifact, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - id: json-at-mount\n"
        "    priority: 500\n"
        "    conditions:\n"
        "      - {property: file.path, operator: glob, value: '*.json'}\n"
        "    actions:\n"
        "      prefetch: {when: mount, what: whole}\n"
    )
    doc = json.loads(artifact.manifest.read_text())
    doc["prefetch"] = []  # only the rule prefetches
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(doc))
    cache = tmp_path / "cache"
    with mounted(manifest, tmp_path / "mnt", artifact.env, "--cache", cache, "--rules", rules,
                 "--wait-prefetch") as mp:
        stored = chunk_files(cache)
        for name in ("config.json", "tokenizer.json"):
            assert set(manifest_chunks(manifest, name)) <= stored, f"{name} not prefetched"
        assert not set(manifest_chunks(manifest, "odd.bin")) & stored, "non-JSON file was prefetched"
        before = artifact.server.get_count(artifact.bucket)
        for name in ("config.json", "tokenizer.json"):
            assert (mp / name).read_bytes() == (artifact.local / name).read_bytes()
        assert artifact.server.get_count(artifact.bucket) == before
        counters = status(mp, artifact.env)["policy"]["rules"]["json-at-mount"]
        assert counters["prefetched_bytes"] > 0
        assert counters["prefetch_used_bytes"] == counters["prefetched_bytes"]


def test_safetensors_header_then_tensors_under_llm_inference(artifact: Artifact, tmp_path: Path) -> None:
    # 48 tensors of 1 MiB in 1 MiB chunks: large enough that the loader, tensor by
    # tensor, trails the prefetch instead of the kernel's read-ahead covering it all.
    rng = np.random.default_rng(5)
    src = tmp_path / "src"
    src.mkdir()
    save_file({f"t{i:02d}": rng.standard_normal(256 * 1024, dtype=np.float32) for i in range(48)},
              str(src / "weights.safetensors"))
    prefix = f"scratch/{tmp_path.name}/"
    artifact.server.client().upload_file(str(src / "weights.safetensors"), artifact.bucket,
                                         prefix + "weights.safetensors")
    manifest = tmp_path / "m.json"
    mlfs("generate", f"s3://{artifact.bucket}/{prefix}", "-o", manifest, "--chunk-size", "1M", "-q",
         env=artifact.env)
    with mounted(manifest, tmp_path / "mnt", artifact.env, "--cache", tmp_path / "cache",
                 "--template", "llm-inference", "-o", "read_ahead_max=1") as mp:
        with safe_open(mp / "weights.safetensors", "np") as f, \
                safe_open(src / "weights.safetensors", "np") as want:
            for key in want.keys():  # noqa: SIM118 - safe_open is not iterable
                np.testing.assert_array_equal(f.get_tensor(key), want.get_tensor(key))
        rules = status(mp, artifact.env)["policy"]["rules"]
    # The manifest holds only the safetensors file, so every prefetching rule is about it.
    tensor_rules = {k: v for k, v in rules.items() if v["prefetched_bytes"]}
    assert tensor_rules, f"no rule prefetched anything: {rules}"
    prefetched = sum(v["prefetched_bytes"] for v in tensor_rules.values())
    used = sum(v["prefetch_used_bytes"] for v in tensor_rules.values())
    assert prefetched >= 8 * CHUNK and used >= 0.9 * prefetched, tensor_rules


@pytest.fixture(scope="module")
def pinned_object(artifact: Artifact, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pinned")
    client = artifact.server.client()
    client.put_object(Bucket="bigdata", Key="pinned/v1/pinned.bin", Body=os.urandom(100 * MIB))
    manifest = base / "pinned.json"
    mlfs("generate", "s3://bigdata/pinned/v1/", "-o", manifest, "-q", env=artifact.env)
    return manifest


def test_streaming_with_drop_behind_does_not_evict_pinned(
    artifact: Artifact, big_object: tuple[Path, str], pinned_object: Path, tmp_path: Path
) -> None:
    big = json.loads(big_object[0].read_text())
    pinned = json.loads(pinned_object.read_text())
    doc = dict(big, files=big["files"] + pinned["files"], prefetch=[])
    manifest = tmp_path / "combined.json"
    manifest.write_text(json.dumps(doc))
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "pin_budget: 200MiB\n"
        "rules:\n"
        "  - id: keep-pinned\n"
        "    priority: 500\n"
        "    conditions: [{property: file.name, operator: eq, value: pinned.bin}]\n"
        "    actions: {pin: true, cache: high}\n"
        "  - id: stream-big\n"
        "    priority: 400\n"
        "    conditions: [{property: file.name, operator: eq, value: big.bin}]\n"
        "    actions:\n"
        "      stream: {window_start: 2, window_max: 8, parallel: 4, drop_behind: true}\n"
        "      cache: low\n"
    )
    cache = tmp_path / "cache"
    with mounted(manifest, tmp_path / "mnt", artifact.env, "--cache", cache, "--cache-size", "512M",
                 "--rules", rules) as mp:
        assert len((mp / "pinned.bin").read_bytes()) == 100 * MIB
        with open(mp / "big.bin", "rb", buffering=0) as fh:
            while fh.read(4 * MIB):
                pass
        stats = status(mp, artifact.env)
        stored = chunk_files(cache)
        assert set(manifest_chunks(manifest, "pinned.bin")) <= stored, "a pinned chunk was evicted"
        assert sum((cache / "chunks" / d[:2] / d).stat().st_size for d in stored) <= 512 * MIB
        assert stats["policy"]["rules"]["keep-pinned"]["pinned_bytes"] == 100 * MIB
        # The pinned file still reads with no new requests.
        before = artifact.server.get_count("bigdata")
        assert len((mp / "pinned.bin").read_bytes()) == 100 * MIB
        assert artifact.server.get_count("bigdata") == before


def test_pin_budget_above_store_size_is_rejected(artifact: Artifact, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("pin_budget: 1GiB\nrules:\n  - id: pin-all\n    priority: 1\n    actions: {pin: true}\n")
    mp = tmp_path / "mnt"
    mp.mkdir()
    result = mlfs("mount", artifact.manifest, mp, "--cache", tmp_path / "cache", "--cache-size", "512M",
                  "--rules", rules, env=artifact.env, check=False)
    assert result.returncode == 1 and "pin_budget" in result.stderr and "rules.yaml:1" in result.stderr
    assert result.stderr.count("\n") == 1 and find_mount(mp) is None


BAD_RULES = {
    "bad yaml": ("rules: [\n", "rules.yaml:"),
    "unknown action": ("rules:\n  - id: a\n    priority: 1\n    actions: {teleport: true}\n", "rules.yaml:4"),
    "unknown operator": ("rules:\n  - id: a\n    priority: 1\n    conditions:\n"
                         "      - {property: file.size, operator: near, value: 1}\n    actions: {pin: true}\n",
                         "rules.yaml:5"),
}


@pytest.mark.parametrize("case", sorted(BAD_RULES))
def test_invalid_rules_stop_the_mount(artifact: Artifact, tmp_path: Path, case: str) -> None:
    text, where = BAD_RULES[case]
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    mp = tmp_path / "mnt"
    mp.mkdir()
    result = mlfs("mount", artifact.manifest, mp, "--rules", rules, env=artifact.env, check=False)
    assert result.returncode == 1 and where in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert find_mount(mp) is None


def test_learned_prefetch_serves_first_reads_locally(artifact: Artifact, tmp_path: Path) -> None:
    doc = json.loads(artifact.manifest.read_text())
    doc["prefetch"] = []
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(doc))
    cache = tmp_path / "cache"
    want = {name: (artifact.local / name).read_bytes()[: 3 * CHUNK] for name in ("odd.bin", "exact.bin")}
    with mounted(manifest, tmp_path / "mnt", artifact.env, "--cache", cache, "--learn-prefetch",
                 "-o", "read_ahead_max=0") as mp:
        for name, data in want.items():
            with open(mp / name, "rb") as fh:
                assert fh.read(len(data)) == data
    learned = list((cache / "learned").iterdir())
    assert len(learned) == 1
    # A new machine with the same learned list but no chunks.
    for sub in (cache / "chunks").iterdir():
        for f in sub.iterdir():
            f.unlink()
    with mounted(manifest, tmp_path / "mnt", artifact.env, "--cache", cache, "--learn-prefetch",
                 "--wait-prefetch", "-o", "read_ahead_max=0") as mp:
        before = artifact.server.get_count(artifact.bucket)
        for name, data in want.items():
            with open(mp / name, "rb") as fh:
                assert fh.read(len(data)) == data
        assert artifact.server.get_count(artifact.bucket) == before
        assert status(mp, artifact.env)["policy"]["rules"]["learned-prefetch"]["prefetch_used_bytes"] > 0


@pytest.mark.expect_warnings
def test_reload_keeps_old_rules_when_the_new_file_is_invalid(artifact: Artifact, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - id: pin-config\n    priority: 5\n"
                     "    conditions: [{property: file.name, operator: eq, value: config.json}]\n"
                     "    actions: {pin: true}\n")
    cache = tmp_path / "cache"
    with mounted(artifact.manifest, tmp_path / "mnt", artifact.env, "--cache", cache, "--rules", rules) as mp:
        rules.write_text("rules: [ {id: broken\n")
        mlfs("reload", mp, env=artifact.env)
        pid = daemon_pid(mp)
        deadline = time.monotonic() + 10
        log = cache / "mount.log"
        while "keeping the old rules" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert daemon_pid(mp) == pid
        assert (mp / "config.json").read_bytes() == (artifact.local / "config.json").read_bytes()
