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

Each log file starts with a line naming its generation (random), written by whoever
creates the file; a process that has read a log checks that line before reading on, so
a log replaced by one that happens to get the same inode number is never read from the
old offset.

A log that has at least `COMPACT_MIN_RECORDS` records, more than half of them dead
(drops, and results recorded again), is compacted: its live entries are written to a
new file of a new generation that replaces it. Entries whose chunks were evicted stay:
the runner still uses them to recognise outputs already in place. Appenders hold a
shared `flock` (on a lock file beside the log, never replaced or removed) from opening
the log to their write; the compactor and `clear` hold an exclusive one from their read
to the rename or removal, so no record is lost to a compaction and a clear is never
undone by one. (On NFS, Linux emulates `flock` with byte-range locks, which do not
give these guarantees between the threads of one process.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlfs.store.chunks import ChunkStore, PendingChunk

logger = logging.getLogger(__name__)

RESULT_CHUNK = 16 << 20
INDEX_DIR = "preprocess/results"
LOG_NAMES = "0123456789abcdef"
# Written by a gateway's preprocessing service into its store: proof of a shared filesystem.
TOKEN_FILE = "preprocess/gateway-token"
# A log shorter than this many records is never compacted: rewriting it would cost more
# than reading it.
COMPACT_MIN_RECORDS = 4096


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
    generation: bytes = b""  # the file's first line, as read at offset 0
    records: int = 0  # records read from the file's start, drops and repeats included
    retry_at: int = 0  # a compaction failed: not tried again before this many records


class ResultCache:
    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self.index = store.root / INDEX_DIR
        self.index.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # taken before a log's exclusive flock, never after
        self._logs: dict[str, _Log] = {}
        self._warned = False

    def _log_path(self, name: str) -> Path:
        return self.index / f"{name}.log"

    def _read_log(self, name: str) -> dict[str, CachedResult]:
        """The entries of one log, reading only what was appended since the last call."""
        path = self._log_path(name)
        with self._lock:
            log = self._logs.setdefault(name, _Log())
            try:
                f = open(path, "rb")  # noqa: SIM115  # the file's identity and its bytes, from one open
            except FileNotFoundError:
                self._logs[name] = log = _Log()
                return log.entries
            with f:
                st = os.fstat(f.fileno())
                if st.st_ino != log.inode or st.st_size < log.offset or not _same_generation(f.fileno(), log):
                    # New, cleared and rewritten, or compacted by another process.
                    self._logs[name] = log = _Log(inode=st.st_ino)
                if st.st_size > log.offset:
                    f.seek(log.offset)
                    data = f.read(st.st_size - log.offset)
                    if log.offset == 0:
                        log.generation = _generation(data)
                    log.records += _apply_all(log.entries, data)
                    log.offset += data.rfind(b"\n") + 1  # a record still being written waits
            if log.records >= max(COMPACT_MIN_RECORDS, log.retry_at) and log.records > 2 * len(log.entries):
                self._compact(name, log)
            return self._logs[name].entries

    def _compact(self, name: str, log: _Log) -> None:
        """Replace one log by a new generation holding only its live entries (called with
        `self._lock` held)."""
        if not os.access(self.index, os.W_OK):
            log.retry_at = 2 * log.records  # a store this process may only read
            return
        path = self._log_path(name)
        tmp = self.index / f".{name}.log.{os.getpid()}.compact"
        try:
            with self._log_lock(name, fcntl.LOCK_EX):  # appenders wait until the new file is in place
                with open(path, "rb") as f:
                    data = f.read()
                    if os.fstat(f.fileno()).st_ino != log.inode or _generation(data) != log.generation:
                        return  # compacted (or cleared) by another process since this one read it
                entries: dict[str, CachedResult] = {}
                _apply_all(entries, data)
                generation = _new_generation()
                body = generation + b"".join(_record(k, _fields(e)) for k, e in entries.items())
                with open(tmp, "wb") as out:
                    out.write(body)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
                self._logs[name] = _Log(inode=os.stat(path).st_ino, offset=len(body), entries=entries,
                                        generation=generation, records=len(entries))
        except FileNotFoundError:
            return  # cleared meanwhile
        except OSError as exc:
            log.retry_at = 2 * log.records  # tried again once the log has doubled
            if not self._warned:
                self._warned = True
                logger.warning("cannot compact the result log %s: %s; it keeps growing for now",
                               path, exc.strerror or exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    @contextlib.contextmanager
    def _log_lock(self, name: str, how: int) -> Iterator[None]:
        """`flock` on the log's lock file: shared to append, exclusive to compact. The lock
        file is never replaced or removed, so every process locks the same inode whatever
        happened to the log itself."""
        fd = os.open(self.index / f"{name}.lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _append(self, key: str, doc: dict[str, object]) -> None:
        record = _record(key, doc)
        path = self._log_path(key[0])
        with self._log_lock(key[0], fcntl.LOCK_SH):  # no compaction or clear between the open and the write
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            except FileNotFoundError:
                self._create_log(path)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                if os.write(fd, record) != len(record):
                    raise OSError(errno.ENOSPC, f"chunk store {self.store.root} is full")
            finally:
                os.close(fd)

    def _create_log(self, path: Path) -> None:
        """A new log file whose first line is its generation: written aside, then linked
        into place, so that no record can come before that line; a log another appender
        created meanwhile is kept."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
        try:
            tmp.write_bytes(_new_generation())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

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
        return None if entry is None else self.checked(entry)

    def checked(self, entry: CachedResult) -> CachedResult | None:
        """`entry` (as `describe` gave it) if every chunk of it is present and intact."""
        if not all(self.store.ensure_verified(d) for d in entry.chunks):
            self._drop(entry.key)
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
        return self._record_entry(key, view, want_md5, chunks, sha256 or (chunks[0] if len(chunks) == 1 else None))

    def begin_put(self, key: str, data: bytes | memoryview, want_md5: bool = True, aligned: bool = False,
                  sha256: str | None = None) -> PendingResult:
        """`put` in two steps, for a caller that overlaps the disk write with other work:
        `bulk()` on the returned object writes the result (on any thread; it waits for
        the disk), `commit()` (on this thread) stores and records it."""
        return PendingResult(self, key, memoryview(data), want_md5, aligned, sha256)

    def _record_entry(self, key: str, view: memoryview, want_md5: bool, chunks: tuple[str, ...],
                      sha256: str | None) -> CachedResult:
        whole = sha256 or hashlib.sha256(view).hexdigest()
        entry = CachedResult(key, len(view), whole, hashlib.md5(view).hexdigest() if want_md5 else "", chunks)
        self._append(key, _fields(entry))
        return entry

    def _put_chunk(self, piece: memoryview, aligned: bool, digest: str | None = None) -> str:
        # No fsync: a chunk cut short by a crash fails its check when the entry is next
        # looked up or read (xxh3 on first use, SHA-256 of the whole result on read), and
        # the result is computed again; a torn result is never served.
        digest = digest or hashlib.sha256(piece).hexdigest()
        if not self.store.put_verified(digest, piece, len(piece), aligned):
            raise self._full()
        return digest

    def _full(self) -> OSError:
        return OSError(errno.ENOSPC, f"chunk store {self.store.root} is full")

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
            entries: dict[str, CachedResult] = {}
            # Exclusive: a compaction cannot put back the log this removes, nor an
            # appender write into it after it was read.
            with self._lock, self._log_lock(name, fcntl.LOCK_EX):
                with contextlib.suppress(FileNotFoundError):
                    data = self._log_path(name).read_bytes()
                    _apply_all(entries, data)
                    self._log_path(name).unlink()
                self._logs.pop(name, None)
                # What a compaction or a log creation cut short by a crash left: made only
                # under this log's lock, so none is in use now.
                for leftover in self.index.glob(f".{name}.log.*"):
                    leftover.unlink(missing_ok=True)
            for entry in entries.values():
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


class PendingResult:
    """A result being stored in two steps (see `ResultCache.begin_put`). A one-chunk
    result whose SHA-256 the caller gave is written by `bulk()`; any other is stored
    whole by `commit()`."""

    def __init__(self, cache: ResultCache, key: str, view: memoryview, want_md5: bool, aligned: bool,
                 sha256: str | None) -> None:
        self._cache, self._key, self._view = cache, key, view
        self._want_md5, self._aligned, self._sha256 = want_md5, aligned, sha256
        self._two_steps = sha256 is not None and len(view) <= RESULT_CHUNK
        self._chunk: PendingChunk | None = None
        if self._two_steps:
            assert sha256 is not None
            self._chunk = cache.store.begin_verified(sha256, view, len(view), aligned)

    def bulk(self) -> None:
        if self._chunk is not None:
            self._chunk.bulk()

    def commit(self) -> CachedResult:
        if not self._two_steps:
            return self._cache.put(self._key, self._view, self._want_md5, self._aligned, self._sha256)
        assert self._sha256 is not None
        if self._chunk is not None and not self._chunk.commit():
            raise self._cache._full()
        return self._cache._record_entry(self._key, self._view, self._want_md5, (self._sha256,), self._sha256)

    def abandon(self) -> None:
        if self._chunk is not None:
            self._chunk.abandon()


def _record(key: str, doc: dict[str, object]) -> bytes:
    # Leading and trailing newlines: a record cut short before this one ends on its own line.
    return b"\n" + json.dumps({"key": key, **doc}, separators=(",", ":")).encode() + b"\n"


def _fields(entry: CachedResult) -> dict[str, object]:
    return {"size": entry.size, "sha256": entry.sha256, "md5": entry.md5, "chunks": list(entry.chunks)}


def _apply_record(entries: dict[str, CachedResult], line: bytes) -> bool:
    """Apply one record; False for a blank line or one that is not a record."""
    if not line.strip():
        return False
    try:
        doc = json.loads(line)
        key = doc["key"]
        if doc.get("drop"):
            entries.pop(key, None)
        else:
            entries[key] = CachedResult(key, int(doc["size"]), doc["sha256"], doc["md5"], tuple(doc["chunks"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return False  # a record cut short, or not ours: skipped
    return True


def _apply_all(entries: dict[str, CachedResult], data: bytes) -> int:
    """Apply every complete record of `data` (a line still being written waits); how
    many records it held."""
    complete = data[:data.rfind(b"\n") + 1]
    return sum(_apply_record(entries, line) for line in complete.split(b"\n"))


_GENERATION_PREFIX = b'{"log":"'


def _new_generation() -> bytes:
    return _GENERATION_PREFIX + os.urandom(16).hex().encode() + b'"}\n'


def _same_generation(fd: int, log: _Log) -> bool:
    """The open log is still the generation `log` was read from. A log written before
    logs had a generation line never gains one, so such a reader sees a new file by its
    line appearing."""
    if log.generation:
        return os.pread(fd, len(log.generation), 0) == log.generation
    return log.offset == 0 or os.pread(fd, len(_GENERATION_PREFIX), 0) != _GENERATION_PREFIX


def _generation(data: bytes) -> bytes:
    """A log's generation line, from its first bytes (b"" for a log written before
    logs had one)."""
    end = data.find(b"\n") + 1
    return data[:end] if end and data.startswith(_GENERATION_PREFIX) else b""
