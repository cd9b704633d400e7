"""Results cached by content in a chunk store.

A result's bytes are chunks of the store (named by their SHA-256, so a result that is
also a gateway object, or another pipeline's result, is stored once). The store's
`preprocess/results/` directory maps each result key (SHA-256 over the per-image
pipeline and the input digest) to a small JSON entry: the result's chunk digests, size,
SHA-256 and MD5. Entries are written by temp file + rename after their chunks, so a
reader sees a whole entry or none; a lookup whose chunks are gone (evicted from a mount
cache, or freed by the gateway) is a miss, and the entry is dropped.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mlfs.store.chunks import ChunkStore

RESULT_CHUNK = 16 << 20
INDEX_DIR = "preprocess/results"
# Written by a gateway's preprocessing service into its store: proof of a shared filesystem.
TOKEN_FILE = "preprocess/gateway-token"


@dataclass(frozen=True)
class CachedResult:
    key: str
    size: int
    sha256: str
    md5: str
    chunks: tuple[str, ...]


class ResultCache:
    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self.index = store.root / INDEX_DIR
        self.index.mkdir(parents=True, exist_ok=True)

    def _entry_path(self, key: str) -> Path:
        return self.index / key[:2] / f"{key}.json"

    def has(self, key: str) -> bool:
        """Cheap: an entry exists (its chunks are checked by `lookup`)."""
        return self._entry_path(key).exists()

    def describe(self, key: str) -> CachedResult | None:
        """The entry for `key` as recorded, its chunks unchecked (for comparing digests only)."""
        try:
            doc = json.loads(self._entry_path(key).read_bytes())
            return CachedResult(key, int(doc["size"]), doc["sha256"], doc["md5"], tuple(doc["chunks"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            self._drop(key)
            return None

    def lookup(self, key: str) -> CachedResult | None:
        """The entry for `key` if every chunk of it is present and intact."""
        entry = self.describe(key)
        if entry is None:
            return None
        if not all(self.store.ensure_verified(d) for d in entry.chunks):
            self._drop(key)
            return None
        return entry

    def read(self, entry: CachedResult) -> bytes | None:
        """The result's bytes, checked against its SHA-256; None if they are no longer there."""
        try:
            data = b"".join(self.store.read_all(d) for d in entry.chunks)
        except Exception:
            self._drop(entry.key)
            return None
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            self._drop(entry.key)
            return None
        return data

    def put(self, key: str, data: bytes | memoryview, want_md5: bool = True, aligned: bool = False) -> CachedResult:
        """Store a result; its MD5 (what S3 reports as a single-part ETag) only if wanted ("" otherwise).

        `aligned`: `data` starts on a page boundary, so its chunks can be written with
        O_DIRECT (without filling the page cache with a second copy of the result).
        """
        view = memoryview(data)
        chunks = tuple(self._put_chunk(view[i:i + RESULT_CHUNK], aligned)
                       for i in range(0, max(len(view), 1), RESULT_CHUNK))
        # A one-chunk result's SHA-256 is its chunk's name: no second pass over the bytes.
        whole = chunks[0] if len(chunks) == 1 else hashlib.sha256(data).hexdigest()
        entry = CachedResult(key, len(view), whole, hashlib.md5(data).hexdigest() if want_md5 else "", chunks)
        path = self._entry_path(key)
        tmp = path.with_name(f".{key}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        doc = json.dumps({"size": entry.size, "sha256": entry.sha256, "md5": entry.md5, "chunks": list(chunks)})
        try:
            tmp.write_text(doc)
        except FileNotFoundError:  # the first entry under this prefix
            path.parent.mkdir(exist_ok=True)
            tmp.write_text(doc)
        os.replace(tmp, path)
        return entry

    def _put_chunk(self, piece: memoryview, aligned: bool) -> str:
        # No fsync: a chunk cut short by a crash fails its check when the entry is next
        # looked up or read (xxh3 on first use, SHA-256 of the whole result on read), and
        # the result is computed again; a torn result is never served.
        digest = hashlib.sha256(piece).hexdigest()
        if not self.store.put_verified(digest, piece, len(piece), aligned):
            raise OSError(errno.ENOSPC, f"chunk store {self.store.root} is full")
        return digest

    def entries(self) -> Iterator[CachedResult]:
        for sub in sorted(self.index.iterdir()) if self.index.exists() else []:
            if not sub.is_dir():
                continue
            for path in sub.glob("*.json"):
                try:
                    doc = json.loads(path.read_bytes())
                    yield CachedResult(path.stem, int(doc["size"]), doc["sha256"], doc["md5"], tuple(doc["chunks"]))
                except (OSError, ValueError, KeyError, TypeError):
                    continue

    def stats(self) -> dict[str, int | str | bool]:
        count = size = 0
        for entry in self.entries():
            count += 1
            size += entry.size
        return {"store": str(self.store.root), "results": count, "bytes": size,
                "authoritative": self.store.authoritative}

    def clear(self, free: Callable[[list[str]], None] | None = None) -> int:
        """Forget every result; `free` (default: discard) gets the chunks to release."""
        removed = 0
        for entry in list(self.entries()):
            self._drop(entry.key)
            (free or self._discard)(list(entry.chunks))
            removed += 1
        return removed

    def _discard(self, digests: list[str]) -> None:
        for digest in digests:
            self.store.discard(digest)

    def _drop(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._entry_path(key).unlink()
