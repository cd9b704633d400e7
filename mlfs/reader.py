"""Open artifact file → verified bytes. Knows nothing of FUSE.

`ArtifactReader` owns the per-artifact read path: which chunks cover a byte range,
fetching them (through `ChunkFetcher`, verified), read-ahead for sequential readers and
prefetch. The FUSE adapter, the gateway and other consumers all read through it; the
policy layer (`mlfs.mount_policy`) tunes it per file through `OpenFile` settings and
read listeners.
"""

from __future__ import annotations

import fnmatch
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import trio

from mlfs.errors import ChunkIntegrityError, MlfsError
from mlfs.fetch.fetcher import ChunkFetcher
from mlfs.manifest.model import FileEntry, Manifest
from mlfs.store.chunks import ChunkStore

log = logging.getLogger(__name__)

# Rent or buy: a random reader is served block by block until it has read this many
# blocks of one chunk, about what fetching the whole chunk costs (cold, on loopback
# SeaweedFS: 5.5 ms for a 256 KiB range GET, 42 ms for 16 MiB); its next read of that
# chunk fetches and stores the chunk, and every later read of it is local. A sparse
# reader of a large file stays on blocks; a dense one stops paying a GET per read
# (a 64 MiB file read at random: 437 reads/s on blocks alone, 1,276 on chunks alone).
BLOCK_READS_PER_CHUNK = 8


@dataclass
class ReadAheadSettings:
    """Window in chunks: starts at `start`, doubles while sequential, up to `max`.

    `drop_behind` marks chunks the reader has passed as first to evict, so a stream
    read once does not push out data that will be read again.
    """

    start: int = 1
    max: int = 8
    drop_behind: bool = False


# listener(entry, offset, length, handle) after every successful read
ReadListener = Callable[[FileEntry, int, int, "OpenFile | None"], None]


class OpenFile:
    """One open handle: tracks its access pattern and drives read-ahead."""

    def __init__(self, reader: ArtifactReader, entry: FileEntry, settings: ReadAheadSettings) -> None:
        self.reader = reader
        self.entry = entry
        self.settings = settings
        self.window = 0  # 0 until the reader proves sequential
        self.next_offset = 0
        self.reads = 0
        self.sequential_reads = 0
        self.bytes_read = 0
        self.pid: int | None = None
        self.policy_state: object = None  # owned by the policy layer
        self._ahead_until = 0  # chunks below this index have been scheduled
        self._behind = 0  # chunks below this index were dropped behind
        # The current run of reads that each follow the last closely (within a block):
        # a run that began with a jump and is still short is a random reader's.
        self._run_start = -1  # -1: the run began at the start of the file (a scan)
        self._run_end = 0

    async def read(self, offset: int, size: int) -> bytes:
        return bytes(await self.read_for_reply(offset, size))

    async def read_for_reply(self, offset: int, size: int) -> bytes | memoryview:
        """Like `read`, but may return a view of a verified buffer (no copy).

        The view is valid until the caller next yields to trio: for a FUSE reply,
        which pyfuse3 sends before it runs anything else.
        """
        # The kernel sends several reads of one file at once; the pattern is judged and
        # read-ahead started when a read arrives, not when it completes.
        self._observe(offset, size)
        if self.window and not self.in_random_run():
            self._schedule_read_ahead(offset + size)
            if self.settings.drop_behind:
                self._drop_behind(offset)
        data = await self.reader.read_range(self.entry, offset, size, self, view=True)
        self.bytes_read += len(data)
        return data

    def _observe(self, offset: int, size: int) -> None:
        # Neighbouring reads arrive slightly out of order; a read within one chunk of
        # the furthest point reached so far still counts as sequential.
        chunk = self.reader.chunk_size
        # A first read from the start of the file begins a scan.
        sequential = offset < chunk if self.reads == 0 else abs(offset - self.next_offset) <= chunk
        near = self.reader.block_size or chunk
        if self.reads == 0:
            self._run_start, self._run_end = (-1 if offset < chunk else offset), offset + size
        elif abs(offset - self._run_end) > near:
            self._run_start, self._run_end = offset, offset + size
        else:
            self._run_end = max(self._run_end, offset + size)
        self.reads += 1
        if sequential:
            self.sequential_reads += 1
            if self.window == 0:
                self.window = self.settings.start
            elif self.sequential_reads % 4 == 0:
                self.window = min(self.settings.max, self.window * 2)
            self.next_offset = max(self.next_offset, offset + size)
        else:
            self.window = 0
            self.sequential_reads = 0
            self._ahead_until = 0
            self.next_offset = offset + size

    def in_random_run(self) -> bool:
        """The reads since the last jump cover at most two blocks: a random reader,
        served block by block (when the manifest has block digests), without read-ahead."""
        block = self.reader.block_size
        return (block is not None and bool(self.entry.blocks) and self._run_start >= 0
                and self._run_end - self._run_start <= 2 * block)

    def _schedule_read_ahead(self, position: int) -> None:
        chunk = self.reader.chunk_size
        first = position // chunk + 1
        window = min(self.window, self.settings.max, self.reader.window_cap)
        last = min(len(self.entry.chunks), first + window)
        begin = max(first, self._ahead_until)
        for index in range(begin, last):
            self.reader.fetch_in_background(self.entry, index)
        self._ahead_until = max(self._ahead_until, last)

    def _drop_behind(self, offset: int) -> None:
        # Keep the chunk being read and the one before it (the kernel reorders a little).
        current = offset // self.reader.chunk_size
        for index in range(self._behind, max(0, current - 1)):
            self.reader.store.demote(self.entry.chunks[index])
        self._behind = max(self._behind, current - 1)


