"""Chunk store: atomic publication, verification, quarantine, eviction, pinning."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from mlfs.errors import ChunkIntegrityError, StoreError
from mlfs.store import ChunkStore

MIB = 1 << 20


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_put_and_read(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    data = os.urandom(100_000)
    digest = store.put_bytes(data, sha(data))
    assert digest == sha(data) and store.contains(digest)
    assert store.pread(digest, 10, 20) == data[10:30]
    assert store.read_all(digest) == data
    assert list(store.tmp_dir.iterdir()) == []


def test_wrong_digest_is_rejected_and_leaves_nothing(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    with pytest.raises(ChunkIntegrityError):
        store.put_bytes(b"hello", sha(b"other"))
    assert not store.contains(sha(b"hello")) and not store.contains(sha(b"other"))
    assert list(store.tmp_dir.iterdir()) == []


def test_abandoned_writer_leaves_nothing(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    with store.writer(sha(b"abc")) as w:
        w.write(b"ab")  # interrupted before commit
    assert list(store.tmp_dir.iterdir()) == [] and not store.contains(sha(b"abc"))


@pytest.mark.expect_warnings
@pytest.mark.parametrize("xattrs", [True, False])
def test_corruption_is_detected_and_quarantined(tmp_path: Path, xattrs: bool) -> None:
    store = ChunkStore(tmp_path)
    data = os.urandom(4096)
    digest = store.put_bytes(data)
    p = store.path(digest)
    if not xattrs:
        os.removexattr(p, "user.mlfs.chunk")
    with open(p, "r+b") as fh:
        fh.seek(100)
        fh.write(bytes([data[100] ^ 0xFF]))  # a byte that differs, whatever the random data
    fresh = ChunkStore(tmp_path)  # a new process: nothing verified yet
    if not xattrs:
        fresh._xattrs = False
    assert fresh.ensure_verified(digest) is False
    assert not fresh.contains(digest)
    assert len(list(fresh.quarantine_dir.iterdir())) == 1
    assert fresh.statistics().quarantined_chunks == 1


def test_a_chunks_mark_fits_in_the_inode_and_older_marks_still_count(tmp_path: Path) -> None:
    import xxhash

    store = ChunkStore(tmp_path)
    data = os.urandom(4096)
    digest = store.put_bytes(data)
    p = store.path(digest)
    mark = os.getxattr(p, "user.mlfs.chunk")
    # ext4 keeps at most 60 bytes of value inside a 256-byte inode.
    assert mark == f"{digest[:16]}:{xxhash.xxh3_128_hexdigest(data)}".encode() and len(mark) <= 60
    os.removexattr(p, "user.mlfs.chunk")
    os.setxattr(p, "user.mlfs.xxh3", f"{digest}:{xxhash.xxh3_128_hexdigest(data)}".encode())
    assert ChunkStore(tmp_path).ensure_verified(digest) is True, "an older store's mark must still count"
    os.setxattr(p, "user.mlfs.xxh3", f"{digest}:{'0' * 32}".encode())
    assert ChunkStore(tmp_path)._check(p, digest) is False, "an older store's mark must still be checked"


@pytest.mark.expect_warnings
def test_a_chunk_file_under_another_chunks_name_is_caught(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    a, b = store.put_bytes(os.urandom(4096)), store.put_bytes(os.urandom(4096))
    # Swapped by hand: each file keeps its own (valid) checksum attribute.
    os.rename(store.path(a), tmp_path / "a")
    os.rename(store.path(b), store.path(a))
    os.rename(tmp_path / "a", store.path(b))
    fresh = ChunkStore(tmp_path)
    assert fresh.ensure_verified(a) is False
    assert fresh.ensure_verified(b) is False


def test_intact_chunk_verifies_in_a_new_store(tmp_path: Path) -> None:
    digest = ChunkStore(tmp_path).put_bytes(b"x" * 5000)
    assert ChunkStore(tmp_path).ensure_verified(digest)


def test_lru_eviction_keeps_pinned_and_recent(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, budget=64 * MIB)
    blobs = [bytes([i]) * (16 * MIB) for i in range(4)]
    digests = [store.put_bytes(b) for b in blobs]
    for i, d in enumerate(digests):  # make the order unambiguous
        os.utime(store.path(d), (1000 + i, 1000 + i))
    store.pin([digests[0]])
    fifth = store.put_bytes(b"\x09" * (16 * MIB))
    assert store.contains(digests[0]), "pinned chunk was evicted"
    assert not store.contains(digests[1]), "oldest unpinned chunk should go first"
    assert all(store.contains(d) for d in digests[2:] + [fifth])
    assert store.statistics().bytes <= 64 * MIB


def test_a_full_store_does_not_scan_itself_for_every_chunk_written(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Each eviction lists and stats the whole store; it frees a little more than it
    # must (1/32 of the budget) so that the next few chunks fit without another.
    store = ChunkStore(tmp_path, budget=64 * 64 * 1024)
    for i in range(64):
        store.put_bytes(i.to_bytes(4, "big") * (16 * 1024))  # 64 KiB each: the budget exactly
    scans = []
    real_evict = store._evict
    monkeypatch.setattr(store, "_evict", lambda need, slack: (scans.append(need), real_evict(need, slack)))
    for i in range(64, 128):
        store.put_bytes(i.to_bytes(4, "big") * (16 * 1024))
    assert store.statistics().bytes <= 64 * 64 * 1024, "the store must stay within its budget"
    assert len(scans) <= 22, f"64 chunks written over the budget caused {len(scans)} scans of the store"


def test_stale_temp_files_are_cleaned(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    old = store.tmp_dir / "dead-writer"
    old.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    young = store.tmp_dir / "live-writer"
    young.write_bytes(b"partial")
    ChunkStore(tmp_path)
    assert not old.exists() and young.exists()


def test_unwritable_cache_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cache directory"):
        ChunkStore(blocker / "sub")


def test_authoritative_store_is_never_evicted(tmp_path: Path) -> None:
    ChunkStore(tmp_path).mark_authoritative()  # what the gateway does with its store
    mount_view = ChunkStore(tmp_path, budget=64 * MIB)  # a mount sharing it, with a budget
    digests = [mount_view.put_bytes(bytes([i]) * (16 * MIB)) for i in range(6)]
    mount_view.demote(digests[0])
    assert all(mount_view.contains(d) for d in digests)


def test_discard_updates_accounting(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    digest = store.put_bytes(b"z" * 1000)
    store.pin([digest])
    store.discard(digest)
    assert not store.contains(digest) and store.usage == 0 and not store.is_pinned(digest)
    store.discard(digest)  # already gone: nothing to do


def test_a_chunk_being_read_is_not_evicted_and_its_descriptor_outlives_eviction(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path, budget=64 * MIB)
    first = bytes([1]) * (16 * MIB)
    held = store.put_bytes(first)
    os.utime(store.path(held), (1000, 1000))  # the oldest: first in line for eviction
    with store.reading(held) as fd:
        for i in range(2, 7):
            store.put_bytes(bytes([i]) * (16 * MIB))
        assert store.contains(held), "a chunk being read was evicted"
        assert os.pread(fd, 16, 5) == first[5:21]
    assert store.statistics().skipped_in_use > 0
    store.put_bytes(b"\x09" * (16 * MIB))
    assert not store.contains(held), "once no read holds it, the oldest chunk goes first"


def test_usage_and_pins_are_shared_by_every_store_on_the_directory(tmp_path: Path) -> None:
    mount_a = ChunkStore(tmp_path, budget=64 * MIB)
    mount_b = ChunkStore(tmp_path, budget=64 * MIB)
    pinned = mount_a.put_bytes(b"\x01" * (16 * MIB))
    mount_a.pin([pinned])
    os.utime(mount_a.path(pinned), (1000, 1000))
    for i in range(2, 8):
        mount_b.put_bytes(bytes([i]) * (16 * MIB))
    assert mount_b.contains(pinned), "another store's pin was not honoured"
    assert mount_a.usage == mount_b.usage <= 64 * MIB
    mount_a.unpin([pinned])
    mount_b.put_bytes(b"\x09" * (16 * MIB))
    assert not mount_b.contains(pinned), "an unpinned old chunk is evicted"


def test_a_dead_writers_temp_file_goes_even_while_it_is_an_unreaped_zombie(tmp_path: Path) -> None:
    # In a container whose init does not reap, a killed mount stays a zombie for good;
    # its temp files and pins must not outlive it.
    import subprocess

    from mlfs.store.chunks import _PID_NAMESPACE

    ChunkStore(tmp_path)
    live = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{dead.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        temps = {p: tmp_path / "tmp" / f"{p.pid}@{_PID_NAMESPACE}.1.1" for p in (live, dead)}
        for f in temps.values():
            f.write_bytes(b"partial")
        ChunkStore(tmp_path)  # opening a store removes dead writers' temp files
        assert temps[live].exists(), "a live writer's temp file was removed"
        assert not temps[dead].exists(), "a zombie writer's temp file was kept"
    finally:
        live.kill()
        live.wait()
        dead.wait()
