"""Object metadata in SQLite (WAL, synchronous=FULL): buckets, objects, multipart uploads, chunk references.

Every chunk a gateway object, an uploaded part or an in-flight upload uses has a row in
`chunk_refs` (digest, owner). A chunk file may be deleted only when no row names it, so
"is this chunk still used?" is one indexed lookup and needs no reference counts that
could drift.

All calls are blocking and short; the app runs them in worker threads. One connection
behind a lock keeps transactions simple; each statement takes microseconds.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY,
    created REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    sha256 TEXT,
    content_type TEXT NOT NULL,
    metadata TEXT NOT NULL,
    tags TEXT NOT NULL,
    modified REAL NOT NULL,
    chunk_size INTEGER NOT NULL,
    chunks TEXT NOT NULL,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    created REAL NOT NULL,
    content_type TEXT NOT NULL,
    metadata TEXT NOT NULL,
    tags TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    size INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    modified REAL NOT NULL,
    chunks TEXT NOT NULL,
    PRIMARY KEY (upload_id, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunk_refs (
    digest TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (digest, owner)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunk_refs_owner ON chunk_refs (owner);
CREATE TABLE IF NOT EXISTS completed_uploads (
    upload_id TEXT PRIMARY KEY,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    etag TEXT NOT NULL,
    completed REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS uploads_by_key ON uploads (bucket, key, upload_id);
"""

_MAX_UPPER = "\U0010ffff"  # sorts after every character a key can hold


@dataclass
class ObjectRecord:
    bucket: str
    key: str
    size: int
    etag: str  # without quotes
    sha256: str | None
    content_type: str
    metadata: dict[str, str]
    tags: dict[str, str]
    modified: float
    chunk_size: int
    chunks: list[str]


@dataclass
class UploadRecord:
    upload_id: str
    bucket: str
    key: str
    created: float
    content_type: str
    metadata: dict[str, str]
    tags: dict[str, str]


@dataclass
class PartRecord:
    number: int
    size: int
    md5: str
    modified: float
    chunks: list[str]


@dataclass
class Listing:
    objects: list[ObjectRecord] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    resume_after: str = ""  # exclusive marker to continue from


def object_owner(bucket: str, key: str) -> str:
    return f"o/{bucket}/{key}"


def part_owner(upload_id: str, number: int) -> str:
    return f"p/{upload_id}/{number}"


def pending_owner(token: str) -> str:
    return f"t/{token}"


