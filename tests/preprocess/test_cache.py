"""The result cache on a chunk store: whole entries or none, missing or damaged chunks are misses."""

from __future__ import annotations

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

    from mlfs.preprocess.work import compute

    if job.data.startswith(b"KILLS-THE-WORKER"):
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


def test_a_rerun_leaves_identical_local_outputs_alone_and_rewrites_changed_ones(tmp_path: Path) -> None:
    src = _png_dir(tmp_path / "images", 4, 50)
    pipeline = load_pipeline("thumbnail-webp", ["resize.size=4"])
    dest = tmp_path / "out"

    def run():  # type: ignore[no-untyped-def]
        return Run(pipeline, LocalInput(str(src)), LocalOutput(str(dest)),
                   ResultCache(ChunkStore(tmp_path / "cache")), workers=2).run()

    first = run()
    assert (first.done, first.written) == (4, 4)
    original = (dest / "2.webp").read_bytes()
    again = run()
    assert (again.cached, again.decoded, again.written) == (4, 0, 0), "identical outputs must not be written again"
    (dest / "2.webp").write_bytes(b"edited by hand")
    third = run()
    assert (third.cached, third.decoded, third.written) == (4, 0, 1), "only the changed output is written again"
    assert (dest / "2.webp").read_bytes() == original, "the changed output must hold the result again"


def _log_records(root: Path, name: str) -> int:
    return sum(1 for line in (root / "preprocess" / "results" / f"{name}.log").read_bytes().split(b"\n") if line.strip())


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


def test_compaction_forgets_entries_whose_chunks_were_evicted(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlfs.preprocess.cache.COMPACT_MIN_RECORDS", 20)
    store = ChunkStore(tmp_path)
    cache = ResultCache(store)
    first = cache.put(f"d{0:063x}", b"evicted later")
    assert cache.describe(first.key) == first  # the log is read with one entry
    store.discard(first.chunks[0])  # as eviction does: no drop record is written
    kept = [cache.put(f"d{i:063x}", f"kept {i}".encode()) for i in range(1, 25)]
    assert cache.describe(first.key) is None, "compaction must forget an entry whose chunk is gone"
    assert _log_records(tmp_path, "d") == 24
    assert [ResultCache(ChunkStore(tmp_path)).lookup(e.key) for e in kept] == kept


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