class ArtifactReader:
    def __init__(
        self,
        manifest: Manifest,
        store: ChunkStore,
        fetcher: ChunkFetcher,
        nursery: trio.Nursery,
        read_ahead: ReadAheadSettings | None = None,
    ) -> None:
        self.manifest = manifest
        self.store = store
        self.fetcher = fetcher
        self.chunk_size = manifest.chunk_size
        self.block_size = manifest.block_size
        self.nursery = nursery
        self.read_ahead = read_ahead or ReadAheadSettings()
        self.listeners: list[ReadListener] = []
        fetcher.attach(nursery)
        # Read-ahead never outruns what can hold it: half the store budget (so fetching
        # ahead cannot evict what it just fetched, at the smallest --cache-size too) and
        # the verified buffers (so chunks fetched ahead are still in memory when read).
        cap = max(1, fetcher.buffer_count - 2)
        if store.budget is not None:
            cap = min(cap, max(1, store.budget // self.chunk_size // 2))
        self.window_cap = cap
        # Store reads run in worker threads (never on the event loop), apart from the
        # download threads so a cached read never queues behind a fetch.
        self._store_reads = trio.CapacityLimiter(4)
        # Block-served reads per chunk digest (at most the manifest's chunks).
        self._block_reads: Counter[str] = Counter()

    def open(self, entry: FileEntry, settings: ReadAheadSettings | None = None) -> OpenFile:
        base = settings or self.read_ahead
        return OpenFile(self, entry, ReadAheadSettings(base.start, base.max, base.drop_behind))

    async def read_range(self, entry: FileEntry, offset: int, size: int, handle: OpenFile | None = None,
                         view: bool = False, urgent: bool = True) -> bytes:
        """Verified bytes of `entry` in [offset, offset + size).

        With `view`, a single-chunk read may come back as a memoryview of a verified
        buffer, valid until the caller next yields to trio (see `OpenFile.read_for_reply`).
        Without `urgent` (work ahead of readers, such as planning a prefetch), chunks
        are fetched as read-ahead is: without taking buffers readers are using.
        """
        end = min(offset + size, entry.size)
        if offset >= end:
            return b""
        cs = self.chunk_size
        first, last = offset // cs, (end - 1) // cs
        # A reader in a short run since its last jump (`OpenFile.in_random_run`) reads
        # only the blocks it needs of a chunk that is not local.
        by_block = handle is not None and handle.in_random_run()
        # Start every covered chunk at once, then stitch the pieces in order.
        if not by_block:
            for i in range(first + 1, last + 1):
                self.fetch_in_background(entry, i)
        parts = []
        for i in range(first, last + 1):
            lo = max(offset, i * cs) - i * cs
            hi = min(end, (i + 1) * cs) - i * cs
            digest = entry.chunks[i]
            if by_block and self._block_reads[digest] < BLOCK_READS_PER_CHUNK and not self._at_hand(digest):
                self._block_reads[digest] += 1
                parts.append(await self._read_blocks(entry, i * cs + lo, hi - lo))
                continue
            parts.append(await self._read_chunk(entry, i, lo, hi - lo, view and first == last, urgent))
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        for listener in self.listeners:
            listener(entry, offset, len(data), handle)
        return data

    async def _read_chunk(self, entry: FileEntry, index: int, offset: int, size: int,
                          view: bool = False, urgent: bool = True) -> bytes:
        for _attempt in (1, 2):
            digest = await self.fetcher.ensure(entry, index, urgent=urgent)
            data = self.fetcher.read_verified(digest, offset, size, view)
            if data is not None:
                return data
            try:
                return await trio.to_thread.run_sync(self.store.pread, digest, offset, size,
                                                     limiter=self._store_reads)
            except ChunkIntegrityError:
                # Evicted (by this or another process) between fetch and read: fetch again.
                self.fetcher.forget(digest)
        # Evicted again before we could read it (the store is far smaller than what its
        # readers use at once): answer from a buffer of our own.
        return await self.fetcher.read_direct(entry, index, offset, size)

    def _at_hand(self, digest: str) -> bool:
        """The chunk is verified in memory, being fetched, or in the store (one stat)."""
        return self.fetcher.is_ready(digest) or self.fetcher.is_in_flight(digest) or self.store.contains(digest)

    async def _read_blocks(self, entry: FileEntry, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size) of `entry` from its verified blocks."""
        bs = self.block_size
        assert bs is not None
        parts = []
        for b in range(offset // bs, (offset + size - 1) // bs + 1):
            data = await self.fetcher.read_block(entry, b, bs)
            lo = max(offset, b * bs) - b * bs
            hi = min(offset + size, (b + 1) * bs) - b * bs
            parts.append(data[lo:hi])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def fetch_in_background(self, entry: FileEntry, index: int) -> None:
        digest = entry.chunks[index]
        if self.fetcher.is_ready(digest) or self.fetcher.is_in_flight(digest):
            return
        self.nursery.start_soon(self.fetch_quietly, entry, index)

    async def fetch_quietly(self, entry: FileEntry, index: int) -> bool:
        """Fetch one chunk; never raises (the foreground read reports errors)."""
        # Background fetches must never take the mount down; the foreground read of
        # the same chunk reports the error to the reader that needs it.
        try:
            await self.fetcher.ensure(entry, index)
            return True
        except MlfsError as exc:
            log.debug("background fetch of %s chunk %d failed: %s", entry.path, index, exc)
        except Exception:
            log.exception("background fetch of %s chunk %d failed unexpectedly", entry.path, index)
        return False

    def prefetch_entries(self) -> list[FileEntry]:
        """Files named by the manifest's prefetch globs (matched on path and basename)."""
        globs = self.manifest.prefetch
        out = []
        for entry in self.manifest.files:
            base = entry.path.rsplit("/", 1)[-1]
            if any(fnmatch.fnmatchcase(entry.path, g) or fnmatch.fnmatchcase(base, g) for g in globs):
                out.append(entry)
        return out

    async def prefetch(self, entries: list[FileEntry]) -> None:
        """Fetch every chunk of `entries`, concurrently within the fetch limiter."""
        await self.prefetch_chunks([(e, i) for e in entries for i in range(len(e.chunks))])

    async def prefetch_chunks(self, chunks: list[tuple[FileEntry, int]], parallel: int = 64) -> None:
        """Fetch chunks in list order, at most `parallel` at a time; returns when all are done."""
        limit = trio.Semaphore(max(1, parallel))
        async with trio.open_nursery() as n:
            await self.enqueue_chunks(chunks, limit, n)

    async def enqueue_chunks(self, chunks: list[tuple[FileEntry, int]], limit: trio.Semaphore,
                             nursery: trio.Nursery) -> None:
        """Start fetches in list order as `limit` allows; returns once the last one started.

        Several callers may share one `limit` and nursery: a caller that enqueues file
        after file keeps the window full across file boundaries, in file order.
        """

        async def one(entry: FileEntry, index: int) -> None:
            try:
                await self.fetch_quietly(entry, index)
            finally:
                limit.release()

        for entry, index in chunks:
            await limit.acquire()
            nursery.start_soon(one, entry, index)
