"""What `mlfs cache` does to a chunk store: report, verify, evict, warm.

The store is plain files shared by every process, so these work while mounts run;
`gc` evicts least recently used chunks the same way a mount does when over budget.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from mlfs.errors import ConfigError, MlfsError
from mlfs.fetch.fetcher import ChunkFetcher
from mlfs.manifest.model import FileEntry, Manifest
from mlfs.s3.client import S3Settings
from mlfs.s3.probe import probe_s3
from mlfs.s3.source import open_source
from mlfs.store.chunks import ChunkStore


@dataclass
class Holding:
    """How much of one manifest the store holds."""

    name: str
    version: str
    chunks: int
    chunks_present: int
    bytes: int
    bytes_present: int


def manifest_chunks(manifest: Manifest) -> dict[str, int]:
    """Each distinct chunk of a manifest and its size."""
    out: dict[str, int] = {}
    for entry in manifest.files:
        for index, digest in enumerate(entry.chunks):
            start, end = entry.chunk_range(index, manifest.chunk_size)
            out[digest] = end - start
    return out


def holding(store: ChunkStore, manifest: Manifest) -> Holding:
    chunks = manifest_chunks(manifest)
    present = {d: n for d, n in chunks.items() if store.contains(d)}
    return Holding(manifest.name, manifest.version, len(chunks), len(present),
                   sum(chunks.values()), sum(present.values()))


def usage(store: ChunkStore) -> dict[str, int | None]:
    stats = store.statistics()
    disk = shutil.disk_usage(store.root)
    quarantined = sum(1 for _ in store.quarantine_dir.iterdir())
    return {"chunks": stats.chunks, "bytes": stats.bytes, "budget": store.budget,
            "disk_free": disk.free, "disk_total": disk.total, "quarantined": quarantined}


def all_chunks(store: ChunkStore) -> list[Path]:
    return [f for sub in sorted(store.chunk_dir.iterdir()) for f in sorted(sub.iterdir())]


def verify(store: ChunkStore, progress: Callable[[int], None] = lambda n: None) -> list[str]:
    """Re-hash every chunk with SHA-256; quarantine and return those that do not match."""
    bad = []
    for path in all_chunks(store):
        h = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
        except FileNotFoundError:
            continue  # evicted meanwhile
        size = path.stat().st_size if path.exists() else 0
        if h.hexdigest() != path.name:
            store.quarantine(path.name, "SHA-256 does not match its name (mlfs cache verify)")
            bad.append(path.name)
        progress(size)
    return bad


def gc(store: ChunkStore, target: int) -> tuple[int, int]:
    """Evict least recently used chunks until the store holds at most `target` bytes;
    returns (bytes before, bytes after)."""
    if store.authoritative:
        raise ConfigError(f"{store.root} holds an mlfs gateway's only copy of its objects; nothing is evicted")
    before = store.usage
    store.budget = target
    store.evict_if_needed()
    return before, store.usage


def warm(manifest: Manifest, store: ChunkStore, settings: S3Settings, parallel: int,
         progress: Callable[[int], None]) -> list[str]:
    """Fetch (and verify) every chunk of `manifest` into the store; returns failures."""
    probe_s3(manifest, settings)
    source = open_source(settings)
    todo: dict[str, tuple[FileEntry, int]] = {}
    for entry in manifest.files:
        for index, digest in enumerate(entry.chunks):
            todo.setdefault(digest, (entry, index))
    failures: list[str] = []

    async def main() -> None:
        limiter = trio.CapacityLimiter(parallel)
        fetcher = ChunkFetcher(source, store, manifest.chunk_size, limiter)
        slots = trio.Semaphore(parallel * 2)

        async def one(entry: FileEntry, index: int) -> None:
            try:
                await fetcher.ensure(entry, index)
            except MlfsError as exc:
                failures.append(str(exc))
            finally:
                slots.release()
            start, end = entry.chunk_range(index, manifest.chunk_size)
            progress(end - start)

        async with trio.open_nursery() as nursery:
            for entry, index in todo.values():
                await slots.acquire()
                nursery.start_soon(one, entry, index)

    try:
        trio.run(main)
    finally:
        source.close()
    return failures


def open_store(cache: Path | None, create: bool = False) -> ChunkStore:
    from mlfs.config import default_cache_dir

    root = cache or default_cache_dir()
    if not create and not (Path(root) / "chunks").is_dir():
        # Reporting on a store that does not exist would create it; say so instead.
        raise ConfigError(f"no chunk store at {root} (give --cache DIR)")
    return ChunkStore(root)