class Catalog:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # This is the only copy of the objects' metadata: a write is acknowledged only
        # after its transaction is on disk (FULL fsyncs the WAL at every commit; NORMAL
        # could lose the last commits on power loss). Chunks are fsynced, file and
        # directory, before the row that refers to them is written.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -------------------------------------------------------------- buckets
    def bucket_exists(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM buckets WHERE name=?", (name,)).fetchone() is not None

    def create_bucket(self, name: str) -> bool:
        """False if it existed already."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO buckets (name, created) VALUES (?, ?)", (name, time.time())
            )
            return cur.rowcount == 1

    def delete_bucket(self, name: str) -> tuple[str, list[str]]:
        """('ok' | 'missing' | 'not-empty', digests freed by aborting the bucket's open uploads).

        As in S3, open multipart uploads do not keep a bucket alive: they are aborted.
        """
        with self._lock, self._tx():
            if self._db.execute("SELECT 1 FROM buckets WHERE name=?", (name,)).fetchone() is None:
                return "missing", []
            if self._db.execute("SELECT 1 FROM objects WHERE bucket=? LIMIT 1", (name,)).fetchone():
                return "not-empty", []
            digests: set[str] = set()
            for (upload_id,) in self._db.execute("SELECT upload_id FROM uploads WHERE bucket=?", (name,)).fetchall():
                digests.update(self._drop_upload(upload_id))
            self._db.execute("DELETE FROM completed_uploads WHERE bucket=?", (name,))
            self._db.execute("DELETE FROM buckets WHERE name=?", (name,))
            return "ok", sorted(digests)

    def buckets(self) -> list[tuple[str, float]]:
        with self._lock:
            return list(self._db.execute("SELECT name, created FROM buckets ORDER BY name"))

    # -------------------------------------------------------------- objects
    def get_object(self, bucket: str, key: str) -> ObjectRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM objects WHERE bucket=? AND key=?", (bucket, key)
            ).fetchone()
        return _object(row) if row else None

    def put_object(self, rec: ObjectRecord, release_owner: str | None = None,
                   condition: Callable[[ObjectRecord | None], None] | None = None) -> list[str] | None:
        """Insert or replace an object; returns digests the replaced object held.

        `release_owner` (an upload's pending owner) hands its chunk references over to
        the object in the same transaction, so the chunks are never unowned. Returns
        None, recording nothing, if the bucket is gone. `condition` (If-Match /
        If-None-Match) sees the current object inside the transaction and raises to
        refuse, so two create-only writers can never both succeed.
        """
        owner = object_owner(rec.bucket, rec.key)
        with self._lock, self._tx():
            if self._db.execute("SELECT 1 FROM buckets WHERE name=?", (rec.bucket,)).fetchone() is None:
                return None
            if condition is not None:
                row = self._db.execute("SELECT * FROM objects WHERE bucket=? AND key=?", (rec.bucket, rec.key)).fetchone()
                condition(_object(row) if row else None)
            old = [r[0] for r in self._db.execute("SELECT digest FROM chunk_refs WHERE owner=?", (owner,))]
            self._db.execute("DELETE FROM chunk_refs WHERE owner=?", (owner,))
            self._db.executemany(
                "INSERT OR IGNORE INTO chunk_refs (digest, owner) VALUES (?, ?)",
                [(d, owner) for d in set(rec.chunks)],
            )
            if release_owner:
                self._db.execute("DELETE FROM chunk_refs WHERE owner=?", (release_owner,))
            self._db.execute(
                "INSERT OR REPLACE INTO objects VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (rec.bucket, rec.key, rec.size, rec.etag, rec.sha256, rec.content_type,
                 json.dumps(rec.metadata), json.dumps(rec.tags), rec.modified, rec.chunk_size,
                 " ".join(rec.chunks)),
            )
        return old

    def delete_object(self, bucket: str, key: str) -> list[str] | None:
        """Digests the object held, or None if it did not exist."""
        owner = object_owner(bucket, key)
        with self._lock, self._tx():
            cur = self._db.execute("DELETE FROM objects WHERE bucket=? AND key=?", (bucket, key))
            if cur.rowcount == 0:
                return None
            old = [r[0] for r in self._db.execute("SELECT digest FROM chunk_refs WHERE owner=?", (owner,))]
            self._db.execute("DELETE FROM chunk_refs WHERE owner=?", (owner,))
            return old

    def set_tags(self, bucket: str, key: str, tags: dict[str, str]) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE objects SET tags=? WHERE bucket=? AND key=?", (json.dumps(tags), bucket, key)
            )
            return cur.rowcount == 1

    def set_sha256(self, bucket: str, key: str, etag: str, sha256: str) -> None:
        # The ETag guard keeps a late hash from landing on a newer object at the same key.
        with self._lock:
            self._db.execute(
                "UPDATE objects SET sha256=? WHERE bucket=? AND key=? AND etag=?", (sha256, bucket, key, etag)
            )

    def objects_missing_sha256(self, limit: int) -> list[ObjectRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM objects WHERE sha256 IS NULL LIMIT ?", (limit,)).fetchall()
        return [_object(r) for r in rows]

    def list_objects(
        self, bucket: str, prefix: str, delimiter: str, after: str, max_keys: int
    ) -> Listing:
        """One page of keys ≥ prefix and > after, rolling keys up to common prefixes."""
        out = Listing()
        cursor = after
        with self._lock:
            while len(out.objects) + len(out.prefixes) < max_keys:
                op, low = (">", cursor) if cursor and cursor >= prefix else (">=", prefix)
                rows = self._db.execute(
                    f"SELECT * FROM objects WHERE bucket=? AND key {op} ? ORDER BY key LIMIT ?",
                    (bucket, low, max_keys + 1),
                ).fetchall()
                if not rows:
                    return out
                jumped = False
                for row in rows:
                    key = row[1]
                    if not key.startswith(prefix):
                        return out
                    if len(out.objects) + len(out.prefixes) >= max_keys:
                        out.truncated = True
                        return out
                    if delimiter:
                        cut = key.find(delimiter, len(prefix))
                        if cut >= 0:
                            common = key[: cut + len(delimiter)]
                            out.prefixes.append(common)
                            cursor = out.resume_after = common + _MAX_UPPER
                            jumped = True  # skip every other key under this prefix
                            break
                    out.objects.append(_object(row))
                    cursor = out.resume_after = key
                if not jumped and len(rows) <= max_keys:
                    return out
            more = self._db.execute(
                "SELECT key FROM objects WHERE bucket=? AND key > ? ORDER BY key LIMIT 1", (bucket, cursor)
            ).fetchone()
            out.truncated = bool(more and more[0].startswith(prefix))
        return out

    def objects_under(self, bucket: str, prefix: str) -> list[ObjectRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM objects WHERE bucket=? AND key >= ? AND key < ? ORDER BY key",
                (bucket, prefix, prefix + _MAX_UPPER),
            ).fetchall()
        return [_object(r) for r in rows if r[1].startswith(prefix)]

    # -------------------------------------------------------------- uploads
    def create_upload(self, rec: UploadRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO uploads VALUES (?,?,?,?,?,?,?)",
                (rec.upload_id, rec.bucket, rec.key, rec.created, rec.content_type,
                 json.dumps(rec.metadata), json.dumps(rec.tags)),
            )

    def get_upload(self, upload_id: str) -> UploadRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM uploads WHERE upload_id=?", (upload_id,)).fetchone()
        if row is None:
            return None
        return UploadRecord(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), json.loads(row[6]))

    def list_uploads(self, bucket: str, prefix: str, key_marker: str, id_marker: str,
                     limit: int) -> tuple[list[UploadRecord], bool]:
        """Up to `limit` uploads under `prefix` after the markers (key, then upload id), and whether more exist.

        Without an upload-id marker, S3 lists only keys after the key marker.
        """
        if not id_marker:
            id_marker = _MAX_UPPER
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM uploads WHERE bucket=? AND key >= ? AND key < ? AND (key > ? OR (key = ? AND upload_id > ?))"
                " ORDER BY key, upload_id LIMIT ?",
                (bucket, prefix, prefix + _MAX_UPPER, key_marker, key_marker, id_marker, limit + 1),
            ).fetchall()
        uploads = [UploadRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), json.loads(r[6]))
                   for r in rows if r[2].startswith(prefix)]
        return uploads[:limit], len(uploads) > limit

    def uploads_started_before(self, cutoff: float) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT upload_id FROM uploads WHERE created < ?", (cutoff,))]

    def put_part(self, upload_id: str, part: PartRecord, release_owner: str) -> list[str] | None:
        """Record a part (replacing an earlier upload of the same number).

        Returns digests the replaced part held, or None if the upload no longer exists
        (aborted meanwhile), in which case nothing is recorded.
        """
        owner = part_owner(upload_id, part.number)
        with self._lock, self._tx():
            if self._db.execute("SELECT 1 FROM uploads WHERE upload_id=?", (upload_id,)).fetchone() is None:
                return None
            old = [r[0] for r in self._db.execute("SELECT digest FROM chunk_refs WHERE owner=?", (owner,))]
            self._db.execute("DELETE FROM chunk_refs WHERE owner=?", (owner,))
            self._db.executemany(
                "INSERT OR IGNORE INTO chunk_refs (digest, owner) VALUES (?, ?)",
                [(d, owner) for d in set(part.chunks)],
            )
            self._db.execute("DELETE FROM chunk_refs WHERE owner=?", (release_owner,))
            self._db.execute(
                "INSERT OR REPLACE INTO parts VALUES (?,?,?,?,?,?)",
                (upload_id, part.number, part.size, part.md5, part.modified, " ".join(part.chunks)),
            )
            return old

    def parts(self, upload_id: str) -> list[PartRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT number, size, md5, modified, chunks FROM parts WHERE upload_id=? ORDER BY number",
                (upload_id,),
            ).fetchall()
        return [PartRecord(r[0], r[1], r[2], r[3], r[4].split()) for r in rows]

    def finish_upload(self, upload_id: str, completed_etag: str | None = None) -> list[str]:
        """Forget an upload and its parts; returns the digests its parts held.

        With `completed_etag` the upload is remembered as completed, so that a client
        repeating the completion (after a timeout, say) gets 200 as from S3.
        """
        with self._lock, self._tx():
            if completed_etag is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO completed_uploads SELECT upload_id, bucket, key, ?, ? FROM uploads"
                    " WHERE upload_id=?", (completed_etag, time.time(), upload_id))
            return sorted(self._drop_upload(upload_id))

    def _drop_upload(self, upload_id: str) -> set[str]:
        numbers = [r[0] for r in self._db.execute("SELECT number FROM parts WHERE upload_id=?", (upload_id,))]
        digests: set[str] = set()
        for n in numbers:
            owner = part_owner(upload_id, n)
            digests.update(r[0] for r in self._db.execute("SELECT digest FROM chunk_refs WHERE owner=?", (owner,)))
            self._db.execute("DELETE FROM chunk_refs WHERE owner=?", (owner,))
        self._db.execute("DELETE FROM parts WHERE upload_id=?", (upload_id,))
        self._db.execute("DELETE FROM uploads WHERE upload_id=?", (upload_id,))
        return digests

    def completed_upload(self, upload_id: str) -> tuple[str, str, str] | None:
        """(bucket, key, etag) of an upload completed earlier, if remembered."""
        with self._lock:
            row = self._db.execute(
                "SELECT bucket, key, etag FROM completed_uploads WHERE upload_id=?", (upload_id,)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def forget_completed_before(self, cutoff: float) -> None:
        with self._lock:
            self._db.execute("DELETE FROM completed_uploads WHERE completed < ?", (cutoff,))

    # ------------------------------------------------------- chunk references
    def add_refs(self, owner: str, digests: Iterable[str]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR IGNORE INTO chunk_refs (digest, owner) VALUES (?, ?)", [(d, owner) for d in digests]
            )

    def drop_owner(self, owner: str) -> list[str]:
        with self._lock, self._tx():
            old = [r[0] for r in self._db.execute("SELECT digest FROM chunk_refs WHERE owner=?", (owner,))]
            self._db.execute("DELETE FROM chunk_refs WHERE owner=?", (owner,))
            return old

    def pending_owners(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT owner FROM chunk_refs WHERE owner LIKE 't/%'")]

    def unreferenced(self, digests: Iterable[str]) -> list[str]:
        with self._lock:
            return [
                d for d in dict.fromkeys(digests)
                if self._db.execute("SELECT 1 FROM chunk_refs WHERE digest=? LIMIT 1", (d,)).fetchone() is None
            ]

    def all_referenced(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT digest FROM chunk_refs")]

    def _tx(self):
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _object(row: tuple) -> ObjectRecord:
    return ObjectRecord(
        bucket=row[0], key=row[1], size=row[2], etag=row[3], sha256=row[4], content_type=row[5],
        metadata=json.loads(row[6]), tags=json.loads(row[7]), modified=row[8], chunk_size=row[9],
        chunks=row[10].split(),
    )
