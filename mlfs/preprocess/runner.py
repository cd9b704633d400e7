"""Run a pipeline over every input of a source, writing results to a destination.

Image work runs in N worker processes (a `forkserver` pool, safe to start from a
threaded process such as the gateway). Each input is handled by one of a bounded set
of I/O threads in this process: look the result up in the cache (by the listing's
digest when the source knows it, so a cached input is not even downloaded), else
download, hand the bytes to a worker, store the result in the cache, and write it out.
There are more I/O threads than workers, so workers always have images waiting while
downloads and uploads are in flight. From local files to local files, a worker does
all of it for each input it is handed (see `work`), and this process only hands out paths.

A failing input (corrupt, hostile, unreadable) is recorded with its reason and the run
goes on; nothing is cached for it.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from mlfs.preprocess.cache import CachedResult, ResultCache
from mlfs.preprocess.locations import (
    InputError,
    InputItem,
    LocalInput,
    LocalOutput,
    S3Input,
    S3Output,
    check_size,
    verify_digest,
)
from mlfs.preprocess.pipeline import Pipeline
from mlfs.preprocess.steps import ImageFailure, output_suffix, prepare
from mlfs.preprocess.work import Done, Failed, Job, Outcome, compute, compute_many, prepare_worker

MAX_FAILURES_KEPT = 1000
BATCH = 8  # inputs per hand-off to an I/O thread and per worker call


@dataclass
class RunStats:
    total: int = 0
    done: int = 0  # computed in this run
    cached: int = 0  # taken from the cache
    failed: int = 0
    decoded: int = 0  # inputs handed to decode (0 on a fully cached re-run)
    written: int = 0  # output objects actually sent (identical ones already there are skipped)
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    manifest: str | None = None

    @property
    def processed(self) -> int:
        return self.done + self.cached + self.failed

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "done": self.done, "cached": self.cached, "failed": self.failed,
                "decoded": self.decoded, "written": self.written, "seconds": round(self.seconds, 3),
                "failures": [{"input": k, "error": e} for k, e in self.failures], "manifest": self.manifest}


Progress = Callable[[RunStats], None]


def dataset_name_version(prefix: str) -> tuple[str, str]:
    """Name and version of a dataset prefix: `datasets/{name}/{version}/…`, else the last two parts."""
    parts = [p for p in prefix.strip("/").split("/") if p]
    if len(parts) >= 3 and parts[0] == "datasets":
        return parts[1], parts[2]
    if len(parts) >= 2:
        return parts[-2], parts[-1]
    return (parts[-1] if parts else "dataset"), "v1"


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes, all started before this returns.

    A process with no other thread forks them (cheap: they inherit the imported
    modules). A threaded one (the gateway, or a run whose first cache miss came late)
    must not fork, since a lock another thread holds would stay locked in the child:
    it asks a fork server, started clean, for them.
    """
    if threading.active_count() == 1:
        ctx = multiprocessing.get_context("fork")
    else:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["mlfs.preprocess.work"])
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=prepare_worker)
    for future in [pool.submit(int) for _ in range(workers)]:
        future.result()
    return pool


def _nested_prefix(src_uri: str, dst_uri: str) -> str | None:
    """The destination relative to the source when it lies inside it, else None."""
    src, dst = src_uri.rstrip("/") + "/", dst_uri.rstrip("/") + "/"
    return dst[len(src):] if dst.startswith(src) and dst != src else None


