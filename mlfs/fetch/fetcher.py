"""Fetch manifest chunks, verified, at most once at a time each.

`ChunkFetcher.ensure(entry, index)` returns once chunk `index` of `entry` is verified
against the manifest's SHA-256 and readable: in one of the fetcher's verified memory
buffers (`read_verified`) or in the store. Concurrent callers for one chunk share a
single download (single-flight). Downloads are blocking boto3 calls in worker threads
under a `trio.CapacityLimiter`; retries and their backoff run on the trio side, so
deadlines and test clocks apply to them.

The pipeline per chunk: the range GET lands in a pooled buffer, SHA-256 runs over it
once, readers are answered from it, and the store is written from it behind them (see
`ChunkStore.put_verified`); the buffer is recycled once the chunk is stored. The pool
is bounded (`buffers` × chunk size is the fetcher's whole memory), so RSS does not grow
with the number of readers.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import mmap
import os
import random
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import trio

from mlfs.errors import ChunkIntegrityError, FetchError, ObjectChanged
from mlfs.manifest.model import FileEntry
from mlfs.s3.source import RangeSource, S3Answered, S3NoCredentials
from mlfs.stats import Histogram
from mlfs.store.chunks import ChunkStore

log = logging.getLogger(__name__)

# Room past a chunk's end in each buffer: one extra byte received shows a server
# sending more than was asked, and the mmap stays a whole number of pages.
_SLACK = 4096
_RETRYABLE_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException",
    "RequestTimeout", "RequestTimeTooSkewed", "503", "500", "502", "504",
}
_CONNECTION_ERRORS = (
    ConnectionError,  # S3Unreachable among them: every RangeSource reports transport failures so
    TimeoutError,
    http.client.HTTPException,  # plain HTTP(S) sources read with urllib
    urllib.error.URLError,
)


class _Retryable(Exception):
    """A transient failure; the message says what happened."""


def _env_attempts() -> int:
    try:
        return max(1, int(os.environ.get("AWS_MAX_ATTEMPTS", "5")))
    except ValueError:
        return 5


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = field(default_factory=_env_attempts)
    base_delay: float = 0.1
    max_delay: float = 5.0

    def delay(self, attempt: int) -> float:
        # Full jitter (AWS architecture blog): spreads retries of many readers apart.
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


@dataclass
class FetchStatistics:
    requests: int = 0
    bytes: int = 0
    retries: int = 0
    failures: int = 0
    shared_waits: int = 0  # callers that waited on another caller's download
    in_flight: int = 0
    store_hits: int = 0  # chunk uses served without a download
    store_misses: int = 0  # chunk uses that needed a download
    integrity_failures: int = 0  # fetched bytes that did not match the manifest
    errors: dict[str, int] = field(default_factory=dict)  # failed fetches by kind
    latency: Histogram = field(default_factory=Histogram)  # seconds per chunk download
    memory_reads: int = 0  # reads answered from a verified buffer
    buffers: int = 0  # buffers allocated (at most the pool size)
    buffer_waits: int = 0  # downloads that waited for a free buffer
    unstored: int = 0  # verified chunks the store could not take (disk full)
    block_requests: int = 0  # ranged GETs of one block for a random read (also in `requests`)

    def plus(self, other: FetchStatistics) -> FetchStatistics:
        """Sum of two mounts' statistics (a switch keeps the counters of the old tree)."""
        errors = dict(self.errors)
        for kind, n in other.errors.items():
            errors[kind] = errors.get(kind, 0) + n
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)
                  if f.name not in ("errors", "latency")}
        return FetchStatistics(**summed, errors=errors, latency=self.latency.plus(other.latency))


class _Buffer:
    """A pooled, page-aligned chunk buffer (O_DIRECT writes need the alignment)."""

    __slots__ = ("mem", "view", "digest", "size", "writing", "stored", "reads", "filled_at",
                 "last_read", "bytes_read")

    def __init__(self, size: int) -> None:
        # Private anonymous memory: cheaper to fault in than the shared (shmem) default.
        self.mem = mmap.mmap(-1, size + _SLACK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self.mem)
        self.digest = ""
        self.size = 0
        self.writing = False
        self.stored = False
        self.reads = 0
        self.filled_at = 0.0
        self.last_read = 0.0
        self.bytes_read = 0  # as much as the chunk holds: its readers are past it


