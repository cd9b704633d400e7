"""Object bytes ⇄ chunks in the shared ChunkStore.

Writes: an `ObjectSink` cuts an upload into fixed 16 MiB chunks (the manifest chunk
size) while computing the MD5 (for the ETag) and the whole-object SHA-256. Each sealed
chunk is recorded at once as held by the upload ("pending" owner), so a crash leaves
rows that the next start uses to free exactly those chunks. The object row appears only
when the caller commits: readers never see a partial object.

Deletes: a chunk file is unlinked only when no object, part or pending upload refers to
it, checked and unlinked under one lock against the "register a freshly written chunk"
step, so a concurrent upload of identical content can never lose its chunk.

Reads: `ObjectReader` preads chunk files in large blocks; each chunk is verified by the
store (xxh3 in an xattr) the first time this process serves it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

from mlfs.gateway.catalog import (
    Catalog,
    ObjectRecord,
    PartRecord,
    pending_owner,
)
from mlfs.gateway.errors import S3Error
from mlfs.manifest.model import DEFAULT_CHUNK_SIZE
from mlfs.store.chunks import ChunkStore, ChunkWriter

log = logging.getLogger(__name__)

# Raises S3Error (PreconditionFailed, NoSuchKey) to refuse a write, given the current object.
WriteCondition = Callable[[ObjectRecord | None], None]

CHUNK_SIZE = DEFAULT_CHUNK_SIZE
READ_BLOCK = 4 << 20
EMPTY_SHA256 = hashlib.sha256().hexdigest()


class ObjectReplaced(Exception):
    """An object being read was deleted or overwritten; its old chunks are gone."""


class ObjectStore:
    """The gateway's storage: SQLite catalog + chunk store under one data directory."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.store = ChunkStore(data_dir / "store")
        # Mounts may share this store; the marker stops them evicting the only copy.
        self.store.mark_authoritative()
        self.catalog = Catalog(data_dir / "meta.sqlite3")
        self._gc_lock = threading.Lock()
        # Services on the same store (registry indexer, ...) watch and may veto writes:
        # a guard raises S3Error to refuse a write or delete of (bucket, key) before it
        # happens; a listener hears of every committed write (record) or delete (None).
        self.write_guards: list[Callable[[str, str], None]] = []
        self.write_listeners: list[Callable[[str, str, ObjectRecord | None], None]] = []
        self._recover()
        # The store evicts unpinned chunks when the disk runs low; for the gateway they
        # are the only copy of the data, never a cache.
        self.store.pin(self.catalog.all_referenced())

    def close(self) -> None:
        self.catalog.close()
        self.store.close()

    # ----------------------------------------------------------------- writes
    def sink(self, want_sha256: bool = True, want_md5: bool = True) -> ObjectSink:
        return ObjectSink(self, want_sha256, want_md5)

    def commit_object(self, sink: ObjectSink, rec: ObjectRecord, condition: WriteCondition | None = None) -> None:
        try:
            self.check_write(rec.bucket, rec.key)
            old = self.catalog.put_object(rec, release_owner=sink.owner, condition=condition)
        except S3Error:
            sink.abort()
            raise
        if old is None:
            sink.abort()
            raise S3Error("NoSuchBucket", "The specified bucket does not exist.", rec.bucket)
        sink.committed = True
        self.free(old)
        self._written(rec.bucket, rec.key, rec)

    def copy_object(self, rec: ObjectRecord, condition: WriteCondition | None = None) -> None:
        """Record `rec`, whose chunks belong to an existing object, as a new object."""
        self.check_write(rec.bucket, rec.key)
        with self._gc_lock:
            # Under the GC lock a concurrent delete of the source either freed the
            # chunks before (we see them missing) or will see our references.
            missing = [d for d in rec.chunks if not self.store.path(d).exists()]
            if missing:
                raise S3Error("NoSuchKey", "The source object was deleted during the copy.")
            old = self.catalog.put_object(rec, condition=condition)
        if old is None:
            raise S3Error("NoSuchBucket", "The specified bucket does not exist.", rec.bucket)
        self.free(old)
        self._written(rec.bucket, rec.key, rec)

    def delete_object(self, bucket: str, key: str) -> bool:
        self.check_write(bucket, key)
        old = self.catalog.delete_object(bucket, key)
        if old is None:
            return False
        self.free(old)
        self._written(bucket, key, None)
        return True

    def check_write(self, bucket: str, key: str) -> None:
        """Raise the S3Error of the first guard that refuses a write of (bucket, key)."""
        for guard in self.write_guards:
            guard(bucket, key)

    def _written(self, bucket: str, key: str, rec: ObjectRecord | None) -> None:
        for listener in self.write_listeners:
            try:
                listener(bucket, key, rec)
            except Exception:
                # The write is committed; a listener's failure must not turn it into an error.
                log.exception("write listener failed for %s/%s", bucket, key)

    def free(self, digests: list[str]) -> None:
        """Unlink chunks that nothing refers to any more."""
        if not digests:
            return
        with self._gc_lock:
            for digest in self.catalog.unreferenced(digests):
                self.store.discard(digest)

    def _hold(self, owner: str, digest: str) -> None:
        with self._gc_lock:
            self.catalog.add_refs(owner, [digest])
            self.store.pin([digest])
            if not self.store.path(digest).exists():
                # A delete freed an identical chunk between our rename and this record.
                raise S3Error("InternalError", "A chunk vanished while being stored; please retry.")

    # ------------------------------------------------------------- multipart
    def assemble(self, parts: list[PartRecord]) -> tuple[list[str], str | None, ObjectSink | None]:
        """Chunk list for the concatenated parts.

        If every part but the last is a multiple of the chunk size, the parts' chunks
        are the object's chunks as they stand; otherwise the bytes are re-cut into
        16 MiB chunks. Neither hashes the whole object here (the ETag comes from the
        part MD5s; the SHA-256 is computed after the client has its answer). Returns
        (chunks, sha256 or None, sink holding new chunks or None).
        """
        if all(p.size % CHUNK_SIZE == 0 for p in parts[:-1]):
            return [d for p in parts for d in p.chunks], None, None
        sink = self.sink(want_sha256=False, want_md5=False)
        try:
            for part in parts:
                for index, digest in enumerate(part.chunks):
                    length = min(CHUNK_SIZE, part.size - index * CHUNK_SIZE)
                    self._copy_chunk(digest, length, sink)
            sink.finish()
        except BaseException:
            sink.abort()
            raise
        return sink.chunks, None, sink

    def _copy_chunk(self, digest: str, length: int, sink: ObjectSink) -> None:
        if not self.store.ensure_verified(digest):
            raise S3Error("InternalError", f"Stored part data is damaged (chunk {digest[:12]}).")
        with open(self.store.path(digest), "rb", buffering=0) as fh:
            done = 0
            while done < length:
                block = fh.read(min(READ_BLOCK, length - done))
                if not block:
                    raise S3Error("InternalError", f"Stored part data is truncated (chunk {digest[:12]}).")
                sink.write(block)
                done += len(block)

    # ------------------------------------------------------------------ reads
    def reader(self, rec: ObjectRecord) -> ObjectReader:
        return ObjectReader(self, rec)

    def whole_sha256(self, rec: ObjectRecord) -> str:
        """Hash an object from its chunks and record the result (multipart objects)."""
        h = hashlib.sha256()
        reader = self.reader(rec)
        try:
            offset = 0
            while offset < rec.size:
                block = reader.read(offset, 4 * READ_BLOCK)
                h.update(block)
                offset += len(block)
        finally:
            reader.close()
        digest = h.hexdigest()
        self.catalog.set_sha256(rec.bucket, rec.key, rec.etag, digest)
        return digest

    # ---------------------------------------------------------------- startup
    def _recover(self) -> None:
        # Uploads cut short by a crash left "pending" references: free those chunks.
        for owner in self.catalog.pending_owners():
            self.free(self.catalog.drop_owner(owner))
        self._collect_orphans()

    def _collect_orphans(self) -> None:
        # A crash between a chunk's rename and the row recording it (or a lost commit)
        # leaves chunk files nothing refers to: without this they would stay forever.
        # Runs before the gateway accepts requests, so no upload is between those steps.
        referenced = set(self.catalog.all_referenced())
        removed = 0
        for sub in self.store.chunk_dir.iterdir():
            for f in sub.iterdir():
                if len(f.name) == 64 and f.name not in referenced:
                    self.store.discard(f.name)
                    removed += 1
        if removed:
            log.info("removed %d chunk files no object, part or upload refers to", removed)