class Run:
    def __init__(self, pipeline: Pipeline, source: S3Input | LocalInput, output: S3Output | LocalOutput,
                 cache: ResultCache, workers: int | None = None, io_threads: int | None = None,
                 progress: Progress | None = None, stop: threading.Event | None = None,
                 name: str | None = None, version: str | None = None) -> None:
        self.pipeline = pipeline
        self.source = source
        self.output = output
        self.cache = cache
        self.workers = max(1, workers or os.cpu_count() or 1)
        # Enough threads that S3 round trips (a PUT is several ms) never leave workers
        # idle. Local files need none of that: two batches per worker keep one waiting
        # while the other computes, and more threads only contend for the interpreter
        # (measured: 16 threads delayed a run's first batch by tens of milliseconds).
        local = isinstance(source, LocalInput) and isinstance(output, LocalOutput)
        self.io_threads = io_threads or (self.workers * 2 if local else max(16, self.workers * 4))
        self.progress = progress
        self.stop = stop or threading.Event()
        self.stats = RunStats()
        self.name, self.version = name, version
        self._lock = threading.Lock()
        out = pipeline.output
        self._shards = out.name == "arrays" and out.params["format"] == "safetensors"
        self._suffix = output_suffix(out.params)
        self._sample_json = pipeline.sample_json()
        # From local files to local files, workers read, hash and look up each input
        # themselves (see `work`); shards are put together here from cached results.
        self._lookup_in_workers = local and not self._shards
        self._results: dict[str, CachedResult] = {}
        self._pool: ProcessPoolExecutor | None = None
        self._suspects = threading.Lock()

    # ---------------------------------------------------------------- driving
    def run(self) -> RunStats:
        started = time.monotonic()
        items = self.source.list()
        self.output.prepare()
        planned = self._plan(items)
        if self._may_compute(planned):
            prepare(self._sample_json)  # once, here: forked workers inherit it
            self._workers()  # start the processes before any thread exists (see worker_pool)
        try:
            with ThreadPoolExecutor(self.io_threads) as threads:
                try:
                    for _ in threads.map(self._handle, self._batches(planned)):
                        self._report()
                except BaseException:
                    self.stop.set()  # interrupted: inputs not yet started are skipped
                    raise
        finally:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
        if not self.stop.is_set():
            if self._shards:
                self._write_shards()
            self.stats.manifest = self._finish()
        self.stats.written = self.output.uploaded
        self.stats.seconds = time.monotonic() - started
        self._report(final=True)
        return self.stats

    def _may_compute(self, planned: list[tuple[InputItem, str]]) -> bool:
        # Inputs of unknown digest, or without a cache entry, need workers; a fully
        # cached run over a gateway listing starts none.
        return any(item.sha256 is None or not self.cache.has(self.pipeline.result_key(item.sha256))
                   for item, _ in planned)

    def _plan(self, items: list[InputItem]) -> list[tuple[InputItem, str]]:
        """(input, output name); a second input mapping to the same output name fails."""
        seen: dict[str, str] = {}
        planned = []
        inside = _nested_prefix(self.source.uri, self.output.uri)
        for item in items:
            if inside is not None and item.rel.startswith(inside):
                continue  # outputs of an earlier run into a destination inside the source
            self.stats.total += 1
            out = str(PurePosixPath(item.rel).with_suffix(self._suffix))
            if out in seen:
                self._fail(item, f"its output {out} would overwrite the output of {seen[out]}")
                continue
            seen[out] = item.rel
            planned.append((item, out))
        return planned

    def _batches(self, planned: list[tuple[InputItem, str]]) -> list[list[tuple[InputItem, str]]]:
        # Inputs travel in small batches: one thread hand-off and one worker round trip
        # per batch instead of per image (measured: per-image hand-offs cost the parent
        # 0.75 ms of CPU an image, a sixth of what the image work costs). Batches stay
        # small enough that every I/O thread and every worker has some.
        size = max(1, min(BATCH, len(planned) // (self.io_threads * 2)))
        # The first batches grow from one input, so that each worker starts on the first
        # image read rather than once a whole batch is (the I/O threads read theirs at
        # once, sharing the interpreter); the last ones shrink again, so that the workers
        # finish together instead of one idling while the other ends a full batch.
        ramp = [n for n in (1, 2, 4) if n < size for _ in range(self.workers)]
        middle = len(planned) - 2 * sum(ramp)
        if middle < 0:
            ramp, middle = [], len(planned)
        sizes = ramp + [size] * (middle // size) + ([middle % size] if middle % size else []) + ramp[::-1]
        batches, at = [], 0
        for n in sizes:
            batches.append(planned[at:at + n])
            at += n
        return batches

    def _handle(self, batch: list[tuple[InputItem, str]]) -> None:
        pending: list[tuple[InputItem, str, Job]] = []
        for item, out in batch:
            if self.stop.is_set():
                return
            try:
                job = self._one(item, out)
            except (InputError, ImageFailure) as exc:
                self._fail(item, str(exc))
                continue
            if job is not None:
                pending.append((item, out, job))
        if not pending:
            return
        for (item, out, job), outcome in zip(pending, self._compute([job for _, _, job in pending]), strict=True):
            if outcome.decoded:
                self._count("decoded")
            if isinstance(outcome, Failed):  # the image failed, or its result could not be stored
                self._fail(item, outcome.reason)
                continue
            try:
                self._computed(out, job, outcome)
            except (InputError, ImageFailure) as exc:
                self._fail(item, str(exc))

    def _one(self, item: InputItem, out: str) -> Job | None:
        """Everything for one input up to the image work: the job for a worker, or None
        when the input was served from the cache."""
        if self._lookup_in_workers:
            assert isinstance(self.source, LocalInput) and isinstance(self.output, LocalOutput)
            check_size(item)
            self.source.prefetch(item)  # read from the disk while the worker finishes earlier images
            return Job(self._sample_json, None, str(self.source.root / item.rel), None, item.size, None,
                       str(self.cache.store.root), self.cache.store.budget, want_md5=False,
                       out_path=str(self.output.path_of(out)), return_bytes=False)
        data: bytes | None = None
        digest = item.sha256
        if digest is None:
            data = self.source.read(item)
            digest = verify_digest(item, data)
        key = self.pipeline.result_key(digest)
        known = self.cache.describe(key)
        if known is not None and not self._shards and self.output.holds_result(out, known):
            # The destination already holds the cached result's exact bytes (an S3
            # object whose ETag is the MD5 the entry recorded; a local file a run wrote
            # with the entry's SHA-256, unchanged since): nothing to read, verify or send.
            self._count("cached")
            self.output.keep(out, known)
            return None
        entry = None if known is None else self.cache.checked(known)
        result: bytes | None = None
        # Shards read cached results at the end; an S3 destination may already hold them.
        if entry is not None and not self._shards and isinstance(self.output, LocalOutput):
            result = self.cache.read(entry)
            if result is None:
                entry = None
        if entry is not None:
            self._count("cached")
            self._deliver(out, entry, result)
            return None
        if data is None:
            data = self.source.read(item)
            verify_digest(item, data)
        # The worker caches the result and writes a local output itself.
        local = self.output.path_of(out) if isinstance(self.output, LocalOutput) and not self._shards else None
        # A local input is read again by the worker (from the page cache) instead of
        # travelling through its pipe.
        path = str(self.source.root / item.rel) if isinstance(self.source, LocalInput) else None
        return Job(self._sample_json, None if path else data, path, digest, len(data), key,
                   str(self.cache.store.root), self.cache.store.budget,
                   want_md5=isinstance(self.output, S3Output), out_path=None if local is None else str(local),
                   return_bytes=isinstance(self.output, S3Output) and not self._shards)

    def _computed(self, out: str, job: Job, done: Done) -> None:
        self._count("done" if done.decoded else "cached")
        if job.out_path is not None:
            if done.written:
                self.output.written_elsewhere(out)
            else:
                self.output.keep(out, done.entry)
            return
        self._deliver(out, done.entry, done.data)

    def _deliver(self, out: str, entry: CachedResult, result: bytes | None) -> None:
        """Put a result (its bytes, if already at hand) into the destination."""
        if self._shards:
            with self._lock:
                self._results[out] = entry
            return
        if result is None:
            if self.output.holds_result(out, entry):
                self.output.keep(out, entry)
                return
            result = self.cache.read(entry)
            if result is None:
                raise InputError("its cached result vanished while the run was using it; run again")
        if isinstance(self.output, S3Output):
            self.output.write(out, result, entry.md5 or None, cached=entry)
        else:
            self.output.write(out, result, entry.md5 or None, sha256=entry.sha256)

    def _compute(self, jobs: list[Job]) -> list[Outcome]:
        # A worker that dies (killed, or crashed inside a decoder) breaks the whole pool
        # and fails every image in flight. Each of those is tried again alone, in a
        # process of its own, so only an image that kills its own worker is reported.
        pool = self._workers()
        try:
            return pool.submit(compute_many, compute, jobs).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
        outcomes: list[Outcome] = []
        for job in jobs:
            with self._suspects, worker_pool(1) as alone:
                try:
                    outcomes.extend(alone.submit(compute_many, compute, [job]).result())
                except BrokenProcessPool:
                    outcomes.append(Failed("a worker process died while processing it", True))
        return outcomes

    def _workers(self) -> ProcessPoolExecutor:
        # Started at the first cache miss: a fully cached run starts no process at all.
        with self._lock:
            if self._pool is None:
                self._pool = worker_pool(self.workers)
            return self._pool

    def _write_shards(self) -> None:
        from safetensors.numpy import save

        names = sorted(self._results)
        size = self.pipeline.output.params["shard_size"]
        groups = [names[i:i + size] for i in range(0, len(names), size)]
        index = {"format": "mlfs.preprocess.shards/1", "pipeline": self.pipeline.digest,
                 "shards": [], "samples": {}}
        for number, group in enumerate(groups):
            shard = f"shard-{number:05d}-of-{len(groups):05d}.safetensors"
            tensors = {}
            for name in group:
                data = self.cache.read(self._results[name])
                if data is None:
                    raise InputError(f"the cached result of {name} vanished while the run was using it; run again")
                tensors[name] = np.load(io.BytesIO(data), allow_pickle=False)
                index["samples"][name] = shard
            self.output.write(shard, save(tensors))
            index["shards"].append({"file": shard, "samples": len(group)})
        self.output.write("index.json", (json.dumps(index, indent=1, sort_keys=True) + "\n").encode())

    def _finish(self) -> str:
        prefix = self.output.prefix if isinstance(self.output, S3Output) else str(self.output.root)
        name, version = dataset_name_version(prefix)
        metadata = {
            "lineage": {"inputs": [self.source.lineage()],
                        "pipeline": {"name": self.pipeline.name, "digest": self.pipeline.digest}},
            "preprocess": {"pipeline": self.pipeline.canonical(),
                           "counts": {"total": self.stats.total, "succeeded": self.stats.done + self.stats.cached,
                                      "failed": self.stats.failed},
                           "failed": [k for k, _ in self.stats.failures[:MAX_FAILURES_KEPT]]},
        }
        return self.output.finish(self.name or name, self.version or version, metadata)

    # ------------------------------------------------------------- bookkeeping
    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self.stats, what, getattr(self.stats, what) + 1)

    def _fail(self, item: InputItem, reason: str) -> None:
        with self._lock:
            self.stats.failed += 1
            if len(self.stats.failures) < MAX_FAILURES_KEPT:
                self.stats.failures.append((self.source.describe(item), reason))

    def _report(self, final: bool = False) -> None:
        if self.progress is not None:
            self.progress(self.stats)
