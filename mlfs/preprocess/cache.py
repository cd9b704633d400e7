"""Results cached by content in a chunk store.

A result's bytes are chunks of the store (named by their SHA-256, so a result that is
also a gateway object, or another pipeline's result, is stored once). The store's
`preprocess/results/` directory maps each result key (SHA-256 over the per-image
pipeline and the input digest) to the result's chunk digests, size, SHA-256 and MD5.

That map is sixteen append-only logs (by the key's first hex digit), one JSON record a
line, written with one `O_APPEND` write after the result's chunks: a file per result
cost an inode and a rename each, which on some file systems (ext4 without a journal,
soon after many deletions) cost more than storing the result. Every process sharing
the store reads the logs it needs and then only what was appended since; a record cut
short (a full disk) is skipped and cannot damage the records after it. A lookup whose
chunks are gone (evicted from a mount cache, or freed by the gateway) is a miss, and
a drop record is appended. `clear` removes the logs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlfs.store.chunks import ChunkStore

RESULT_CHUNK = 16 << 20
INDEX_DIR = "preprocess/results"
LOG_NAMES = "0123456789abcdef"
# Written by a gateway's preprocessing service into its store: proof of a shared filesystem.
TOKEN_FILE = "preprocess/gateway-token"


@dataclass(frozen=True)
class CachedResult:
    key: str
    size: int
    sha256: str
    md5: str
    chunks: tuple[str, ...]


@dataclass
class _Log:
    """What this process has read of one log file."""
    inode: int = -1  # no file read yet
    offset: int = 0
    entries: dict[str, CachedResult] = field(default_factory=dict)


class ResultCache:
    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self.index = store.root / INDEX_DIR
        self.index.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._logs: dict[str, _Log] = {}

    def _log_path(self, name: str) -> Path:
        return self.index / f"{name}.log"

    def _read_log(self, name: str) -> dict[str, CachedResult]:
        """The entries of one log, reading only what was appended since the last call."""
        path = self._log_path(name)
        with self._lock:
            log = self._logs.setdefault(name, _Log())
            try:
                st = os.stat(path)
            except FileNotFoundError:
                log.inode, log.offset, log.entries = -1, 0, {}
                return log.entries
            if st.st_ino != log.inode or st.st_size < log.offset:
                log.inode, log.offset, log.entries = st.st_ino, 0, {}  # new, or cleared and rewritten
            if st.st_size > log.offset:
                with open(path, "rb") as f:
                    f.seek(log.offset)
                    data = f.read(st.st_size - log.offset)
                complete = data.rfind(b"\n") + 1  # a record still being written waits
                for line in data[:complete].split(b"\n"):
                    self._apply(log.entries, line)
                log.offset += complete
            return log.entries

    @staticmethod
    def _apply(entries: dict[str, CachedResult], line: bytes) -> None:
        if not line.strip():
            return
        try:
            doc = json.loads(line)
            key = doc["key"]
            if doc.get("drop"):
                entries.pop(key, None)
            else:
                entries[key] = CachedResult(key, int(doc["size"]), doc["sha256"], doc["md5"], tuple(doc["chunks"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # a record cut short, or not ours: skipped

    def _append(self, key: str, doc: dict[str, object]) -> None:
        # Leading and trailing newlines: a record cut short before this one ends on its own line.
        record = b"\n" + json.dumps({"key": key, **doc}, separators=(",", ":")).encode() + b"\n"
        fd = os.open(self._log_path(key[0]), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.write(fd, record) != len(record):
                raise OSError(errno.ENOSPC, f"chunk store {self.store.root} is full")
        finally:
            os.close(fd)

    def has(self, key: str) -> bool:
        """Cheap: an entry exists (its chunks are checked by `lookup`)."""
        return self.describe(key) is not None

    def describe(self, key: str) -> CachedResult | None:
        """The entry for `key` as recorded, its chunks unchecked (for comparing digests only)."""
        if not key or key[0] not in LOG_NAMES:
            return None
        return self._read_log(key[0]).get(key)

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

    def put(self, key: str, data: bytes | memoryview, want_md5: bool = True, aligned: bool = False,
            sha256: str | None = None) -> CachedResult:
        """Store a result; its MD5 (what S3 reports as a single-part ETag) only if wanted ("" otherwise).

        `aligned`: `data` starts on a page boundary, so its chunks can be written with
        O_DIRECT (without filling the page cache with a second copy of the result).
        `sha256`: the caller has just hashed `data` (not hashed again when it is one chunk).
        """
        view = memoryview(data)
        if sha256 is not None and len(view) <= RESULT_CHUNK:
            chunks: tuple[str, ...] = (self._put_chunk(view, aligned, sha256),)
        else:
            chunks = tuple(self._put_chunk(view[i:i + RESULT_CHUNK], aligned)
                           for i in range(0, max(len(view), 1), RESULT_CHUNK))
        # A one-chunk result's SHA-256 is its chunk's name: no second pass over the bytes.
        whole = sha256 or (chunks[0] if len(chunks) == 1 else hashlib.sha256(data).hexdigest())
        entry = CachedResult(key, len(view), whole, hashlib.md5(data).hexdigest() if want_md5 else "", chunks)
        self._append(key, {"size": entry.size, "sha256": entry.sha256, "md5": entry.md5, "chunks": list(chunks)})
        return entry

    def _put_chunk(self, piece: memoryview, aligned: bool, digest: str | None = None) -> str:
        # No fsync: a chunk cut short by a crash fails its check when the entry is next
        # looked up or read (xxh3 on first use, SHA-256 of the whole result on read), and
        # the result is computed again; a torn result is never served.
        digest = digest or hashlib.sha256(piece).hexdigest()
        if not self.store.put_verified(digest, piece, len(piece), aligned):
            raise OSError(errno.ENOSPC, f"chunk store {self.store.root} is full")
        return digest

    def entries(self) -> Iterator[CachedResult]:
        for name in LOG_NAMES:
            yield from list(self._read_log(name).values())

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
        for name in LOG_NAMES:
            entries = list(self._read_log(name).values())
            with contextlib.suppress(FileNotFoundError):
                self._log_path(name).unlink()
            for entry in entries:
                (free or self._discard)(list(entry.chunks))
                removed += 1
        # Entries of the earlier layout (a JSON file per result) are forgotten too.
        for sub in self.index.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                shutil.rmtree(sub, ignore_errors=True)
        return removed

    def _discard(self, digests: list[str]) -> None:
        for digest in digests:
            self.store.discard(digest)

    def _drop(self, key: str) -> None:
        with self._lock:
            log = self._logs.get(key[0])
            if log is not None:
                log.entries.pop(key, None)
        with contextlib.suppress(OSError):
            self._append(key, {"drop": True})
