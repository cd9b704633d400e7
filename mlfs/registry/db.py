"""Registry storage: SQLite next to the gateway's object catalogue.

Schema changes are numbered migrations applied in order (`PRAGMA user_version` says
how far a database got), each in its own transaction. WAL with synchronous=FULL: a
registration, promotion or alias the API acknowledged survives a crash or power cut.
One connection behind a lock; every multi-statement change is one IMMEDIATE
transaction, so concurrent promotions are serialised.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlfs.registry.errors import AlreadyExists, DoesNotExist, InvalidValue

STAGES = ("None", "Staging", "Production", "Archived")
PENDING, READY = "PENDING_REGISTRATION", "READY"

MIGRATIONS: list[str] = [
    # 1: artifacts (models and datasets), their versions, indexed files, tags, aliases, lineage.
    """
    CREATE TABLE artifacts (
        kind TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL, updated REAL NOT NULL,
        PRIMARY KEY (kind, name));
    CREATE TABLE versions (
        id INTEGER PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,
        number INTEGER NOT NULL, label TEXT NOT NULL,
        bucket TEXT NOT NULL, prefix TEXT NOT NULL, on_gateway INTEGER NOT NULL,
        status TEXT NOT NULL, stage TEXT NOT NULL DEFAULT 'None', description TEXT NOT NULL DEFAULT '',
        manifest TEXT, manifest_digest TEXT, metadata TEXT NOT NULL DEFAULT '{}',
        run_id TEXT NOT NULL DEFAULT '', created REAL NOT NULL, updated REAL NOT NULL,
        UNIQUE (kind, name, number), UNIQUE (kind, name, label),
        FOREIGN KEY (kind, name) REFERENCES artifacts (kind, name) ON UPDATE CASCADE);
    CREATE INDEX versions_location ON versions (bucket, prefix);
    CREATE TABLE files (
        version_id INTEGER NOT NULL REFERENCES versions (id) ON DELETE CASCADE,
        path TEXT NOT NULL, size INTEGER NOT NULL, format TEXT NOT NULL,
        info TEXT NOT NULL DEFAULT '{}', reason TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (version_id, path));
    CREATE TABLE tags (
        kind TEXT NOT NULL, name TEXT NOT NULL, version_id INTEGER NOT NULL,
        key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (kind, name, version_id, key));
    CREATE TABLE aliases (
        kind TEXT NOT NULL, name TEXT NOT NULL, alias TEXT NOT NULL,
        version_id INTEGER NOT NULL REFERENCES versions (id) ON DELETE CASCADE,
        PRIMARY KEY (kind, name, alias));
    CREATE TABLE lineage (
        version_id INTEGER NOT NULL REFERENCES versions (id) ON DELETE CASCADE,
        input_kind TEXT NOT NULL, input_name TEXT NOT NULL, input_label TEXT NOT NULL,
        input_uri TEXT NOT NULL, pipeline TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (version_id, input_kind, input_name, input_label));
    CREATE INDEX lineage_input ON lineage (input_kind, input_name, input_label);
    """,
]


@dataclass
class Version:
    id: int
    kind: str
    name: str
    number: int
    label: str
    bucket: str
    prefix: str
    on_gateway: bool
    status: str
    stage: str
    description: str
    manifest: str | None
    manifest_digest: str | None
    metadata: dict[str, Any]
    run_id: str
    created: float
    updated: float
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def registered(self) -> bool:
        return self.status == READY


@dataclass
class Artifact:
    kind: str
    name: str
    description: str
    created: float
    updated: float
    tags: dict[str, str]
    aliases: dict[str, int]  # alias → version number


class RegistryDB:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._lock = threading.RLock()
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        with self._lock:
            current = self._db.execute("PRAGMA user_version").fetchone()[0]
            if current > len(MIGRATIONS):
                raise RuntimeError(f"registry database schema {current} is newer than this mlfs ({len(MIGRATIONS)})")
            for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in script.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version={number}")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("PRAGMA user_version").fetchone()[0]

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------- artifacts
    def create_artifact(self, kind: str, name: str, description: str = "", tags: dict[str, str] | None = None,
                        exist_ok: bool = False) -> Artifact:
        _check_name(name)
        now = time.time()
        with self.tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO artifacts (kind, name, description, created, updated) "
                             "VALUES (?,?,?,?,?)", (kind, name, description, now, now))
            if cur.rowcount == 0 and not exist_ok:
                raise AlreadyExists(f"{_what(kind)} {name!r} already exists")
            for k, v in (tags or {}).items():
                db.execute("INSERT OR REPLACE INTO tags VALUES (?,?,0,?,?)", (kind, name, k, v))
        return self.artifact(kind, name)

    def artifact(self, kind: str, name: str) -> Artifact:
        with self._lock:
            row = self._db.execute("SELECT kind, name, description, created, updated FROM artifacts "
                                   "WHERE kind=? AND name=?", (kind, name)).fetchone()
            if row is None:
                raise DoesNotExist(f"{_what(kind)} {name!r} does not exist")
            tags = dict(self._db.execute("SELECT key, value FROM tags WHERE kind=? AND name=? AND version_id=0",
                                         (kind, name)).fetchall())
            aliases = dict(self._db.execute(
                "SELECT a.alias, v.number FROM aliases a JOIN versions v ON v.id=a.version_id "
                "WHERE a.kind=? AND a.name=? ORDER BY a.alias", (kind, name)).fetchall())
        return Artifact(row[0], row[1], row[2], row[3], row[4], tags, aliases)

    def artifacts(self, kind: str) -> list[Artifact]:
        with self._lock:
            names = [r[0] for r in self._db.execute("SELECT name FROM artifacts WHERE kind=? ORDER BY name", (kind,))]
            return [self.artifact(kind, n) for n in names]

    def update_artifact(self, kind: str, name: str, description: str) -> Artifact:
        with self.tx() as db:
            cur = db.execute("UPDATE artifacts SET description=?, updated=? WHERE kind=? AND name=?",
                             (description, time.time(), kind, name))
            if cur.rowcount == 0:
                raise DoesNotExist(f"{_what(kind)} {name!r} does not exist")
        return self.artifact(kind, name)

    def rename_artifact(self, kind: str, name: str, new_name: str) -> Artifact:
        _check_name(new_name)
        with self.tx() as db:
            if db.execute("SELECT 1 FROM artifacts WHERE kind=? AND name=?", (kind, name)).fetchone() is None:
                raise DoesNotExist(f"{_what(kind)} {name!r} does not exist")
            if db.execute("SELECT 1 FROM artifacts WHERE kind=? AND name=?", (kind, new_name)).fetchone():
                raise AlreadyExists(f"{_what(kind)} {new_name!r} already exists")
            # Versions stored under models/{name}/ keep their location; only the name changes.
            db.execute("UPDATE artifacts SET name=?, updated=? WHERE kind=? AND name=?",
                       (new_name, time.time(), kind, name))
            for table in ("tags", "aliases"):
                db.execute(f"UPDATE {table} SET name=? WHERE kind=? AND name=?", (new_name, kind, name))
        return self.artifact(kind, new_name)

    def delete_artifact(self, kind: str, name: str) -> None:
        with self.tx() as db:
            if db.execute("SELECT 1 FROM artifacts WHERE kind=? AND name=?", (kind, name)).fetchone() is None:
                raise DoesNotExist(f"{_what(kind)} {name!r} does not exist")
            db.execute("DELETE FROM versions WHERE kind=? AND name=?", (kind, name))
            db.execute("DELETE FROM tags WHERE kind=? AND name=?", (kind, name))
            db.execute("DELETE FROM artifacts WHERE kind=? AND name=?", (kind, name))

    def set_tag(self, kind: str, name: str, version_id: int, key: str, value: str) -> None:
        if not key or len(key) > 250 or len(value) > 5000:
            raise InvalidValue("tag keys are 1-250 characters, values at most 5000")
        with self.tx() as db:
            self._require(db, kind, name)
            db.execute("INSERT OR REPLACE INTO tags VALUES (?,?,?,?,?)", (kind, name, version_id, key, value))

    def delete_tag(self, kind: str, name: str, version_id: int, key: str) -> None:
        with self.tx() as db:
            self._require(db, kind, name)
            db.execute("DELETE FROM tags WHERE kind=? AND name=? AND version_id=? AND key=?",
                       (kind, name, version_id, key))

    def set_alias(self, kind: str, name: str, alias: str, number: int) -> None:
        _check_alias(alias)
        with self.tx() as db:
            vid = self._version_id(db, kind, name, number)
            db.execute("INSERT OR REPLACE INTO aliases VALUES (?,?,?,?)", (kind, name, alias, vid))

    def delete_alias(self, kind: str, name: str, alias: str) -> None:
        with self.tx() as db:
            self._require(db, kind, name)
            db.execute("DELETE FROM aliases WHERE kind=? AND name=? AND alias=?", (kind, name, alias))

    # -------------------------------------------------------------- versions
    def upsert_version(self, kind: str, name: str, label: str, bucket: str, prefix: str,
                       on_gateway: bool, run_id: str = "", description: str = "", claim: bool = False) -> Version:
        """The version at (kind, name, label), created pending if new.

        Raises if it lives elsewhere, unless `claim` (a registration) and it is still pending.
        """
        _check_name(name)
        now = time.time()
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO artifacts (kind, name, created, updated) VALUES (?,?,?,?)",
                       (kind, name, now, now))
            row = db.execute("SELECT bucket, prefix, on_gateway, status, id FROM versions "
                             "WHERE kind=? AND name=? AND label=?", (kind, name, label)).fetchone()
            if row is not None and (row[0], row[1], bool(row[2])) != (bucket, prefix, on_gateway) \
                    and row[3] == PENDING and claim:
                # Objects seen but never registered (say models/N/v1/ uploaded by hand) give
                # way to a registration of the same name and version elsewhere.
                db.execute("DELETE FROM files WHERE version_id=?", (row[4],))
                db.execute("UPDATE versions SET bucket=?, prefix=?, on_gateway=?, updated=? WHERE id=?",
                           (bucket, prefix, int(on_gateway), now, row[4]))
            elif row is not None:
                if (row[0], row[1], bool(row[2])) != (bucket, prefix, on_gateway):
                    where = "this gateway" if row[2] else "another S3"
                    raise AlreadyExists(f"{_what(kind)} {name} version {label} already lives at "
                                        f"s3://{row[0]}/{row[1]} on {where}")
            else:
                number = db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM versions WHERE kind=? AND name=?",
                                    (kind, name)).fetchone()[0]
                db.execute("INSERT INTO versions (kind, name, number, label, bucket, prefix, on_gateway, status, "
                           "run_id, description, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                           (kind, name, number, label, bucket, prefix, int(on_gateway), PENDING, run_id,
                            description, now, now))
                db.execute("UPDATE artifacts SET updated=? WHERE kind=? AND name=?", (now, kind, name))
        return self.version_by_label(kind, name, label)

    def register(self, version_id: int, manifest: str, digest: str, metadata: dict[str, Any],
                 lineage: list[dict[str, str]], pipeline: dict[str, Any]) -> Version:
        """Make a version immutable with its manifest; idempotent for the same manifest."""
        with self.tx() as db:
            row = db.execute("SELECT status, manifest_digest FROM versions WHERE id=?", (version_id,)).fetchone()
            if row is None:
                raise DoesNotExist("the version was deleted meanwhile")
            if row[0] == READY:
                if row[1] != digest:
                    raise AlreadyExists(f"the version is registered with manifest {row[1]}; versions are immutable")
            else:
                db.execute("UPDATE versions SET status=?, manifest=?, manifest_digest=?, metadata=?, updated=? "
                           "WHERE id=?", (READY, manifest, digest, json.dumps(metadata), time.time(), version_id))
                self._add_lineage(db, version_id, lineage, pipeline)
        return self.version_by_id(version_id)

    def add_lineage(self, version_id: int, lineage: list[dict[str, str]], pipeline: dict[str, Any]) -> None:
        with self.tx() as db:
            self._add_lineage(db, version_id, lineage, pipeline)

    @staticmethod
    def _add_lineage(db: sqlite3.Connection, version_id: int, lineage: list[dict[str, str]],
                     pipeline: dict[str, Any]) -> None:
        for edge in lineage:
            db.execute("INSERT OR REPLACE INTO lineage VALUES (?,?,?,?,?,?)",
                       (version_id, edge["kind"], edge["name"], edge["version"], edge["uri"], json.dumps(pipeline)))

    def put_files(self, version_id: int, files: list[dict[str, Any]]) -> None:
        with self.tx() as db:
            for f in files:
                db.execute("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?)",
                           (version_id, f["path"], f["size"], f["format"], json.dumps(f.get("info") or {}),
                            f.get("reason", "")))

    def drop_file(self, version_id: int, path: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM files WHERE version_id=? AND path=?", (version_id, path))

    def files(self, version_id: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT path, size, format, info, reason FROM files WHERE version_id=? "
                                    "ORDER BY path", (version_id,)).fetchall()
        out = []
        for path, size, fmt, info, reason in rows:
            entry: dict[str, Any] = {"path": path, "size": size, "format": fmt}
            if info != "{}":
                entry["info"] = json.loads(info)
            if reason:
                entry["reason"] = reason
            out.append(entry)
        return out

    def version_by_id(self, version_id: int) -> Version:
        return self._one("id=?", (version_id,), "the version does not exist")

    def version_by_label(self, kind: str, name: str, label: str) -> Version:
        return self._one("kind=? AND name=? AND label=?", (kind, name, label),
                         f"{_what(kind)} {name!r} has no version {label!r}")

    def version(self, kind: str, name: str, number: int) -> Version:
        return self._one("kind=? AND name=? AND number=?", (kind, name, number),
                         f"{_what(kind)} {name!r} has no version {number}")

    def version_by_alias(self, kind: str, name: str, alias: str) -> Version:
        with self._lock:
            row = self._db.execute("SELECT version_id FROM aliases WHERE kind=? AND name=? AND alias=?",
                                   (kind, name, alias)).fetchone()
        if row is None:
            raise DoesNotExist(f"{_what(kind)} {name!r} has no alias {alias!r}")
        return self.version_by_id(row[0])

    def version_at(self, bucket: str, prefix: str, on_gateway: bool) -> Version | None:
        with self._lock:
            row = self._db.execute("SELECT id FROM versions WHERE bucket=? AND prefix=? AND on_gateway=?",
                                   (bucket, prefix, int(on_gateway))).fetchone()
        return self.version_by_id(row[0]) if row else None

    def versions(self, kind: str, name: str | None = None) -> list[Version]:
        where, args = ("kind=? AND name=?", (kind, name)) if name is not None else ("kind=?", (kind,))
        return self._many(where, args)

    def registered_prefixes(self) -> set[tuple[str, str]]:
        with self._lock:
            return {(r[0], r[1]) for r in self._db.execute(
                "SELECT bucket, prefix FROM versions WHERE on_gateway=1 AND status=?", (READY,))}

    def transition_stage(self, kind: str, name: str, number: int, stage: str, archive_existing: bool) -> Version:
        stage = canonical_stage(stage)
        with self.tx() as db:
            vid = self._version_id(db, kind, name, number)
            now = time.time()
            if archive_existing and stage in ("Staging", "Production"):
                db.execute("UPDATE versions SET stage='Archived', updated=? WHERE kind=? AND name=? AND stage=? "
                           "AND id<>?", (now, kind, name, stage, vid))
            db.execute("UPDATE versions SET stage=?, updated=? WHERE id=?", (stage, now, vid))
        return self.version_by_id(vid)

    def update_version(self, kind: str, name: str, number: int, description: str) -> Version:
        with self.tx() as db:
            vid = self._version_id(db, kind, name, number)
            db.execute("UPDATE versions SET description=?, updated=? WHERE id=?", (description, time.time(), vid))
        return self.version_by_id(vid)

    def delete_version(self, kind: str, name: str, number: int) -> Version:
        with self.tx() as db:
            vid = self._version_id(db, kind, name, number)
            version = self._one("id=?", (vid,), "")
            db.execute("DELETE FROM tags WHERE version_id=?", (vid,))
            db.execute("DELETE FROM versions WHERE id=?", (vid,))
        return version

    def latest(self, kind: str, name: str, stages: list[str]) -> list[Version]:
        """The newest version of each stage asked for (every stage if none)."""
        wanted = {canonical_stage(s) for s in stages} if stages else set(STAGES)
        newest: dict[str, Version] = {}
        for v in self.versions(kind, name):
            if v.stage in wanted and (v.stage not in newest or v.number > newest[v.stage].number):
                newest[v.stage] = v
        return sorted(newest.values(), key=lambda v: v.number)

    def lineage_of(self, version_id: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT input_kind, input_name, input_label, input_uri, pipeline FROM lineage "
                                    "WHERE version_id=?", (version_id,)).fetchall()
        return [{"kind": r[0], "name": r[1], "version": r[2], "uri": r[3], "pipeline": json.loads(r[4])}
                for r in rows]

    def used_by(self, kind: str, name: str, label: str) -> list[Version]:
        with self._lock:
            ids = [r[0] for r in self._db.execute(
                "SELECT version_id FROM lineage WHERE input_kind=? AND input_name=? AND input_label=?",
                (kind, name, label))]
        return [self.version_by_id(i) for i in ids]

    # --------------------------------------------------------------- helpers
    def _require(self, db: sqlite3.Connection, kind: str, name: str) -> None:
        if db.execute("SELECT 1 FROM artifacts WHERE kind=? AND name=?", (kind, name)).fetchone() is None:
            raise DoesNotExist(f"{_what(kind)} {name!r} does not exist")

    def _version_id(self, db: sqlite3.Connection, kind: str, name: str, number: int) -> int:
        row = db.execute("SELECT id FROM versions WHERE kind=? AND name=? AND number=?",
                         (kind, name, number)).fetchone()
        if row is None:
            raise DoesNotExist(f"{_what(kind)} {name!r} has no version {number}")
        return row[0]

    def _one(self, where: str, args: tuple, missing: str) -> Version:
        found = self._many(where, args)
        if not found:
            raise DoesNotExist(missing)
        return found[0]

    def _many(self, where: str, args: tuple) -> list[Version]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, name, number, label, bucket, prefix, on_gateway, status, stage, description, "
                f"manifest, manifest_digest, metadata, run_id, created, updated FROM versions WHERE {where} "
                "ORDER BY name, number", args).fetchall()
            out = []
            for r in rows:
                v = Version(*r[:13], json.loads(r[13]), *r[14:])  # type: ignore[arg-type]
                v.on_gateway = bool(v.on_gateway)
                v.tags = dict(self._db.execute("SELECT key, value FROM tags WHERE version_id=?", (v.id,)).fetchall())
                v.aliases = [a[0] for a in self._db.execute(
                    "SELECT alias FROM aliases WHERE version_id=? ORDER BY alias", (v.id,))]
                out.append(v)
        return out


def canonical_stage(stage: str) -> str:
    for s in STAGES:
        if s.lower() == (stage or "").lower():
            return s
    raise InvalidValue(f"stage {stage!r}: expected one of {', '.join(STAGES)}")


def _what(kind: str) -> str:
    return "registered model" if kind == "model" else "dataset"


def _check_name(name: str) -> None:
    if not name or len(name) > 256 or "/" in name or name in (".", "..") or any(ord(c) < 0x20 for c in name):
        raise InvalidValue(f"name {name[:80]!r}: 1-256 characters, no '/' or control characters")


def _check_alias(alias: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,254}", alias) or re.fullmatch(r"[vV]\d+", alias) \
            or alias.lower() == "latest":
        raise InvalidValue(f"alias {alias[:80]!r}: letters, digits, '_' and '-', not 'latest' or 'vN'")
