"""Fetcher behaviour with an in-process fake S3 (the FUSE tests cover the real one)."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import botocore.exceptions
import pytest
import trio
import trio.testing
import urllib3.exceptions

from mlfs.errors import ChunkIntegrityError, FetchError, ObjectChanged
from mlfs.fetch import ChunkFetcher, RetryPolicy
from mlfs.manifest.model import FileEntry, Manifest, Source
from mlfs.reader import ArtifactReader, ReadAheadSettings
from mlfs.s3.boto_source import BotocoreSource
from mlfs.store import ChunkStore

CHUNK = 64 * 1024


class Body(io.BytesIO):
    def __init__(self, data: bytes, reset_after: int | None = None, raw_reset: bool = False) -> None:
        super().__init__(data)
        self.reset_after = reset_after
        self.raw_reset = raw_reset
        self.served = 0

    def read(self, n: int = -1) -> bytes:
        if self.reset_after is not None and self.tell() >= self.reset_after:
            if self.raw_reset:  # as urllib3's stream raises it, unwrapped by botocore
                raise urllib3.exceptions.ProtocolError("Connection broken", ConnectionResetError(104, "reset"))
            raise botocore.exceptions.ResponseStreamingError(error="connection reset by peer")
        data = super().read(min(n, 8192) if n and n > 0 else 8192)
        self.served += len(data)
        return data

    def readinto(self, buf) -> int:  # short reads, like a socket
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


class FakeS3:
    """get_object with scripted failures: a list of 'ok' / '503' / 'reset' / '412' / 'bad' / 'whole'."""

    def __init__(self, data: bytes, script: list[str] | None = None) -> None:
        self.data = data
        self.script = list(script or [])
        self.calls: list[dict] = []
        self.lock = threading.Lock()
        self.gate: threading.Event | None = None
        self.whole_bodies: list[Body] = []

    def get_object(self, **kw):
        with self.lock:
            self.calls.append(kw)
            step = self.script.pop(0) if self.script else "ok"
        if self.gate is not None:
            self.gate.wait(10)
        lo, hi = map(int, kw["Range"].removeprefix("bytes=").split("-"))
        piece = self.data[lo:hi + 1]
        if step in ("503", "412", "404"):
            code = {"503": "ServiceUnavailable", "412": "PreconditionFailed", "404": "NoSuchKey"}[step]
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": int(step)}}, "GetObject")
        # As S3 answers a range GET: 206 with a Content-Range.
        content_range = f"bytes {lo}-{lo + len(piece) - 1}/{len(self.data)}"
        if step in ("reset", "raw-reset"):
            body = Body(piece, reset_after=len(piece) // 2, raw_reset=step == "raw-reset")
            return {"Body": body, "ContentRange": content_range}
        if step == "bad":
            piece = bytes([piece[0] ^ 1]) + piece[1:]
        if step == "whole":  # a server ignoring Range
            self.whole_bodies.append(Body(self.data))
            return {"Body": self.whole_bodies[-1]}
        return {"Body": Body(piece), "ContentRange": content_range}


def entry_for(data: bytes, etag: str | None = '"etag"') -> FileEntry:
    chunks = tuple(hashlib.sha256(data[i:i + CHUNK]).hexdigest() for i in range(0, len(data), CHUNK))
    return FileEntry("f.bin", len(data), hashlib.sha256(data).hexdigest(), chunks,
                     Source(bucket="b", key="k", etag=etag))


def run_fetch(tmp_path: Path, fake: FakeS3, data: bytes, index: int = 0, attempts: int = 4):
    store = ChunkStore(tmp_path)
    entry = entry_for(data)

    async def main():
        fetcher = ChunkFetcher(BotocoreSource(fake), store, CHUNK, trio.CapacityLimiter(4), RetryPolicy(attempts, 0.5, 5))
        digest = await fetcher.ensure(entry, index)
        return fetcher, digest

    fetcher, digest = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return store, entry, fetcher, digest


@pytest.mark.parametrize("script", [["503"], ["reset"], ["503", "reset", "503"], ["bad"], ["whole", "whole"],
                                    ["raw-reset"]])
def test_transient_failures_are_retried(tmp_path: Path, script: list[str]) -> None:
    data = os.urandom(3 * CHUNK)
    fake = FakeS3(data, script)
    store, entry, fetcher, digest = run_fetch(tmp_path, fake, data, index=1)
    assert store.read_all(digest) == data[CHUNK:2 * CHUNK]
    assert len(fake.calls) == len(script) + 1
    assert fake.calls[0]["IfMatch"] == '"etag"' and fake.calls[0]["Range"] == f"bytes={CHUNK}-{2 * CHUNK - 1}"
    assert list(store.tmp_dir.iterdir()) == []


def test_a_server_ignoring_range_is_not_downloaded(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK)
    fake = FakeS3(data, ["whole"] * 3)
    store, _entry, _fetcher, digest = run_fetch(tmp_path, fake, data, index=1)
    assert store.read_all(digest) == data[CHUNK:2 * CHUNK]
    assert [b.served for b in fake.whole_bodies] == [0, 0, 0], "a whole object was read for one chunk"


def test_retries_give_up_with_a_fetch_error(tmp_path: Path) -> None:
    data = os.urandom(CHUNK)
    fake = FakeS3(data, ["503"] * 10)
    with pytest.raises(FetchError, match="giving up after 4 attempts"):
        run_fetch(tmp_path, fake, data)
    assert len(fake.calls) == 4


def test_changed_object_is_estale_without_retry(tmp_path: Path) -> None:
    data = os.urandom(CHUNK)
    fake = FakeS3(data, ["412"])
    with pytest.raises(ObjectChanged) as info:
        run_fetch(tmp_path, fake, data)
    assert info.value.errno == 116 and len(fake.calls) == 1  # ESTALE


def test_repeated_transit_damage_under_if_match_is_retried(tmp_path: Path) -> None:
    data = os.urandom(CHUNK)
    fake = FakeS3(data, ["bad", "bad", "bad"])
    store, _entry, _fetcher, digest = run_fetch(tmp_path, fake, data)
    assert store.read_all(digest) == data and len(fake.calls) == 4


def test_without_etag_a_second_mismatch_is_an_integrity_error(tmp_path: Path) -> None:
    data = os.urandom(CHUNK)
    fake = FakeS3(data, ["bad", "bad"])
    store = ChunkStore(tmp_path)
    entry = entry_for(data, etag=None)

    async def main():
        fetcher = ChunkFetcher(BotocoreSource(fake), store, CHUNK, trio.CapacityLimiter(4), RetryPolicy(4, 0.5, 5))
        await fetcher.ensure(entry, 0)

    with pytest.raises(ChunkIntegrityError):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(fake.calls) == 2


def test_persistent_corruption_is_an_integrity_error_and_stores_nothing(tmp_path: Path) -> None:
    data = os.urandom(CHUNK)
    fake = FakeS3(data, ["bad", "bad", "bad", "bad"])
    with pytest.raises(ChunkIntegrityError):
        run_fetch(tmp_path, fake, data)
    store = ChunkStore(tmp_path)
    assert store.statistics().chunks == 0 and list(store.tmp_dir.iterdir()) == []


def test_concurrent_readers_share_one_download(tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK)
    fake = FakeS3(data)
    fake.gate = threading.Event()
    store = ChunkStore(tmp_path)
    entry = entry_for(data)

    async def main():
        fetcher = ChunkFetcher(BotocoreSource(fake), store, CHUNK, trio.CapacityLimiter(8), RetryPolicy(3, 0.1, 1))
        async with trio.open_nursery() as n:
            for _ in range(16):
                n.start_soon(fetcher.ensure, entry, 0)
            await trio.sleep(0.2)
            fake.gate.set()
        return fetcher.statistics()

    stats = trio.run(main)
    assert len(fake.calls) == 1 and stats.shared_waits == 15 and stats.in_flight == 0


class ReaderRig:
    """A 40-chunk file behind a fake S3, and a factory for readers over it."""

    def __init__(self, tmp_path: Path) -> None:
        self.data = os.urandom(40 * CHUNK)
        self.fake = FakeS3(self.data)
        self.store = ChunkStore(tmp_path)
        self.entry = entry_for(self.data, etag=None)
        self.manifest = Manifest("m", "v", [self.entry], chunk_size=CHUNK)

    def reader(self, nursery: trio.Nursery) -> ArtifactReader:
        fetcher = ChunkFetcher(BotocoreSource(self.fake), self.store, CHUNK, trio.CapacityLimiter(8), RetryPolicy(3, 0.1, 1))
        return ArtifactReader(self.manifest, self.store, fetcher, nursery, ReadAheadSettings(start=1, max=8))


def test_sequential_reader_grows_its_read_ahead_window(tmp_path: Path) -> None:
    rig = ReaderRig(tmp_path)
    data, fake = rig.data, rig.fake

    async def main():
        async with trio.open_nursery() as n:
            handle = rig.reader(n).open(rig.entry)
            out = bytearray()
            windows = []
            for off in range(0, 20 * CHUNK, CHUNK // 2):
                out += await handle.read(off, CHUNK // 2)
                windows.append(handle.window)
            # random access resets the window
            await handle.read(35 * CHUNK, 10)
            windows.append(handle.window)
            n.cancel_scope.cancel()
        return bytes(out), windows

    out, windows = trio.run(main)
    assert out == data[: 20 * CHUNK]
    assert windows[0] == 1 and max(windows) == 8 and windows[-1] == 0
    assert windows == sorted(windows[:-1]) + [0]
    fetched = {c["Range"] for c in fake.calls}
    assert len(fetched) == len(fake.calls), "a chunk was fetched twice"


def test_concurrent_kernel_style_reads_keep_the_window_open(tmp_path: Path) -> None:
    """The kernel sends several reads of a file at once; they must not look random."""
    rig = ReaderRig(tmp_path)
    data = rig.data

    async def main():
        async with trio.open_nursery() as n:
            handle = rig.reader(n).open(rig.entry)
            got: dict[int, bytes] = {}
            windows = []

            async def one(off: int) -> None:
                got[off] = await handle.read(off, CHUNK // 8)
                windows.append(handle.window)

            # 8 reads in flight, arriving out of order within a span shorter than a chunk
            # (as kernel read-ahead does: its window is smaller than mlfs's chunks).
            step = CHUNK // 8
            for base in range(0, 20 * CHUNK, CHUNK):
                async with trio.open_nursery() as batch:
                    for off in sorted(range(base, base + CHUNK, step), key=lambda o: (o // step) % 3):
                        batch.start_soon(one, off)
            n.cancel_scope.cancel()
        return got, windows

    got, windows = trio.run(main)
    assert b"".join(got[o] for o in sorted(got)) == data[: 20 * CHUNK]
    assert min(windows[8:]) > 0 and max(windows) == 8


def test_memory_stays_within_the_buffer_pool_whatever_the_readers(tmp_path: Path) -> None:
    rig = ReaderRig(tmp_path)
    data = rig.data

    async def main():
        fetcher = ChunkFetcher(BotocoreSource(rig.fake), rig.store, CHUNK, trio.CapacityLimiter(8), RetryPolicy(3, 0.1, 1), buffers=3)
        got: dict[int, bytes] = {}
        async with trio.open_nursery() as n:
            reader = ArtifactReader(rig.manifest, rig.store, fetcher, n, ReadAheadSettings(start=1, max=8))

            async def one(i: int) -> None:
                handle = reader.open(rig.entry)
                got[i] = await handle.read(i * CHUNK + 7, CHUNK)

            async with trio.open_nursery() as readers:
                for i in range(24):
                    readers.start_soon(one, i)
            n.cancel_scope.cancel()
        return got, fetcher.statistics()

    got, stats = trio.run(main)
    assert all(got[i] == data[i * CHUNK + 7:(i + 1) * CHUNK + 7] for i in range(24))
    assert stats.buffers == 3, "more chunk buffers than the pool holds"


def test_fetches_ahead_do_not_recycle_a_chunk_a_reader_is_in(tmp_path: Path) -> None:
    """Prefetch must not push out what a reader is half-way through; a waiting reader may."""
    rig = ReaderRig(tmp_path)
    data, entry = rig.data, rig.entry
    digest = entry.chunks

    async def main():
        fetcher = ChunkFetcher(BotocoreSource(rig.fake), rig.store, CHUNK, trio.CapacityLimiter(8),
                               RetryPolicy(3, 0.1, 1), buffers=2)
        events: list[str] = []
        fetched_ahead = trio.Event()
        async with trio.open_nursery() as n:
            await fetcher.ensure(entry, 0, urgent=True)
            assert fetcher.read_verified(digest[0], 0, CHUNK // 2) == data[:CHUNK // 2]
            await fetcher.ensure(entry, 1)  # fetched ahead, not read yet

            async def ahead() -> None:
                await fetcher.ensure(entry, 2)
                events.append("ahead fetched")
                fetched_ahead.set()

            n.start_soon(ahead)
            for _ in range(3):  # a reader still in chunk 0, reading every 0.3 s
                await trio.sleep(0.3)
                assert fetcher.read_verified(digest[0], CHUNK // 2, 16) == data[CHUNK // 2:CHUNK // 2 + 16]
            events.append("chunk 0 kept while read")
            assert fetcher.read_verified(digest[1], 0, 16) == data[CHUNK:CHUNK + 16]
            # The reader finishes chunk 0: the fetch ahead takes its buffer.
            fetcher.read_verified(digest[0], CHUNK // 2 + 16, CHUNK)
            events.append("chunk 0 read")
            with trio.fail_after(5):
                await fetched_ahead.wait()
            # A reader waiting now takes a buffer even from a chunk being read (chunk 1).
            await fetcher.ensure(entry, 5, urgent=True)
            events.append("urgent fetched")
            held = {i: fetcher.read_verified(digest[i], 0, 16) for i in (0, 1, 2, 5)}
            n.cancel_scope.cancel()
        return events, held, fetcher.statistics()

    events, held, stats = trio.run(main)  # real time: downloads run in threads
    assert events == ["chunk 0 kept while read", "chunk 0 read", "ahead fetched", "urgent fetched"]
    assert held == {0: None, 1: None, 2: data[2 * CHUNK:2 * CHUNK + 16], 5: data[5 * CHUNK:5 * CHUNK + 16]}
    assert stats.buffers == 2


BLOCK = CHUNK // 4


def blocked_rig(tmp_path: Path) -> ReaderRig:
    """The rig's file with block digests: a random reader fetches blocks, not chunks."""
    rig = ReaderRig(tmp_path)
    blocks = tuple(hashlib.sha256(rig.data[i:i + BLOCK]).hexdigest() for i in range(0, len(rig.data), BLOCK))
    rig.entry = FileEntry(rig.entry.path, rig.entry.size, rig.entry.sha256, rig.entry.chunks, rig.entry.source,
                          blocks=blocks)
    rig.manifest = Manifest("m", "v", [rig.entry], chunk_size=CHUNK, block_size=BLOCK)
    return rig


