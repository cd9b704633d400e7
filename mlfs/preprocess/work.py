"""What a worker process does with one input: compute, cache, and (for a local
destination) write the output, so that only a small record crosses back to the parent.

Moving the result's bytes back through a pipe, then hashing and writing them twice in
the parent, cost the parent as much CPU as the image work itself; here every byte of a
result is produced, hashed and written by the process that computed it.

From a local directory to a local directory, the worker also reads and hashes the
input and looks its result up in the cache itself: the parent then only lists the
inputs and hands them out (measured: reading, hashing and looking up every input took
the parent 0.2 ms of CPU an image, which the worker, reading the input anyway, saves).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import mmap
import os
import secrets
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mlfs.preprocess.cache import CachedResult, PendingResult, ResultCache
from mlfs.preprocess.pipeline import result_key
from mlfs.preprocess.steps import ImageFailure, process_pieces
from mlfs.store.chunks import ChunkStore
from mlfs.store.direct_io import DirectWriter


class WorkFailure(Exception):
    """The result was computed but could not be stored or written; `str()` says why."""


@dataclass(frozen=True)
class Job:
    sample_json: str  # the per-image pipeline, canonical JSON
    data: bytes | None  # the input's bytes, already checked against its digest; or
    source_path: str | None  # a local input file to read here, checked against the digest
    input_sha256: str | None  # None: hashed here, and the result looked up here (see `lookup`)
    input_size: int  # as listed
    key: str | None  # the result's cache key (None with `input_sha256`)
    store_root: str  # the chunk store the cache lives in
    store_budget: int | None
    want_md5: bool  # an S3 destination compares ETags (MD5)
    out_path: str | None  # a local destination file to write, or None
    return_bytes: bool  # the parent uploads the result itself

    @property
    def lookup(self) -> bool:
        """The worker looks the result up in the cache (the parent did not)."""
        return self.input_sha256 is None


@dataclass(frozen=True)
class Done:
    """A job's result, in the cache (and at `out_path`, for a local destination)."""

    entry: CachedResult
    data: bytes | None  # the result's bytes, when the job asked for them
    decoded: bool  # computed for this job (False: found in the cache)
    written: bool  # `out_path` was written (False: it already held this result, or no `out_path`)


@dataclass(frozen=True)
class Failed:
    """A job that failed: the input is bad, or its result could not be stored or written."""

    reason: str
    decoded: bool  # it was handed to the pipeline (False: it failed before, or its result was cached)


@dataclass(frozen=True)
class _Input:
    data: bytes
    sha256: str
    key: str


_BUFFER_STEP = 16 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt(3) parameters
_SLOTS = 3  # results whose writes may be in flight while the next image is computed
_buffers: list[mmap.mmap | None] = [None] * _SLOTS  # this process's page-aligned staging buffers