class _Flight:
    __slots__ = ("done", "error", "urgent")

    def __init__(self, urgent: bool = False) -> None:
        self.done = trio.Event()
        self.error: BaseException | None = None
        self.urgent = urgent  # for a reader waiting now (or one has joined): buffers as it would


DEFAULT_BUFFERS = 12
# Fetches ahead (prefetch, read-ahead) recycle buffers only from chunks readers are done
# with: read as many bytes as they hold (the kernel asks for each page once, in any
# order), or not read in the last RECENT_READ_S (a reader takes a 16 MiB chunk in many
# reads); a chunk not read yet only once readers have paused READERS_IDLE_S or it has
# waited UNREAD_KEPT_S. A loader consuming what prefetch brings then finds it in memory
# instead of prefetch pushing it out to disk just ahead of the loader (measured: a 1 GiB
# 4-shard model loaded in 6-10 s instead of 3.6 s with mount-time prefetch).
RECENT_READ_S = 1.0
READERS_IDLE_S = 1.0
UNREAD_KEPT_S = 5.0
URGENT_THREADS = 2  # fetches for readers waiting now, beside max_threads for the rest
BLOCKS_KEPT = 32  # verified blocks kept in memory for random readers (32 MiB at 1 MiB blocks)


class ChunkFetcher:
    def __init__(
        self,
        source: RangeSource,
        store: ChunkStore,
        chunk_size: int,
        limiter: trio.CapacityLimiter,
        retry: RetryPolicy | None = None,
        buffers: int = DEFAULT_BUFFERS,
    ) -> None:
        self.source = source
        self.store = store
        self.chunk_size = chunk_size
        self.limiter = limiter
        self.retry = retry or RetryPolicy()
        self.buffer_count = max(2, buffers)
        self._ready: set[str] = set()
        self._flights: dict[str, _Flight] = {}
        self._stats = FetchStatistics()
        self._memory: OrderedDict[str, _Buffer] = OrderedDict()  # verified chunks, LRU order
        self._free: list[_Buffer] = []
        self._allocated = 0
        self._buffer_freed = trio.Event()
        # Trio time of the last read served from a buffer; the first download counts as one,
        # so prefetch at mount leaves a loader starting just after it what it fetched.
        self._last_read: float | None = None
        self._writes: trio.Nursery | None = None
        self._write_limiter = trio.CapacityLimiter(2)
        self._urgent = trio.CapacityLimiter(URGENT_THREADS)
        self._blocks: OrderedDict[str, bytes] = OrderedDict()  # verified blocks, LRU order
        self._block_flights: dict[str, _Flight] = {}

    def attach(self, nursery: trio.Nursery) -> None:
        """Run store writes in `nursery`, behind the readers (without one they run inline)."""
        if self._writes is None:
            self._writes = nursery

    def is_ready(self, digest: str) -> bool:
        """True if the chunk is verified and readable now, from memory or the store (no I/O)."""
        return digest in self._ready or digest in self._memory

    def is_in_flight(self, digest: str) -> bool:
        return digest in self._flights

    def statistics(self) -> FetchStatistics:
        s = self._stats
        return FetchStatistics(s.requests, s.bytes, s.retries, s.failures, s.shared_waits, len(self._flights),
                               s.store_hits, s.store_misses, s.integrity_failures, dict(s.errors),
                               s.latency.copy(), s.memory_reads, self._allocated, s.buffer_waits, s.unstored,
                               s.block_requests)

    def _failed(self, kind: str) -> None:
        self._stats.failures += 1
        self._stats.errors[kind] = self._stats.errors.get(kind, 0) + 1

    def read_verified(self, digest: str, offset: int, size: int, view: bool = False) -> bytes | memoryview | None:
        """Bytes of a chunk held in a verified buffer, or None if it is not in memory.

        With `view`, a memoryview of the buffer itself (no copy): valid only until the
        caller next yields to trio, after which the buffer may be recycled.
        """
        buf = self._memory.get(digest)
        if buf is None:
            return None
        self._memory.move_to_end(digest)
        self._stats.memory_reads += 1
        buf.reads += 1
        buf.last_read = self._last_read = trio.current_time()
        was_done = buf.bytes_read >= buf.size
        buf.bytes_read += max(0, min(size, buf.size - offset))
        if not was_done and buf.bytes_read >= buf.size and not buf.writing:
            self._signal_freed()  # a fetch ahead may be waiting for a chunk readers are done with
        piece = buf.view[offset:min(offset + size, buf.size)]
        return piece if view else bytes(piece)

    async def ensure(self, entry: FileEntry, index: int, urgent: bool = False) -> str:
        """Make chunk `index` of `entry` readable; `urgent` for a reader waiting on it now.

        Urgent fetches have threads of their own, so a read never queues behind
        read-ahead and prefetching (a mount's first small file, a random read).
        """
        digest = entry.chunks[index]
        limiter = self._urgent if urgent else self.limiter
        if digest in self._ready or digest in self._memory:
            self._stats.store_hits += 1
            return digest
        if await self._joined(self._flights, digest, urgent):
            return digest
        with self._flying(self._flights, digest) as flight:
            flight.urgent = urgent
            # First use in this process: check the cached copy (cheap xxh3) or download.
            present = await trio.to_thread.run_sync(self.store.ensure_verified, digest, limiter=limiter)
            if present:
                self._stats.store_hits += 1
                self._ready.add(digest)
                return digest
            self._stats.store_misses += 1
            buf = await self._take_buffer(flight)
            started = time.monotonic()
            try:
                await self._download_chunk(entry, index, buf, limiter)
            except BaseException:
                self._give_back(buf)
                raise
            elapsed = time.monotonic() - started
            self._stats.latency.observe(elapsed)
            log.debug("fetched %s chunk %d in %.3fs", entry.path, index, elapsed,
                      extra=_context(entry, index, duration=round(elapsed, 6)))
            buf.digest, buf.stored, buf.writing, buf.reads = digest, False, True, 0
            buf.filled_at, buf.bytes_read = trio.current_time(), 0
            self._memory[digest] = buf
        # Readers are served from the buffer from here on; the store write follows.
        if self._writes is not None:
            self._writes.start_soon(self._store, buf)
        else:
            await self._store(buf)
        return digest

    async def read_direct(self, entry: FileEntry, index: int, offset: int, size: int) -> bytes:
        """Download a chunk into a pooled buffer and answer from it, whatever the store does.

        For a reader whose chunk was evicted again each time it was fetched (a store far
        smaller than its readers' working set): bounded memory, always verified bytes.
        """
        buf = await self._take_buffer(_Flight(urgent=True))
        try:
            await self._download_chunk(entry, index, buf, self._urgent)
            return bytes(buf.view[offset:min(offset + size, buf.size)])
        finally:
            self._give_back(buf)

    async def read_block(self, entry: FileEntry, block: int, block_size: int) -> bytes:
        """Block `block` of `entry`, verified against its manifest block digest.

        For a random read of a chunk that is not local: one ranged GET of the block
        instead of the whole chunk. Blocks are kept in a small memory LRU of their own
        and never stored (the store holds whole chunks, named by their digest).
        """
        digest = entry.blocks[block]
        data = self._blocks.get(digest)
        if data is not None:
            self._blocks.move_to_end(digest)
            self._stats.memory_reads += 1
            return data
        if await self._joined(self._block_flights, digest):
            return await self.read_block(entry, block, block_size)
        with self._flying(self._block_flights, digest):
            start = block * block_size
            end = min(start + block_size, entry.size)
            room = bytearray(end - start + 1)  # one byte more shows a server sending too much
            self._stats.block_requests += 1
            await self._download(entry, f"block {block}", start, end, digest, memoryview(room), self._urgent)
            data = bytes(memoryview(room)[:end - start])
        self._blocks[digest] = data
        while len(self._blocks) > BLOCKS_KEPT:
            self._blocks.popitem(last=False)
        return data

    # One download per digest at a time (single-flight): a second caller waits for the
    # first one's result, and gets its error too.
    async def _joined(self, flights: dict[str, _Flight], digest: str, urgent: bool = False) -> bool:
        """Wait for another caller's download of `digest`; False if there is none."""
        flight = flights.get(digest)
        if flight is None:
            return False
        if urgent and not flight.urgent:
            # A fetch ahead may be waiting for a buffer only readers may take; this
            # reader now waits on it, so it may take one too (else the reader waits on
            # read-ahead that waits on readers).
            flight.urgent = True
            self._signal_freed()
        self._stats.shared_waits += 1
        await flight.done.wait()
        if flight.error is not None:
            raise _same_error(flight.error)
        return True

    @staticmethod
    @contextlib.contextmanager
    def _flying(flights: dict[str, _Flight], digest: str) -> Iterator[_Flight]:
        """This caller downloads `digest`; waiters are released when it is done or failed."""
        flight = flights[digest] = _Flight()
        try:
            yield flight
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            del flights[digest]
            flight.done.set()

    async def _store(self, buf: _Buffer) -> None:
        try:
            stored = await trio.to_thread.run_sync(
                self.store.put_verified, buf.digest, buf.mem, buf.size, limiter=self._write_limiter)
        except OSError as exc:
            log.error("cannot store chunk %s: %s; serving it from memory", buf.digest[:16], exc)
            stored = False
        buf.writing = False
        buf.stored = stored
        if stored:
            self._ready.add(buf.digest)
        else:
            self._stats.unstored += 1
        self._signal_freed()

    async def _take_buffer(self, flight: _Flight) -> _Buffer:
        """A buffer for a download: as a reader waiting now if `flight` is urgent, else a fetch ahead."""
        waited = False
        if self._last_read is None:
            self._last_read = trio.current_time()
        while True:
            if self._free:
                return self._free.pop()
            if self._allocated < self.buffer_count:
                self._allocated += 1
                return _Buffer(self.chunk_size)
            victim = self._victim(flight.urgent)
            if victim is not None:
                return self._memory.pop(victim)
            if not waited:
                waited = True
                self._stats.buffer_waits += 1
            # Woken by a finished write or a first read; the timeout re-checks idleness.
            with trio.move_on_after(READERS_IDLE_S / 4):
                await self._buffer_freed.wait()

    def _victim(self, urgent: bool) -> str | None:
        """The chunk whose buffer to recycle, least recently read first; None: wait.

        Only chunks whose store write has finished (stored, or refused by a full disk:
        then fetched again if needed). A reader waiting now takes any of them, chunks
        not read yet last; a fetch ahead only those readers are done with (see
        RECENT_READ_S).
        """
        now = trio.current_time()
        idle = now - self._last_read >= READERS_IDLE_S
        recent = unread = None
        for digest, b in self._memory.items():
            if b.writing:
                continue
            if b.reads:
                if b.bytes_read >= b.size or now - b.last_read >= RECENT_READ_S:
                    return digest
                recent = recent or digest
            elif unread is None and (urgent or idle or now - b.filled_at >= UNREAD_KEPT_S):
                unread = digest
        return (recent or unread) if urgent else unread

    def _give_back(self, buf: _Buffer) -> None:
        self._free.append(buf)
        self._signal_freed()

    def _signal_freed(self) -> None:
        # Waiters hold the old event; the next wait uses a fresh one.
        self._buffer_freed.set()
        self._buffer_freed = trio.Event()

    def forget(self, digest: str) -> None:
        """The chunk left the store (eviction); the next use must fetch it again."""
        self._ready.discard(digest)

    async def _download_chunk(self, entry: FileEntry, index: int, buf: _Buffer,
                              limiter: trio.CapacityLimiter) -> None:
        start, end = entry.chunk_range(index, self.chunk_size)
        await self._download(entry, f"chunk {index}", start, end, entry.chunks[index], buf.view, limiter)
        buf.size = end - start

    async def _download(self, entry: FileEntry, what: str, start: int, end: int, digest: str,
                        room: memoryview, limiter: trio.CapacityLimiter) -> None:
        """Bytes [start, end) of `entry` into `room`, verified against `digest`, with retries."""
        attempt = 0
        integrity_failures = 0
        while True:
            attempt += 1
            try:
                await trio.to_thread.run_sync(self._get_range, entry, start, end, digest, room, limiter=limiter)
                return
            except _Retryable as exc:
                if attempt >= self.retry.max_attempts:
                    self._failed("unavailable")
                    raise FetchError(
                        f"{entry.source.describe()} {what}: giving up after {attempt} attempts: {exc}"
                    ) from None
                log.info("retrying %s %s (attempt %d): %s", entry.path, what, attempt, exc,
                         extra=_context(entry, start // self.chunk_size, attempt=attempt))
            except ChunkIntegrityError:
                # With If-Match, an answer proves the object is still the manifest's
                # version, so a mismatch is damage in transit and gets the full retry
                # budget. Without an ETag, one retry covers transit damage; a second
                # mismatch means the object itself no longer matches the manifest.
                integrity_failures += 1
                self._stats.integrity_failures += 1
                limit = self.retry.max_attempts if entry.source.etag else 2
                if integrity_failures >= limit:
                    self._failed("integrity")
                    raise
            except ObjectChanged:
                self._failed("object_changed")
                raise
            except FetchError:
                self._failed("http")
                raise
            self._stats.retries += 1
            await trio.sleep(self.retry.delay(attempt))

    # ---------------------------------------------------------- worker thread
    def _get_range(self, entry: FileEntry, start: int, end: int, digest: str, room: memoryview) -> None:
        where = f"{entry.source.describe()} bytes {start}-{end - 1}"
        want = end - start
        self._stats.requests += 1
        try:
            body = self._open_range(entry, start, end, where)
            try:
                # One byte of room past the end shows a server sending more than asked.
                target = room if len(room) > want else memoryview(bytearray(want + 1))
                got = body.readinto(target[: want + 1])  # RangeBody: full unless the body ends
            finally:
                body.close()
        except _CONNECTION_ERRORS as exc:
            raise _Retryable(f"{where}: {exc}") from None
        if got != want:
            raise _Retryable(f"{where}: got {got} bytes, expected {want}")
        if target is not room:
            room[:want] = target[:want]
        # hashlib releases the GIL over large buffers: verification runs in parallel.
        if hashlib.sha256(room[:want]).hexdigest() != digest:
            raise ChunkIntegrityError(f"{where}: SHA-256 mismatch (object differs from the manifest)")
        self._stats.bytes += want

    def _open_range(self, entry: FileEntry, start: int, end: int, where: str) -> Any:
        src = entry.source
        if src.is_s3:
            try:
                body, content_range = self.source.get_range(src.bucket, src.key, start, end, src.etag)
            except S3Answered as exc:
                raise _classify_answer(exc, where) from None
            except S3NoCredentials as exc:
                raise FetchError(f"{where}: no S3 credentials ({exc})") from None
            if content_range is None and not (start == 0 and end == entry.size):
                # A server (or proxy) that ignores Range sends the whole object: drop it
                # unread rather than download the object once per chunk.
                body.close()
                raise _Retryable(f"{where}: server ignored the range request")
            return body
        request = urllib.request.Request(str(src.url), headers={"Range": f"bytes={start}-{end - 1}"})
        if src.etag:
            request.add_header("If-Match", src.etag)
        try:
            resp = urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as exc:
            raise _classify_status(exc.code, str(exc.reason), where) from None
        if resp.status != 206 and not (resp.status == 200 and start == 0 and end == entry.size):
            resp.close()
            raise ObjectChanged(f"{where}: server ignored the range request (HTTP {resp.status})")
        return resp


def _context(entry: FileEntry, index: int, **more: Any) -> dict[str, Any]:
    """Structured fields of a log line about one chunk (JSON log lines carry them)."""
    src = entry.source
    where = {"bucket": src.bucket, "key": src.key} if src.is_s3 else {"key": str(src.url)}
    return {"file": entry.path, "chunk": index, **where, **more}


def _classify_answer(exc: S3Answered, where: str) -> Exception:
    if exc.code in _RETRYABLE_CODES:
        return _Retryable(f"{where}: {exc.code}")
    return _classify_status(exc.status, exc.code, where)


def _classify_status(status: int, what: str, where: str) -> Exception:
    if status == 412:
        return ObjectChanged(f"{where}: object changed since the manifest was made (ETag mismatch)")
    if status in (404, 416):
        return ObjectChanged(f"{where}: object is gone or shorter than the manifest says ({what})")
    if status == 429 or status >= 500:
        return _Retryable(f"{where}: HTTP {status} {what}")
    return FetchError(f"{where}: HTTP {status} {what}")


def _same_error(exc: BaseException) -> BaseException:
    if isinstance(exc, FetchError):
        return type(exc)(str(exc))
    if isinstance(exc, trio.Cancelled):
        # The downloading task was cancelled; waiters see a fetch failure, not a cancel.
        return FetchError("download was cancelled")
    return FetchError(f"download failed: {exc}")