def _ranges(fake: FakeS3) -> list[tuple[int, int]]:
    return [tuple(map(int, c["Range"].removeprefix("bytes=").split("-"))) for c in fake.calls]


def test_random_reads_fetch_one_verified_block_each(tmp_path: Path) -> None:
    rig = blocked_rig(tmp_path)
    offsets = [35 * CHUNK + 100, 3 * CHUNK + 5000, 20 * CHUNK + BLOCK - 10, 9 * CHUNK]

    async def main():
        async with trio.open_nursery() as n:
            reader = rig.reader(n)
            handle = reader.open(rig.entry)
            got = [await handle.read(off, 4096) for off in offsets]
            stats = reader.fetcher.statistics()
            n.cancel_scope.cancel()
        return got, stats

    got, stats = trio.run(main)
    assert got == [rig.data[o:o + 4096] for o in offsets]
    # The read straddling a block border takes the two blocks it covers; no chunk is fetched.
    starts = [o // BLOCK * BLOCK for o in offsets]
    expected = sorted({(s, s + BLOCK - 1) for s in starts} | {(20 * CHUNK + BLOCK, 20 * CHUNK + 2 * BLOCK - 1)})
    assert sorted(_ranges(rig.fake)) == expected
    assert stats.block_requests == len(expected) and stats.bytes == len(expected) * BLOCK
    assert not any(rig.store.contains(d) for d in rig.entry.chunks), "a block read stored a chunk"


def test_a_random_reader_that_turns_sequential_goes_back_to_chunks(tmp_path: Path) -> None:
    rig = blocked_rig(tmp_path)
    start = 10 * CHUNK

    async def main():
        async with trio.open_nursery() as n:
            handle = rig.reader(n).open(rig.entry)
            out = bytearray()
            for off in range(start, start + 6 * CHUNK, BLOCK // 2):
                out += await handle.read(off, BLOCK // 2)
            n.cancel_scope.cancel()
        return bytes(out)

    out = trio.run(main)
    assert out == rig.data[start:start + 6 * CHUNK]
    sizes = [hi - lo + 1 for lo, hi in _ranges(rig.fake)]
    # The first two blocks come alone; then whole chunks (with read-ahead) take over.
    assert sizes[:2] == [BLOCK, BLOCK] and set(sizes[2:]) == {CHUNK}


def test_a_block_that_does_not_match_is_never_served(tmp_path: Path) -> None:
    rig = blocked_rig(tmp_path)
    rig.fake.script = ["bad", "bad"]  # no ETag: one retry, then the object itself is wrong

    async def main():
        async with trio.open_nursery() as n:
            handle = rig.reader(n).open(rig.entry)
            with pytest.raises(ChunkIntegrityError):
                await handle.read(30 * CHUNK + 7, 4096)
            n.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(rig.fake.calls) == 2