class ObjectSink:
    """One upload's bytes → sealed 16 MiB chunks, MD5 and SHA-256. Blocking; one thread at a time."""

    def __init__(self, objects: ObjectStore, want_sha256: bool, want_md5: bool) -> None:
        self.objects = objects
        self.owner = pending_owner(secrets.token_hex(12))
        self.size = 0
        self.chunks: list[str] = []
        self.committed = False
        self._md5 = hashlib.md5() if want_md5 else None
        self._sha = hashlib.sha256() if want_sha256 else None
        self._writer: ChunkWriter | None = None
        self._in_chunk = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if self._md5 is not None:
            self._md5.update(view)
        if self._sha is not None:
            self._sha.update(view)
        self.size += len(view)
        while view:
            if self._writer is None:
                self._writer = self.objects.store.writer()
            piece = view[: CHUNK_SIZE - self._in_chunk]
            self._writer.write(piece)
            self._in_chunk += len(piece)
            view = view[len(piece):]
            if self._in_chunk == CHUNK_SIZE:
                self._seal()

    def finish(self) -> None:
        if self._writer is not None:
            self._seal()

    def abort(self) -> None:
        """Drop everything written so far (safe to call twice, and after a commit)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        if not self.committed:
            self.committed = True
            self.objects.free(self.objects.catalog.drop_owner(self.owner))

    @property
    def md5(self) -> str:
        assert self._md5 is not None
        return self._md5.hexdigest()

    @property
    def md5_digest(self) -> bytes:
        assert self._md5 is not None
        return self._md5.digest()

    @property
    def sha256(self) -> str | None:
        return self._sha.hexdigest() if self._sha is not None else None

    def _seal(self) -> None:
        writer, self._writer = self._writer, None
        assert writer is not None
        digest = writer.commit()
        self._in_chunk = 0
        self.objects._hold(self.owner, digest)
        self.chunks.append(digest)


class ObjectReader:
    """Ranged reads of one object's chunk files, one open file descriptor at a time."""

    def __init__(self, objects: ObjectStore, rec: ObjectRecord) -> None:
        self.objects = objects
        self.rec = rec
        self._digest: str | None = None
        self._fd: int | None = None

    def read(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes at `offset`, never crossing a chunk boundary."""
        index, within = divmod(offset, self.rec.chunk_size)
        chunk_len = min(self.rec.chunk_size, self.rec.size - index * self.rec.chunk_size)
        want = min(size, chunk_len - within)
        fd = self._open(self.rec.chunks[index])
        data = os.pread(fd, want, within)
        if len(data) != want:
            raise S3Error("InternalError", f"Stored data is truncated (chunk {self._digest[:12]}).")
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _raise_unless_replaced(self) -> None:
        # A delete or overwrite frees the old chunks at once, so a download that started
        # before it cannot finish: that is the object changing, not data damage.
        current = self.objects.catalog.get_object(self.rec.bucket, self.rec.key)
        if current is None or current.chunks != self.rec.chunks:
            raise ObjectReplaced(f"s3://{self.rec.bucket}/{self.rec.key} was deleted or overwritten mid-download")

    def _open(self, digest: str) -> int:
        if digest == self._digest and self._fd is not None:
            return self._fd
        self.close()
        store = self.objects.store
        if not store.ensure_verified(digest):
            self._raise_unless_replaced()
            log.error("chunk %s of s3://%s/%s is missing or corrupt", digest, self.rec.bucket, self.rec.key)
            raise S3Error("InternalError", "Stored object data is damaged.")
        try:
            self._fd = os.open(store.path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._raise_unless_replaced()
            raise S3Error("InternalError", "Stored object data is missing.") from None
        self._digest = digest
        return self._fd
