"""What a worker process does with one input: compute, cache, and (for a local
destination) write the output, so that only a small record crosses back to the parent.

Moving the result's bytes back through a pipe, then hashing and writing them twice in
the parent, cost the parent as much CPU as the image work itself; here every byte of a
result is produced, hashed and written by the process that computed it.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mlfs.preprocess.cache import CachedResult, ResultCache
from mlfs.preprocess.steps import process
from mlfs.store.chunks import ChunkStore
from mlfs.store.direct_io import DirectWriter


class WorkFailure(Exception):
    """The result was computed but could not be stored or written; `str()` says why."""


@dataclass(frozen=True)
class Job:
    sample_json: str  # the per-image pipeline, canonical JSON
    data: bytes  # the input's bytes, already checked against its digest
    input_sha256: str
    key: str  # the result's cache key
    store_root: str  # the chunk store the cache lives in
    store_budget: int | None
    want_md5: bool  # an S3 destination compares ETags (MD5)
    out_path: str | None  # a local destination file to write, or None
    return_bytes: bool  # the parent uploads the result itself


_BUFFER_STEP = 16 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt(3) parameters
_buffer: mmap.mmap | None = None  # this process's page-aligned staging buffer


def _staged(result: bytes) -> memoryview:
    """`result` copied into a reused page-aligned buffer, so the store writes it with
    O_DIRECT: the cache's copy goes to disk without a second copy of every result in
    fresh page-cache memory (the most expensive part of storing it, measured)."""
    global _buffer
    if _buffer is None or len(_buffer) < len(result):
        if _buffer is not None:
            _buffer.close()
        _buffer = mmap.mmap(-1, max(_BUFFER_STEP, -(-len(result) // _BUFFER_STEP) * _BUFFER_STEP))
    _buffer[:len(result)] = result
    return memoryview(_buffer)[:len(result)]


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


def compute(job: Job) -> tuple[CachedResult, bytes | None]:
    """Run the pipeline on one input, cache the result, write it if local; raises
    `ImageFailure` for a bad input and `WorkFailure` when storing fails."""
    result = process(job.sample_json, job.data, job.input_sha256)
    staged = _staged(result)
    # Both copies go to the disk at once (O_DIRECT writes wait for the device).
    written = None if job.out_path is None else _output_thread().submit(
        write_atomically, Path(job.out_path), staged, True)
    try:
        entry = _cache(job.store_root, job.store_budget).put(job.key, staged, want_md5=job.want_md5, aligned=True)
    except OSError as exc:
        raise WorkFailure(f"cannot cache its result: {exc.strerror or exc}") from None
    finally:
        if written is not None:
            written.result()
    return entry, (result if job.return_bytes else None)


@functools.lru_cache(maxsize=1)
def _output_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="mlfs-output")


_writer = DirectWriter()


def write_atomically(path: Path, data: bytes | memoryview, aligned: bool = False) -> None:
    """Write `path` through a temp file and a rename: readers see the old file or the new.

    `aligned` (`data` starts on a page boundary): written with O_DIRECT where the file
    system takes it; a dataset's outputs are read later, by other processes, and
    filling the page cache with them costs the worker more CPU than computing them.
    """
    try:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            try:
                fd = _writer.create(tmp, memoryview(data), aligned)
            except FileNotFoundError:  # the first output in its directory
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = _writer.create(tmp, memoryview(data), aligned)
            os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise WorkFailure(f"cannot write {path}: {exc.strerror}") from None
