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