def _staged(pieces: tuple[bytes | memoryview, ...], slot: int) -> memoryview:
    """The result's pieces copied into a reused page-aligned buffer, so that both copies
    of it (cache and local output) are written with O_DIRECT: without them, copying
    every result into fresh page-cache memory was the most expensive part of storing it."""
    views = [memoryview(piece).cast("B") for piece in pieces]
    size = sum(len(view) for view in views)
    buf = _buffers[slot]
    if buf is None or len(buf) < size:
        # The old buffer is unmapped when the last view of it is gone.
        buf = _buffers[slot] = mmap.mmap(-1, max(_BUFFER_STEP, -(-size // _BUFFER_STEP) * _BUFFER_STEP))
    at = 0
    for view in views:
        buf[at:at + len(view)] = view
        at += len(view)
    return memoryview(buf)[:size]


def prepare_worker() -> None:
    """Keep freed image and array memory in this process for the next image.

    glibc returns every allocation above its mmap threshold (a decoded image, the float
    arrays of `normalize`) to the kernel when it is freed, so each image faults in
    megabytes of fresh memory again: measured, a third of a worker's CPU. Raising the
    thresholds keeps that memory on the heap for reuse.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum
        libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)
    except (OSError, AttributeError):
        pass  # not glibc: its allocator's defaults


@functools.lru_cache(maxsize=4)
def _cache(root: str, budget: int | None) -> ResultCache:
    # One store per worker process: opening it scans the store once.
    return ResultCache(ChunkStore(root, budget))


def compute(job: Job) -> Done:
    """Run the pipeline on one input (or find its result in the cache, for a `lookup`
    job), cache the result, write it if local; raises `ImageFailure` for a bad input
    and `WorkFailure` when storing fails."""
    prepared = _prepare(job)
    return prepared if isinstance(prepared, Done) else _start(job, prepared, 0)()


Outcome = Done | Failed


def compute_many(fn: Callable[[Job], Done], jobs: list[Job]) -> list[Outcome]:
    """`fn` (`compute`, or a stand-in a test gives) on each job; a bad input, or a
    result that could not be stored, is its `Failed` outcome and the batch goes on.

    With `compute`, an image's writes (which wait for the disk) run while the next
    image is computed; every write has finished when this returns.
    """
    outcomes: list[Outcome | None] = [None] * len(jobs)
    in_flight: list[tuple[int, Callable[[], Done]] | None] = [None] * _SLOTS

    def settle(slot: int) -> None:
        pending = in_flight[slot]
        if pending is not None:
            in_flight[slot] = None
            index, finish = pending
            try:
                outcomes[index] = finish()
            except (ImageFailure, WorkFailure) as exc:
                outcomes[index] = Failed(str(exc), True)

    try:
        for index, job in enumerate(jobs):
            slot = index % _SLOTS
            settle(slot)  # its buffer is free again
            decoded = not job.lookup  # the parent found no cached result for it
            try:
                if fn is not compute:
                    outcomes[index] = fn(job)
                    continue
                prepared = _prepare(job)
                if isinstance(prepared, Done):
                    outcomes[index] = prepared
                    continue
                decoded = True
                in_flight[slot] = (index, _start(job, prepared, slot))
            except (ImageFailure, WorkFailure) as exc:
                outcomes[index] = Failed(str(exc), decoded)
    finally:
        for slot in range(_SLOTS):
            settle(slot)
    return outcomes  # type: ignore[return-value]  # every index is settled


def _prepare(job: Job) -> _Input | Done:
    """The input's bytes, digest and result key; for a `lookup` job whose result is
    cached, that result (written to `out_path` unless it is already there) instead."""
    data = job_input(job)
    if not job.lookup:
        assert job.input_sha256 is not None and job.key is not None
        return _Input(data, job.input_sha256, job.key)
    digest = hashlib.sha256(data).hexdigest()
    key = result_key(job.sample_json, digest)
    cached = _cached(job, key)
    return cached if cached is not None else _Input(data, digest, key)


def _cached(job: Job, key: str) -> Done | None:
    """A `lookup` job's result from the cache, as `Run` takes one: an output already
    holding it is left alone, else it is written from the cache's verified bytes."""
    cache = _cache(job.store_root, job.store_budget)
    known = cache.describe(key)
    if known is None:
        return None
    if job.out_path is not None and holds(Path(job.out_path), known.sha256, known.size):
        return Done(known, None, decoded=False, written=False)
    data = cache.read(known)  # checks each chunk, then the whole result's SHA-256
    if data is None:
        return None  # its chunks are gone or damaged: computed again
    if job.out_path is not None:
        write_atomically(Path(job.out_path), data, sha256=known.sha256)
    return Done(known, data if job.return_bytes else None, decoded=False, written=job.out_path is not None)


def _start(job: Job, inp: _Input, slot: int) -> Callable[[], Done]:
    """Compute one result and start writing it (cache and local output, at once);
    the returned call waits for the writes and gives the outcome.

    Both files are created here and finished by the returned call, on this thread; a
    helper thread makes only the two writes that wait for the disk (see `PendingFile`).
    """
    staged = _staged(process_pieces(job.sample_json, inp.data, inp.sha256), slot)
    sha256 = hashlib.sha256(staged).hexdigest()
    cache = _cache(job.store_root, job.store_budget)
    try:
        cached = cache.begin_put(inp.key, staged, job.want_md5, True, sha256)
    except OSError as exc:
        raise WorkFailure(f"cannot cache its result: {exc.strerror or exc}") from None
    try:
        output = None if job.out_path is None else OutputWrite(Path(job.out_path), staged, True, sha256)
    except BaseException:
        cached.abandon()
        raise
    bulk = _write_threads().submit(_write_bulk, cached, output)

    def finish() -> Done:
        try:
            bulk.result()  # keeps the writes' errors for the commits
        except BaseException:
            cached.abandon()
            if output is not None:
                output.abandon()
            raise
        try:
            entry = cached.commit()
        except OSError as exc:
            if output is not None:
                output.abandon()
            raise WorkFailure(f"cannot cache its result: {exc.strerror or exc}") from None
        if output is not None:
            output.commit()
        # A copy: the staging buffer takes a later result once this returns.
        return Done(entry, bytes(staged) if job.return_bytes else None, decoded=True, written=output is not None)

    return finish


def _write_bulk(cached: PendingResult, output: OutputWrite | None) -> None:
    cached.bulk()
    if output is not None:
        output.bulk()


def job_input(job: Job) -> bytes:
    """The input's bytes. A local file is read here rather than sent through the
    worker's pipe (a batch of images is larger than a pipe holds, so the worker would
    wait for the parent to be scheduled several times to receive it), and checked
    against the size it was listed with and the digest (if the parent gave one) its
    result will be cached under."""
    if job.data is not None:
        return job.data
    assert job.source_path is not None
    changed = ImageFailure("it changed while the run was reading it; run again")
    try:
        # Non-blocking and bounded: a path replaced since it was listed (by a FIFO, a
        # device, a larger file) fails the image instead of hanging or filling memory.
        fd = os.open(job.source_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise changed
            data = _read_up_to(fd, job.input_size + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ImageFailure(f"cannot read: {exc.strerror}") from None
    if len(data) != job.input_size:
        raise changed
    if job.input_sha256 is not None and hashlib.sha256(data).hexdigest() != job.input_sha256:
        raise changed
    return data


def _read_up_to(fd: int, limit: int) -> bytes:
    """Up to `limit` bytes from `fd`, fewer only at the end of the file."""
    pieces, left = [], limit
    while left:
        piece = os.read(fd, left)
        if not piece:
            break
        pieces.append(piece)
        left -= len(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


@functools.lru_cache(maxsize=1)
def _write_threads() -> ThreadPoolExecutor:
    # Created in the worker process (a thread does not survive a fork). One image's
    # writes are one task.
    return ThreadPoolExecutor(_SLOTS, thread_name_prefix="mlfs-write")


_writer = DirectWriter()


# On a written output: the first 128 bits of the SHA-256 of what was written, and its
# modification time; its size is checked too. A re-run finds an output that still
# matches the result it would write and leaves it alone; a file changed since (its mtime
# moved) is written again. Short enough (at most 52 bytes) to be kept inside the inode on
# ext4 with 256-byte inodes, where a longer value costs each output a 4 KiB block of its
# own, written with it and read back by the re-run's check.
_WRITTEN_XATTR = "user.mlfs.result"


def _written_mark(sha256: str, mtime_ns: int) -> bytes:
    return f"{sha256[:32]}:{mtime_ns}".encode()


def holds(path: Path, sha256: str, size: int) -> bool:
    """True when `path` is an output written with exactly these bytes and unchanged since."""
    try:
        st = os.stat(path)
        mark = os.getxattr(path, _WRITTEN_XATTR)
    except OSError:
        return False
    return st.st_size == size and mark == _written_mark(sha256, st.st_mtime_ns)


def write_atomically(path: Path, data: bytes | memoryview, aligned: bool = False, sha256: str | None = None) -> None:
    """Write `path` through a temp file and a rename: readers see the old file or the new.

    `aligned` (`data` starts on a page boundary): written with O_DIRECT where the file
    system takes it; a dataset's outputs are read later, by other processes, and
    filling the page cache with them costs the worker more CPU than computing them.
    `sha256` (of `data`) is recorded on the file for `holds`.
    """
    write = OutputWrite(path, data, aligned, sha256)
    try:
        write.bulk()
    except BaseException:
        write.abandon()
        raise
    write.commit()


class OutputWrite:
    """`write_atomically` in two steps: the temp file is created now, `bulk()` writes it
    (on any thread), `commit()` (on the creating thread) finishes it and renames it into
    place. Errors are `WorkFailure`s; a failed write leaves no temp file behind."""

    def __init__(self, path: Path, data: bytes | memoryview, aligned: bool = False, sha256: str | None = None) -> None:
        self.path, self._sha256 = path, sha256
        self._tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            try:
                self._file = _writer.begin(self._tmp, memoryview(data), aligned)
            except FileNotFoundError:  # the first output in its directory
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = _writer.begin(self._tmp, memoryview(data), aligned)
        except OSError as exc:
            raise WorkFailure(f"cannot write {path}: {exc.strerror}") from None

    def bulk(self) -> None:
        self._file.bulk()

    def commit(self) -> None:
        try:
            try:
                fd = self._file.finish()
                try:
                    if self._sha256 is not None:
                        mtime_ns = os.fstat(fd).st_mtime_ns
                        with contextlib.suppress(OSError):  # no user xattrs here: outputs are rewritten
                            os.setxattr(fd, _WRITTEN_XATTR, _written_mark(self._sha256, mtime_ns))
                finally:
                    os.close(fd)
                os.replace(self._tmp, self.path)
            except BaseException:
                self._tmp.unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise WorkFailure(f"cannot write {self.path}: {exc.strerror}") from None

    def abandon(self) -> None:
        self._file.abandon()
        self._tmp.unlink(missing_ok=True)
