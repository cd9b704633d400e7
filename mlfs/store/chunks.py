"""Content-addressed chunk store: one directory, each chunk a file named by its SHA-256.

Writers stream into a private temp file, hash as they go, fsync, and rename into place
only when the digest matches; readers therefore never see a partial or unverified
chunk, and any number of processes can share one store without a daemon.

Disk corruption is caught cheaply: each chunk carries its SHA-256 name and xxh3-128 in an
extended attribute (the name too, so a chunk file moved or copied under another chunk's
name is caught as well as damaged bytes), checked the first time a process uses the chunk (falling back to a SHA-256
re-hash where xattrs are unsupported). A chunk that fails is moved to `quarantine/`
and reported missing, so the caller fetches it again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import xxhash

from mlfs.errors import ChunkIntegrityError, StoreError

log = logging.getLogger(__name__)

_XATTR = "user.mlfs.xxh3"
_TEMP_MAX_AGE = 3600.0  # temp files older than this belong to dead writers
_TOUCH_INTERVAL = 60.0  # refresh a chunk's LRU timestamp at most this often
_MIN_FREE_FRACTION = 0.05  # without a budget, keep this much of the filesystem free
_OPEN_FDS = 128
# A store holding the only copy of its data (the gateway's) carries this marker; no
# process ever evicts from it, whatever budget it was opened with.
AUTHORITATIVE_MARKER = "AUTHORITATIVE"


@dataclass
class StoreStatistics:
    chunks: int
    bytes: int
    budget: int | None
    pinned: int
    evicted_chunks: int
    quarantined_chunks: int


class ChunkStore:
    def __init__(self, root: str | os.PathLike[str], budget: int | None = None) -> None:
        # Absolute: a daemonised mount changes its working directory to /.
        self.root = Path(root).absolute()
        self.budget = budget
        self.chunk_dir = self.root / "chunks"
        self.tmp_dir = self.root / "tmp"
        self.quarantine_dir = self.root / "quarantine"
        try:
            for d in (self.chunk_dir, self.tmp_dir, self.quarantine_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cache directory {self.root}: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"cache directory {self.root}: not writable")
        self._lock = threading.Lock()
        self._verified: set[str] = set()
        self._touched: dict[str, float] = {}
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._pinned: set[str] = set()
        self._evicted = 0
        self._quarantined = 0
        self._xattrs = True
        self._clean_stale_temps()
        self._usage = self._scan_usage()
        self.authoritative = (self.root / AUTHORITATIVE_MARKER).exists()
        if self.authoritative and budget is not None:
            log.info("%s holds authoritative data (an mlfs gateway's); its budget is not enforced", self.root)

    def mark_authoritative(self) -> None:
        """Declare this store the only copy of its chunks: never evict from it."""
        (self.root / AUTHORITATIVE_MARKER).write_text(
            "This chunk store holds the only copy of an mlfs gateway's objects: never evicted.\n")
        self.authoritative = True

    # ------------------------------------------------------------------ paths
    def path(self, digest: str) -> Path:
        return self.chunk_dir / digest[:2] / digest

    @property
    def usage(self) -> int:
        """Bytes of chunks in the store (as this process accounts them)."""
        return self._usage

    def contains(self, digest: str) -> bool:
        return self.path(digest).exists()

    # ------------------------------------------------------------------ reads
    def ensure_verified(self, digest: str) -> bool:
        """True if the chunk is present and intact; quarantines it and returns False if not."""
        if digest in self._verified:
            return True
        p = self.path(digest)
        try:
            ok = self._check(p, digest)
        except FileNotFoundError:
            return False
        if not ok:
            self.quarantine(digest, "content does not match its checksum")
            return False
        with self._lock:
            self._verified.add(digest)
        self._touch(digest)
        return True

    def pread(self, digest: str, offset: int, size: int) -> bytes:
        """Bytes of a verified chunk. Call `ensure_verified` first (the fetcher does)."""
        fd = self._fd(digest)
        self._touch(digest)
        return os.pread(fd, size, offset)

    def read_all(self, digest: str) -> bytes:
        if not self.ensure_verified(digest):
            raise ChunkIntegrityError(f"chunk {digest[:16]}… is missing or corrupt in the store")
        return self.path(digest).read_bytes()

    # ----------------------------------------------------------------- writes
    def writer(self, expected_digest: str | None = None) -> ChunkWriter:
        return ChunkWriter(self, expected_digest)

    def put_bytes(self, data: bytes, expected_digest: str | None = None) -> str:
        with self.writer(expected_digest) as w:
            w.write(data)
            return w.commit()

    # ------------------------------------------------------------ lifecycle
    def pin(self, digests: set[str] | list[str]) -> None:
        with self._lock:
            self._pinned.update(digests)

    def unpin(self, digests: set[str] | list[str]) -> None:
        with self._lock:
            self._pinned.difference_update(digests)

    def discard(self, digest: str) -> None:
        """Delete a chunk nothing needs any more (the owner of the data decides that)."""
        try:
            size = self.path(digest).stat().st_size
            self.path(digest).unlink()
        except FileNotFoundError:
            return
        self._dropped(digest, size)
        self.unpin([digest])

    def demote(self, digest: str) -> None:
        """Make a chunk the first candidate for eviction (drop-behind, `cache: none`)."""
        if self.authoritative:
            return
        self._touched[digest] = time.monotonic()
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(digest), (0, 0))

    def is_pinned(self, digest: str) -> bool:
        return digest in self._pinned

    def quarantine(self, digest: str, why: str) -> None:
        src = self.path(digest)
        dst = self.quarantine_dir / f"{digest}.{int(time.time() * 1000)}"
        try:
            os.replace(src, dst)
        except FileNotFoundError:
            return
        self._dropped(digest, dst.stat().st_size)
        with self._lock:
            self._quarantined += 1
        log.warning("chunk %s quarantined: %s", digest, why)

    def evict_if_needed(self) -> None:
        """Delete least recently used, unpinned chunks until the store fits its budget."""
        if self.authoritative:
            return
        excess = self._excess()
        if excess <= 0:
            return
        entries = []
        for sub in self.chunk_dir.iterdir():
            for f in sub.iterdir():
                try:
                    st = f.stat()
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime, f.name, st.st_size, f))
        entries.sort()
        with self._lock:
            pinned = set(self._pinned)
        for _mtime, digest, size, f in entries:
            if excess <= 0:
                break
            if digest in pinned:
                continue
            try:
                f.unlink()
            except FileNotFoundError:
                continue
            self._dropped(digest, size)
            with self._lock:
                self._evicted += 1
            excess -= size

    def statistics(self) -> StoreStatistics:
        with self._lock:
            return StoreStatistics(
                chunks=sum(1 for sub in self.chunk_dir.iterdir() for _ in sub.iterdir()),
                bytes=self._usage,
                budget=self.budget,
                pinned=len(self._pinned),
                evicted_chunks=self._evicted,
                quarantined_chunks=self._quarantined,
            )

    def close(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), OrderedDict()
        for fd in fds:
            os.close(fd)

    # -------------------------------------------------------------- internals
    def _check(self, p: Path, digest: str) -> bool:
        if self._xattrs:
            try:
                want = os.getxattr(p, _XATTR).decode()
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise FileNotFoundError(p) from None
                if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    self._xattrs = False
                want = None
            if want is not None:
                # "<sha256>:<xxh3>": the checksum is only worth trusting for this name.
                # Anything else (a bare xxh3 of an older store) falls back to SHA-256.
                named, _, xxh = want.partition(":")
                if xxh:
                    return named == digest and _file_digest(p, xxhash.xxh3_128) == xxh
        return _file_digest(p, hashlib.sha256) == digest

    def _fd(self, digest: str) -> int:
        with self._lock:
            fd = self._fds.get(digest)
            if fd is not None:
                self._fds.move_to_end(digest)
                return fd
        try:
            fd = os.open(self.path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ChunkIntegrityError(f"chunk {digest[:16]}… vanished from the store") from None
        with self._lock:
            old = self._fds.pop(digest, None)
            self._fds[digest] = fd
            victims = []
            while len(self._fds) > _OPEN_FDS:
                victims.append(self._fds.popitem(last=False)[1])
        for v in victims + ([old] if old is not None else []):
            os.close(v)
        return fd

    def _touch(self, digest: str) -> None:
        # The LRU order is the chunk file's mtime, so it is shared by every process.
        now = time.monotonic()
        if now - self._touched.get(digest, -_TOUCH_INTERVAL) < _TOUCH_INTERVAL:
            return
        self._touched[digest] = now
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(digest))

    def _dropped(self, digest: str, size: int) -> None:
        """Bookkeeping after a chunk file left the chunk directory."""
        with self._lock:
            self._verified.discard(digest)
            fd = self._fds.pop(digest, None)
        if fd is not None:
            os.close(fd)
        self._account(-size)

    def _account(self, delta: int) -> None:
        with self._lock:
            self._usage = max(0, self._usage + delta)

    def _excess(self) -> int:
        if self.budget is not None:
            return self._usage - self.budget
        du = shutil.disk_usage(self.root)
        return int(du.total * _MIN_FREE_FRACTION) - du.free

    def _scan_usage(self) -> int:
        total = 0
        for sub in self.chunk_dir.iterdir():
            for f in sub.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    total += f.stat().st_size
        return total

    def clean_dead_writers(self) -> None:
        """Remove temp files whose writing process has died, whatever their age.

        For a store's owner at start-up (the gateway): only this module knows that temp
        names begin with the writer's PID. Processes in another PID namespace look dead
        from here, so callers must own the store.
        """
        for f in self.tmp_dir.iterdir():
            pid = f.name.split(".", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()

    def _clean_stale_temps(self) -> None:
        cutoff = time.time() - _TEMP_MAX_AGE
        for f in self.tmp_dir.iterdir():
            try:
                if f.stat().st_mtime < cutoff:
                    f.unlink()
            except FileNotFoundError:
                pass


class ChunkWriter:
    """Streams one chunk into a temp file; `commit()` verifies and publishes it.

    Used as a context manager: leaving the block without a commit removes the temp file,
    so an interrupted download or upload never leaves anything behind.
    """

    def __init__(self, store: ChunkStore, expected_digest: str | None) -> None:
        self.store = store
        self.expected = expected_digest
        self._sha = hashlib.sha256()
        self._xxh = xxhash.xxh3_128()
        self.size = 0
        fd_name = f"{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}"
        self._tmp = store.tmp_dir / fd_name
        self._fh = open(self._tmp, "xb")  # noqa: SIM115 - closed by commit()/abort()
        self._done = False

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def write(self, data: bytes | memoryview) -> None:
        self._sha.update(data)
        self._xxh.update(data)
        self._fh.write(data)
        self.size += len(data)

    def commit(self) -> str:
        digest = self._sha.hexdigest()
        if self.expected is not None and digest != self.expected:
            self.abort()
            raise ChunkIntegrityError(
                f"chunk digest mismatch: expected {self.expected[:16]}…, got {digest[:16]}…"
            )
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if self.store._xattrs:
            try:
                os.setxattr(self._tmp, _XATTR, f"{digest}:{self._xxh.hexdigest()}".encode())
            except OSError:
                self.store._xattrs = False
        self._fh.close()
        final = self.store.path(digest)
        if not final.parent.is_dir():
            final.parent.mkdir(exist_ok=True)
            _fsync_dir(final.parent.parent)
        existed = final.exists()
        os.replace(self._tmp, final)
        # The rename is durable only once its directory is: without this a power loss
        # can forget a chunk whose object row was already committed.
        _fsync_dir(final.parent)
        self._done = True
        with self.store._lock:
            self.store._verified.add(digest)
        if not existed:
            self.store._account(self.size)
            self.store.evict_if_needed()
        return digest

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_digest(p: Path, algo: type) -> str:
    h = algo()
    with open(p, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
