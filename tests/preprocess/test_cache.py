"""The result cache on a chunk store: whole entries or none, missing or damaged chunks are misses."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlfs.preprocess.cache import ResultCache
from mlfs.preprocess.locations import LocalInput, LocalOutput
from mlfs.preprocess.pipeline import load_pipeline
from mlfs.preprocess.runner import Run
from mlfs.store.chunks import ChunkStore

KEY = "12" * 32


def _png_dir(root: Path, count: int, step: int) -> Path:
    """`count` flat 8x8 PNGs (grey levels 0, step, 2*step, ...) in a new directory."""
    root.mkdir()
    for i in range(count):
        out = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), i * step, np.uint8)).save(out, format="PNG")
        (root / f"{i}.png").write_bytes(out.getvalue())
    return root


def test_put_lookup_read(tmp_path: Path) -> None:
    cache = ResultCache(ChunkStore(tmp_path))
    entry = cache.put(KEY, b"result bytes")
    found = cache.lookup(KEY)
    assert found == entry and cache.read(found) == b"result bytes"
    assert cache.stats()["results"] == 1 and cache.stats()["bytes"] == len(b"result bytes")


def test_missing_chunk_is_a_miss_and_drops_the_entry(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    cache = ResultCache(store)
    entry = cache.put(KEY, b"result bytes")
    store.discard(entry.chunks[0])
    assert cache.lookup(KEY) is None, "an entry whose chunk is gone must be a miss"
    assert cache.stats()["results"] == 0, "the stale entry must be dropped"


@pytest.mark.expect_warnings  # the store logs the quarantine
def test_damaged_chunk_is_a_miss(tmp_path: Path) -> None:
    cache = ResultCache(ChunkStore(tmp_path))
    entry = cache.put(KEY, b"result bytes")
    path = ChunkStore(tmp_path).path(entry.chunks[0])
    path.write_bytes(b"result bytez")  # same size, different content; the xattr checksum no longer matches
    assert ResultCache(ChunkStore(tmp_path)).lookup(KEY) is None, "damaged bytes must never be served as a result"


def test_clear_forgets_and_frees(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    cache = ResultCache(store)
    entry = cache.put(KEY, b"result bytes")
    assert cache.clear() == 1
    assert cache.lookup(KEY) is None and not store.contains(entry.chunks[0])


def test_destination_inside_the_source_is_not_read_as_input(tmp_path: Path) -> None:
    src = _png_dir(tmp_path / "images", 3, 40)
    pipeline = load_pipeline("thumbnail-webp", ["resize.size=4"])
    for _ in range(2):
        stats = Run(pipeline, LocalInput(str(src)), LocalOutput(str(src / "thumbs")),
                    ResultCache(ChunkStore(tmp_path / "cache")), workers=1).run()
        assert (stats.total, stats.failed) == (3, 0), "outputs of the first run must not become inputs"


def _dies_on_marker(job):  # type: ignore[no-untyped-def]
    """Stands in for a decoder crash: the worker process exits without a word."""
    import os

    from mlfs.preprocess.work import compute, job_input

    if job_input(job).startswith(b"KILLS-THE-WORKER"):
        os._exit(3)
    return compute(job)


def test_an_image_that_kills_its_worker_fails_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlfs.preprocess.runner as runner

    # Pickled by name, so the fork server's fresh worker runs it too.
    monkeypatch.setattr(runner, "compute", _dies_on_marker)
    src = _png_dir(tmp_path / "images", 6, 30)
    (src / "poison.png").write_bytes(b"KILLS-THE-WORKER")
    stats = Run(load_pipeline("thumbnail-webp", ["resize.size=4"]), LocalInput(str(src)),
                LocalOutput(str(tmp_path / "out")), ResultCache(ChunkStore(tmp_path / "cache")), workers=2).run()
    assert (stats.done, stats.failed) == (6, 1), "only the image that kills its worker may fail"
    assert stats.failures == [(str(src / "poison.png"), "a worker process died while processing it")]


@pytest.mark.parametrize("replacement", ["same size, other bytes", "a larger file", "a FIFO"])
def test_a_local_input_changed_after_it_was_hashed_fails_and_caches_nothing(tmp_path: Path, replacement: str) -> None:
    import hashlib
    import os
    import signal

    from mlfs.preprocess.steps import ImageFailure
    from mlfs.preprocess.work import Job, compute

    src = _png_dir(tmp_path / "images", 2, 40)
    original = (src / "0.png").read_bytes()
    hashed = hashlib.sha256(original).hexdigest()
    # Replaced between the parent's hashing and the worker's reading:
    (src / "0.png").unlink()
    if replacement == "a FIFO":
        os.mkfifo(src / "0.png")  # nobody writes: a blocking open would wait forever
    else:
        same_size = original[:-1] + bytes([original[-1] ^ 1])
        (src / "0.png").write_bytes(same_size if replacement == "same size, other bytes" else original * 1000)
    cache = ResultCache(ChunkStore(tmp_path / "cache"))
    pipeline = load_pipeline("thumbnail-webp", ["resize.size=4"])
    job = Job(pipeline.sample_json(), None, str(src / "0.png"), hashed, len(original), pipeline.result_key(hashed),
              str(cache.store.root), None, want_md5=False, out_path=str(tmp_path / "0.webp"), return_bytes=False)
    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("reading the replaced input hung")

    previous = signal.signal(signal.SIGALRM, hung)  # a hang fails the test instead of the suite
    signal.alarm(30)
    try:
        with pytest.raises(ImageFailure, match=r"^it changed while the run was reading it; run again$"):
            compute(job)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert cache.describe(job.key) is None and not (tmp_path / "0.webp").exists(), "nothing may be kept for it"


def test_entries_are_shared_by_every_cache_on_the_store(tmp_path: Path) -> None:
    writer, reader = ResultCache(ChunkStore(tmp_path)), ResultCache(ChunkStore(tmp_path))
    assert reader.lookup(KEY) is None
    entry = writer.put(KEY, b"result bytes")
    assert reader.lookup(KEY) == entry, "an entry another process appended must be found"
    reader._drop(KEY)
    assert writer.describe(KEY) is None, "a drop another process appended must be seen"
    writer.put(KEY, b"result bytes")
    assert reader.clear() == 1 and writer.describe(KEY) is None, "a clear must be seen by every process"


def test_a_record_cut_short_damages_no_other_record(tmp_path: Path) -> None:
    cache = ResultCache(ChunkStore(tmp_path))
    first = cache.put("a1" * 32, b"first")
    with open(tmp_path / "preprocess" / "results" / "a.log", "ab") as log:
        log.write(b'\n{"key":"a2a2","size":')  # what a full disk leaves of a record
    second = cache.put("a3" * 32, b"second")
    fresh = ResultCache(ChunkStore(tmp_path))
    assert (fresh.lookup("a1" * 32), fresh.lookup("a3" * 32)) == (first, second), \
        "the records before and after a torn one must both be read"
    assert fresh.stats()["results"] == 2, "the torn record must be skipped"


def _local_run(tmp_path: Path, src: Path):  # type: ignore[no-untyped-def]
    """A 2-worker thumbnail run from `src` into `tmp_path/out`, cached in `tmp_path/cache`."""
    return Run(load_pipeline("thumbnail-webp", ["resize.size=4"]), LocalInput(str(src)),
               LocalOutput(str(tmp_path / "out")), ResultCache(ChunkStore(tmp_path / "cache")), workers=2).run()


def test_a_rerun_leaves_identical_local_outputs_alone_and_rewrites_changed_ones(tmp_path: Path) -> None:
    src = _png_dir(tmp_path / "images", 4, 50)
    dest = tmp_path / "out"
    first = _local_run(tmp_path, src)
    assert (first.done, first.written) == (4, 4)
    original = (dest / "2.webp").read_bytes()
    again = _local_run(tmp_path, src)
    assert (again.cached, again.decoded, again.written) == (4, 0, 0), "identical outputs must not be written again"
    (dest / "2.webp").write_bytes(b"edited by hand")
    third = _local_run(tmp_path, src)
    assert (third.cached, third.decoded, third.written) == (4, 0, 1), "only the changed output is written again"
    assert (dest / "2.webp").read_bytes() == original, "the changed output must hold the result again"


def test_a_local_rerun_recomputes_a_failed_input_and_takes_the_rest_from_the_cache(tmp_path: Path) -> None:
    src = _png_dir(tmp_path / "images", 4, 50)
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature, then nothing valid
    first = _local_run(tmp_path, src)
    assert (first.done, first.failed, first.decoded) == (4, 1, 5), "the bad input is handed to decode too"
    (tmp_path / "out" / "1.webp").unlink()
    again = _local_run(tmp_path, src)
    assert (again.done, again.cached, again.failed, again.decoded, again.written) == (0, 4, 1, 1, 1), \
        "only the bad input is decoded again; the deleted output is written from the cache"
    assert [reason for _, reason in again.failures] == [reason for _, reason in first.failures]


def _lookup_job(pipeline, src: Path, cache: ResultCache, out: Path, size: int):  # type: ignore[no-untyped-def]
    from mlfs.preprocess.work import Job

    return Job(pipeline.sample_json(), None, str(src), None, size, None, str(cache.store.root), None,
               want_md5=False, out_path=str(out), return_bytes=False)


def test_a_worker_looks_a_local_input_up_in_the_cache_itself(tmp_path: Path) -> None:
    import hashlib

    from mlfs.preprocess.work import Failed, compute, compute_many

    src = _png_dir(tmp_path / "images", 2, 40)
    cache = ResultCache(ChunkStore(tmp_path / "cache"))
    pipeline = load_pipeline("thumbnail-webp", ["resize.size=4"])
    size = (src / "0.png").stat().st_size
    job = _lookup_job(pipeline, src / "0.png", cache, tmp_path / "0.webp", size)
    first = compute(job)
    key = pipeline.result_key(hashlib.sha256((src / "0.png").read_bytes()).hexdigest())
    assert (first.decoded, first.written, first.entry.key) == (True, True, key), \
        "a miss is computed and cached under the key the parent would use"
    assert compute(job) == type(first)(first.entry, None, decoded=False, written=False), \
        "an output already holding the cached result is left alone"
    (tmp_path / "0.webp").unlink()
    assert compute(job).written and (tmp_path / "0.webp").read_bytes() == cache.read(first.entry), \
        "a missing output is written from the cache without decoding"
    listed_smaller = _lookup_job(pipeline, src / "1.png", cache, tmp_path / "1.webp", size - 1)
    gone = _lookup_job(pipeline, src / "gone.png", cache, tmp_path / "gone.webp", size)
    assert compute_many(compute, [listed_smaller, gone]) == [
        Failed("it changed while the run was reading it; run again", False),
        Failed("cannot read: No such file or directory", False),
    ], "an input that cannot be read as listed fails before decoding"
    assert not (tmp_path / "1.webp").exists() and cache.stats()["results"] == 1, "nothing may be kept for them"


def test_an_outputs_mark_fits_in_the_inode(tmp_path: Path) -> None:
    import hashlib
    import os

    from mlfs.preprocess.work import holds, write_atomically

    data = b"a result" * 1000
    sha256 = hashlib.sha256(data).hexdigest()
    write_atomically(tmp_path / "out.npy", data, sha256=sha256)
    mark = os.getxattr(tmp_path / "out.npy", "user.mlfs.result")
    assert len(mark) <= 60, "ext4 keeps at most 60 bytes of value inside a 256-byte inode"
    assert holds(tmp_path / "out.npy", sha256, len(data))
    assert not holds(tmp_path / "out.npy", hashlib.sha256(b"other").hexdigest(), len(data))
    assert not holds(tmp_path / "out.npy", sha256, len(data) + 1)


def _log_records(root: Path, name: str) -> int:
    """Result and drop records in one log (its first line names its generation)."""
    lines = (root / "preprocess" / "results" / f"{name}.log").read_bytes().split(b"\n")
    return sum(1 for line in lines if line.startswith(b'{"key":'))


def test_a_log_full_of_drops_is_compacted_to_its_live_entries(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlfs.preprocess.cache.COMPACT_MIN_RECORDS", 20)
    store = ChunkStore(tmp_path)
    writer, other = ResultCache(store), ResultCache(ChunkStore(tmp_path))
    keys = [f"c{i:063x}" for i in range(12)]
    entries = {k: writer.put(k, f"result {k}".encode()) for k in keys}
    assert other.describe(keys[0]) == entries[keys[0]]  # `other` has read the log as it was
    for k in keys[:9]:
        writer._drop(k)  # 12 puts + 9 drops: 21 records for 3 live entries
    assert writer.describe(keys[-1]) == entries[keys[-1]]  # this read compacts
    assert _log_records(tmp_path, "c") == 3, "the compacted log must hold exactly the live entries"
    assert [other.describe(k) for k in keys] == [None] * 9 + [entries[k] for k in keys[9:]], \
        "a process that read the old log must see the compacted one"
    later = writer.put(f"c{99:063x}", b"after")
    assert other.lookup(later.key) == later, "a record appended after the compaction must be found"
    assert writer.lookup(later.key) == later, "the compacting process must read on after its own compaction"


def test_compaction_keeps_entries_whose_chunks_were_evicted(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The runner describes such an entry to recognise an output already in place.
    monkeypatch.setattr("mlfs.preprocess.cache.COMPACT_MIN_RECORDS", 20)
    store = ChunkStore(tmp_path)
    cache = ResultCache(store)
    evicted = cache.put(f"d{0:063x}", b"evicted later")
    store.discard(evicted.chunks[0])  # as eviction does: no drop record is written
    doomed = [cache.put(f"d{i:063x}", b"dropped") for i in range(1, 30)]
    for entry in doomed:
        cache._drop(entry.key)
    assert cache.describe(evicted.key) == evicted, "compaction must keep an entry whose chunk was evicted"
    assert _log_records(tmp_path, "d") == 1
    assert ResultCache(ChunkStore(tmp_path)).lookup(evicted.key) is None, "its lookup must still be a miss"


def _two_compactions(writer: ResultCache, first: list) -> list:
    """Drop most of `first`, compact, add 100 entries, drop 60 of them, compact again; the
    entries left. The second batch stores no new chunk file, so on ext4 the second new
    log gets the inode number the first log had."""
    for entry in first[5:]:
        writer._drop(entry.key)
    writer.describe(first[0].key)  # compaction 1
    second = [writer.put(f"f{i:063x}", b"first") for i in range(100, 200)]
    for entry in second[:60]:
        writer._drop(entry.key)
    writer.describe(first[0].key)  # compaction 2: a longer file than the one the reader read
    return first[:5] + second[60:]


def _reader_sees_exactly(reader: ResultCache, root: Path, every: list, live: list) -> None:
    # Whatever the file system did, the reader is made to find the inode number it read:
    # only the log's generation line can tell it the file is another one.
    reader._logs["f"].inode = (root / "preprocess" / "results" / "f.log").stat().st_ino
    assert [reader.describe(e.key) for e in every] == [e if e in live else None for e in every], \
        "a reader of the replaced log must read the new one from its start"


def test_a_reader_two_compactions_behind_reads_the_new_log_from_its_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlfs.preprocess.cache.COMPACT_MIN_RECORDS", 20)
    writer, reader = ResultCache(ChunkStore(tmp_path)), ResultCache(ChunkStore(tmp_path))
    first = [writer.put(f"f{i:063x}", b"first") for i in range(30)]
    assert reader.describe(first[0].key) == first[0]  # the reader has read 30 records
    live = _two_compactions(writer, first)
    assert _log_records(tmp_path, "f") == 45
    _reader_sees_exactly(reader, tmp_path, first + [e for e in live if e not in first], live)


def test_a_reader_of_a_log_without_generation_line_notices_its_replacement(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlfs.preprocess.cache.COMPACT_MIN_RECORDS", 20)
    writer = ResultCache(ChunkStore(tmp_path))
    first = [writer.put(f"f{i:063x}", b"first") for i in range(30)]
    log = tmp_path / "preprocess" / "results" / "f.log"
    log.write_bytes(log.read_bytes().split(b"\n", 1)[1])  # as logs were written before generation lines
    reader = ResultCache(ChunkStore(tmp_path))
    assert reader.describe(first[0].key) == first[0]
    live = _two_compactions(writer, first)
    _reader_sees_exactly(reader, tmp_path, first + [e for e in live if e not in first], live)


def test_a_clear_is_not_undone_by_a_compaction_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    from mlfs.preprocess import cache as cache_module

    monkeypatch.setattr(cache_module, "COMPACT_MIN_RECORDS", 20)
    compactor, clearer = ResultCache(ChunkStore(tmp_path)), ResultCache(ChunkStore(tmp_path))
    entries = [compactor.put(f"a{i:063x}", b"kept") for i in range(30)]
    for entry in entries[10:]:
        compactor._drop(entry.key)
    real_generation = cache_module._new_generation
    clearing = threading.Thread(target=clearer.clear)

    def generation_while_clearing() -> bytes:
        # Called by the compaction once it has read the log, before it writes the new one.
        clearing.start()  # a clear from another cache
        time.sleep(0.3)
        return real_generation()

    monkeypatch.setattr(cache_module, "_new_generation", generation_while_clearing)
    compactor.describe(entries[0].key)  # compacts
    clearing.join(10)
    assert not clearing.is_alive()
    fresh = ResultCache(ChunkStore(tmp_path))
    assert [fresh.describe(e.key) for e in entries[:10]] == [None] * 10, "cleared entries came back"


@pytest.mark.expect_warnings
def test_a_failed_compaction_is_said_once_and_tried_again_when_the_log_has_doubled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from mlfs.preprocess import cache as cache_module

    monkeypatch.setattr(cache_module, "COMPACT_MIN_RECORDS", 20)
    cache = ResultCache(ChunkStore(tmp_path))
    entries = [cache.put(f"b{i:063x}", b"kept") for i in range(30)]
    for entry in entries[5:]:
        cache._drop(entry.key)

    tries = []

    def full(fd: int) -> None:
        tries.append(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.os, "fsync", full)
    for _ in range(3):
        assert cache.describe(entries[0].key) == entries[0]
    warnings = [r for r in caplog.records if "cannot compact" in r.getMessage()]
    assert len(warnings) == 1, "a failing compaction must be said once"
    assert len(tries) == 1, "a failed compaction must not be tried again before the log doubles"
    assert _log_records(tmp_path, "b") == 55 and not list((tmp_path / "preprocess" / "results").glob(".*")), \
        "a failed compaction must leave the log and nothing else"
    monkeypatch.undo()
    monkeypatch.setattr(cache_module, "COMPACT_MIN_RECORDS", 20)
    more = [cache.put(f"b{i:063x}", b"kept") for i in range(100, 160)]
    for entry in more[20:]:
        cache._drop(entry.key)
    assert cache.describe(more[0].key) == more[0]  # 155 records, past twice the 55 it failed at
    assert _log_records(tmp_path, "b") == 25, "the compaction must be tried again once the log doubled"


def _append_many(root: str, prefix: str, count: int) -> None:
    cache = ResultCache(ChunkStore(root))
    for i in range(count):
        cache.put(f"e{prefix}{i:062x}", f"{prefix} {i}".encode())


def test_no_record_is_lost_to_compactions_racing_appenders(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing
    import time

    monkeypatch.setattr("mlfs.preprocess.cache.COMPACT_MIN_RECORDS", 8)
    compactor = ResultCache(ChunkStore(tmp_path))
    doomed = [compactor.put(f"e{i:063x}", b"dropped") for i in range(200)]
    for entry in doomed:
        compactor._drop(entry.key)  # every read below finds dead records to compact away
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_append_many, args=(str(tmp_path), p, 300)) for p in "ab"]
    for w in writers:
        w.start()
    compactions = 0
    deadline = time.monotonic() + 60
    while any(w.is_alive() for w in writers) and time.monotonic() < deadline:
        inode = (tmp_path / "preprocess" / "results" / "e.log").stat().st_ino
        for entry in doomed[:50]:
            compactor._drop(entry.key)  # keeps giving the log dead records
        compactor.describe("e" * 64)
        compactions += (tmp_path / "preprocess" / "results" / "e.log").stat().st_ino != inode
    for w in writers:
        w.join(10)
        assert w.exitcode == 0
    assert compactions >= 3, f"the log must have been compacted while the writers appended ({compactions})"
    fresh = ResultCache(ChunkStore(tmp_path))
    missing = [f"{p}{i}" for p in "ab" for i in range(300) if fresh.describe(f"e{p}{i:062x}") is None]
    assert missing == [], f"records lost to a compaction: {missing[:10]}"


def _aligned_bytes(data: bytes) -> memoryview:
    import mmap

    buf = mmap.mmap(-1, len(data))
    buf[:] = data
    return memoryview(buf)


@pytest.mark.parametrize("full_writes", [1, pytest.param(99, marks=pytest.mark.expect_warnings)])
def test_a_two_step_put_meeting_a_full_disk_leaves_no_partial_chunk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_writes: int) -> None:
    """The disk fills during the bulk write: the commit evicts and tries once more (as a
    one-step put); if the disk is still full, nothing is recorded and no temp file stays."""
    import hashlib
    import os

    from mlfs.store import direct_io

    data = _aligned_bytes(os.urandom(3 * 4096 + 40))
    digest = hashlib.sha256(data).hexdigest()
    cache = ResultCache(ChunkStore(tmp_path))
    pending = cache.begin_put(KEY, data, want_md5=False, aligned=True, sha256=digest)
    real_write = os.write
    failures = []

    def filling(fd: int, piece: object) -> int:
        if len(failures) < full_writes:
            failures.append(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, piece)

    monkeypatch.setattr(direct_io.os, "write", filling)
    pending.bulk()
    if full_writes == 1:
        entry = pending.commit()
        assert cache.read(entry) == bytes(data), "the retried put must store the whole result"
    else:
        with pytest.raises(OSError) as raised:
            pending.commit()
        assert raised.value.errno == errno.ENOSPC, "a disk that stays full must be reported as full"
        assert cache.describe(KEY) is None, "a result that could not be stored must not be recorded"
    assert list(cache.store.tmp_dir.iterdir()) == [], "no temp file may stay behind"
