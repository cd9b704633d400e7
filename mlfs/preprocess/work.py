"""What a worker process does with one input: compute, cache, and (for a local
destination) write the output, so that only a small record crosses back to the parent.

Moving the result's bytes back through a pipe, then hashing and writing them twice in
the parent, cost the parent as much CPU as the image work itself; here every byte of a
result is produced, hashed and written by the process that computed it.
"""

from __future__ import annotations

import functools
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from mlfs.preprocess.cache import CachedResult, ResultCache
from mlfs.preprocess.steps import process
from mlfs.store.chunks import ChunkStore


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


@functools.lru_cache(maxsize=4)
def _cache(root: str, budget: int | None) -> ResultCache:
    # One store per worker process: opening it scans the store once.
    return ResultCache(ChunkStore(root, budget))


def compute(job: Job) -> tuple[CachedResult, bytes | None]:
    """Run the pipeline on one input, cache the result, write it if local; raises
    `ImageFailure` for a bad input and `WorkFailure` when storing fails."""
    result = process(job.sample_json, job.data, job.input_sha256)
    try:
        entry = _cache(job.store_root, job.store_budget).put(job.key, result, want_md5=job.want_md5)
    except OSError as exc:
        raise WorkFailure(f"cannot cache its result: {exc.strerror or exc}") from None
    if job.out_path is not None:
        write_atomically(Path(job.out_path), result)
    return entry, (result if job.return_bytes else None)


def write_atomically(path: Path, data: bytes) -> None:
    """Write `path` through a temp file and a rename: readers see the old file or the new."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise WorkFailure(f"cannot write {path}: {exc.strerror}") from None
