"""A chunk store shared and squeezed: eviction racing reads, several processes, a full disk.

Every read is compared with the bytes uploaded; the store's budget and pins are checked
on disk, where every process sharing the store sees them.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.fuse.conftest import Artifact
from tests.gateway.server import start_gateway
from tests.mlfs_cli import mlfs, mounted

MIB = 1 << 20
BUDGET = 64 * MIB  # the smallest --cache-size allowed
# A store may exceed its budget by the chunks being read at the moment it evicts (they
# are never evicted); with 1 MiB chunks and the readers below that is a few MiB.
IN_USE_SLACK = 24 * MIB


def make_object(artifact: Artifact, tmp: Path, name: str, size: int, chunk: str = "1M") -> tuple[Path, bytes]:
    """Upload `size` random bytes as `scratch/NAME/v1/NAME.bin` in the artifact's bucket.

    No bucket of its own: each bucket takes volumes of the suite's shared SeaweedFS.
    """
    data = os.urandom(size)
    client = artifact.server.client()
    client.put_object(Bucket=artifact.bucket, Key=f"scratch/{name}/v1/{name}.bin", Body=data)
    manifest = tmp / f"{name}.json"
    mlfs("generate", f"s3://{artifact.bucket}/scratch/{name}/v1/", "-o", manifest, "--chunk-size", chunk, "-q",
         env=artifact.env)
    return manifest, data


def stored_bytes(cache: Path) -> int:
    return sum(f.stat().st_size for f in (cache / "chunks").rglob("*") if f.is_file())


def chunk_digests(manifest: Path, name: str) -> set[str]:
    return {c for f in json.loads(manifest.read_text())["files"] if f["path"] == name for c in f["chunks"]}


def present(cache: Path) -> set[str]:
    return {f.name for f in (cache / "chunks").rglob("*") if f.is_file()}


def status_when(mp: Path, env: dict[str, str], ready, limit: float = 20.0) -> dict:
    """The mount's published statistics once `ready(doc)` holds (published every 2 s), or the last."""
    deadline = time.monotonic() + limit
    while True:
        doc = json.loads(mlfs("status", "--json", mp, env=env).stdout)
        if ready(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(0.2)


def assert_clean_log(log: Path, allowed: tuple[str, ...] = ()) -> None:
    bad = [line for line in log.read_text().splitlines()
           if ("WARNING" in line or "ERROR" in line or "Traceback" in line)
           and not any(a in line for a in allowed)]
    assert not bad, "unexpected daemon log lines: " + " | ".join(bad)


def checked_reads(path: Path, want: bytes, readers: int, reads_each: int, seed: int) -> tuple[int, int]:
    """`readers` threads read random ranges (page cache dropped first); returns (reads, wrong bytes)."""
    wrong = [0] * readers
    done = [0] * readers
    errors: list[BaseException] = []

    def one(i: int) -> None:
        rng = random.Random(seed + i)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                for _ in range(reads_each):
                    size = rng.choice([4096, 65536, MIB, 3 * MIB])
                    off = rng.randrange(0, len(want) - size)
                    # Drop the kernel's copy so the read reaches the mount every time.
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    got = os.pread(fd, size, off)
                    expected = want[off:off + size]
                    if got != expected:
                        wrong[i] += sum(a != b for a, b in zip(got, expected, strict=False)) + abs(
                            len(got) - len(expected))
                    done[i] += 1
            finally:
                os.close(fd)
        except BaseException as exc:  # reported below, with the thread's outcome
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, f"a reader failed: {errors[0]!r}"
    return sum(done), sum(wrong)


def test_eviction_racing_16_readers_never_serves_a_wrong_byte(artifact: Artifact, tmp_path: Path,
                                                               fault_case) -> None:
    manifest, data = make_object(artifact, tmp_path, "race", 160 * MIB)
    cache, log = tmp_path / "cache", tmp_path / "mount.log"
    # Few buffers: most reads go to store files that eviction is deleting meanwhile.
    with mounted(manifest, tmp_path / "mnt", artifact.env, "--cache", cache, "--cache-size", "64M",
                 "--no-policy", "--log-file", log, "-o", "buffers=2") as mp:
        reads, wrong = checked_reads(mp / "race.bin", data, readers=16, reads_each=40, seed=1)
        stats = status_when(mp, artifact.env, lambda d: d["store"]["evicted_chunks"] > 0)
    evicted = stats["store"]["evicted_chunks"]
    fault_case.record(f"{reads} checked reads, {evicted} chunks evicted meanwhile", wrong_bytes=wrong)
    assert evicted > 0, "the budget never forced an eviction: the race was not exercised"
    assert stored_bytes(cache) <= BUDGET + IN_USE_SLACK
    assert_clean_log(log)


def test_two_mounts_and_a_gateway_share_one_budget_and_pins(artifact: Artifact, tmp_path: Path,
                                                           fault_case) -> None:
    gateway = start_gateway(tmp_path / "gw")
    try:
        gw = gateway.client()
        gw.create_bucket(Bucket="own")
        own = os.urandom(40 * MIB + 3)  # the gateway's data: the only copy is in the store
        gw.put_object(Bucket="own", Key="data.bin", Body=own)
        store = gateway.data_dir / "store"
        gateway_chunks = present(store)
        first, first_data = make_object(artifact, tmp_path, "first", 96 * MIB)
        second, second_data = make_object(artifact, tmp_path, "second", 96 * MIB)
        keep, keep_data = make_object(artifact, tmp_path, "keep", 8 * MIB)
        doc = json.loads(first.read_text())
        doc["files"] += json.loads(keep.read_text())["files"]
        first.write_text(json.dumps(doc))
        rules = tmp_path / "pin.yaml"
        rules.write_text("pin_budget: 16MiB\nrules:\n  - id: keep\n    priority: 500\n"
                         "    conditions: [{property: file.name, operator: eq, value: keep.bin}]\n"
                         "    actions: {pin: true}\n")
        logs = [tmp_path / "a.log", tmp_path / "b.log"]
        common = ("--cache", store, "--cache-size", "64M")
        with mounted(first, tmp_path / "a", artifact.env, *common, "--rules", rules, "--log-file", logs[0]) as a, \
                mounted(second, tmp_path / "b", artifact.env, *common, "--no-policy", "--log-file", logs[1]) as b:
            assert (a / "keep.bin").read_bytes() == keep_data
            gateway_wrong = [0]

            def gateway_load() -> None:
                deadline = time.monotonic() + 300
                for _ in range(6):
                    if time.monotonic() > deadline:
                        break
                    body = gw.get_object(Bucket="own", Key="data.bin")["Body"].read()
                    gateway_wrong[0] += body != own

            load = threading.Thread(target=gateway_load)
            load.start()
            reads_a, wrong_a = checked_reads(a / "first.bin", first_data, readers=4, reads_each=30, seed=2)
            reads_b, wrong_b = checked_reads(b / "second.bin", second_data, readers=4, reads_each=30, seed=3)
            for name, want, mp in (("first.bin", first_data, a), ("second.bin", second_data, b)):
                assert (mp / name).read_bytes() == want, f"{name} read in full differs"
            load.join(600)
            usage = stored_bytes(store)
            kept = present(store)
        wrong = wrong_a + wrong_b + gateway_wrong[0] * len(own)
        fault_case.record(f"{reads_a + reads_b} checked reads over 2 mounts + gateway GETs; "
                          f"store {usage // MIB} MiB for a 64 MiB budget", wrong_bytes=wrong)
        assert gateway_chunks <= kept, "a mount evicted a chunk of the gateway's own data"
        assert chunk_digests(keep, "keep.bin") <= kept, "a mount evicted the other mount's pinned chunks"
        # One budget for the store, not one per process: 2 × 96 MiB were read through it.
        assert usage <= BUDGET + IN_USE_SLACK
        assert gw.get_object(Bucket="own", Key="data.bin")["Body"].read() == own
        for log in logs:
            assert_clean_log(log)
    finally:
        gateway.stop()


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 24 MiB tmpfs made for the test (root), unmounted afterwards."""
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


# The daemon warns once that the store is full; assert_clean_log below allows that line only.
@pytest.mark.expect_warnings
def test_full_disk_serves_verified_bytes_from_memory(artifact: Artifact, tmp_path: Path, small_fs: Path,
                                                     fault_case) -> None:
    from mlfs.store import ChunkStore

    manifest, data = make_object(artifact, tmp_path, "full", 48 * MIB)
    cache = small_fs / "cache"
    ChunkStore(cache).close()  # the store's own files exist; then the disk fills up
    # Leave less than one chunk free: no write fits, and nothing stored can be evicted.
    free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
    with open(small_fs / "filler", "wb") as fh:
        fh.write(b"\0" * (free - 256 * 1024))
    log = tmp_path / "mount.log"
    with mounted(manifest, tmp_path / "mnt", artifact.env, "--cache", cache, "--no-policy",
                 "--log-file", log) as mp:
        got = (mp / "full.bin").read_bytes()
        reads, wrong = checked_reads(mp / "full.bin", data, readers=4, reads_each=10, seed=4)
        stats = status_when(mp, artifact.env, lambda d: d["fetch"]["unstored"] > 0)
    wrong += sum(a != b for a, b in zip(got, data, strict=False)) + abs(len(got) - len(data))
    fault_case.record(f"whole file + {reads} reads on a full disk, served from memory", wrong_bytes=wrong)
    assert got == data
    assert stats["fetch"]["unstored"] > 0, "the disk never filled: ENOSPC was not exercised"
    full_lines = [line for line in log.read_text().splitlines() if "full even after eviction" in line]
    assert len(full_lines) == 1, "the full store is logged exactly once"
    assert_clean_log(log, allowed=("full even after eviction",))
