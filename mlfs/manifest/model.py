"""Manifest data model and its JSON form (`"schema": "mlfs.manifest/1"`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

SCHEMA = "mlfs.manifest/1"
DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
# What `mlfs generate` records unless told otherwise: a cold 4 KiB read at a random
# offset then fetches and verifies 256 KiB instead of its 16 MiB chunk (about 3x the
# random reads/s), for 280 KB of manifest per GiB of files (25 ms to load 20 GB's worth).
DEFAULT_BLOCK_SIZE = 256 * 1024


@dataclass(frozen=True)
class Source:
    """Where a file's bytes live: an S3 object (bucket + key) or an http(s) URL."""

    bucket: str | None = None
    key: str | None = None
    etag: str | None = None
    url: str | None = None  # only for http(s) sources; s3:// URLs are split on parse

    @classmethod
    def from_s3_url(cls, url: str, etag: str | None = None) -> Source:
        parts = urlsplit(url)
        return cls(bucket=parts.netloc, key=parts.path.lstrip("/"), etag=etag)

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.is_s3 else str(self.url)

    def to_json(self) -> dict[str, Any]:
        if self.is_s3:
            doc: dict[str, Any] = {"bucket": self.bucket, "key": self.key}
            if self.etag:
                doc["etag"] = self.etag
            return doc
        return {"url": self.url}


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    chunks: tuple[str, ...]
    source: Source
    mode: int = 0o444
    # SHA-256 of each `block_size` block of the file, in order (empty: none recorded).
    blocks: tuple[str, ...] = ()

    def chunk_range(self, index: int, chunk_size: int) -> tuple[int, int]:
        """Byte range [start, end) of chunk `index` within the file."""
        start = index * chunk_size
        return start, min(start + chunk_size, self.size)

    def to_json(self) -> dict[str, Any]:
        doc = {
            "path": self.path,
            "size": self.size,
            "mode": self.mode,
            "sha256": self.sha256,
            "chunks": list(self.chunks),
            "source": self.source.to_json(),
        }
        if self.blocks:
            doc["blocks"] = list(self.blocks)
        return doc


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str


@dataclass
class Manifest:
    name: str
    version: str
    files: list[FileEntry]
    chunk_size: int = DEFAULT_CHUNK_SIZE
    symlinks: list[Symlink] = field(default_factory=list)
    prefetch: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    block_size: int | None = None  # set when files carry block digests

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "name": self.name,
            "version": self.version,
            "chunk_size": self.chunk_size,
        }
        if self.block_size is not None:
            doc["block_size"] = self.block_size
        doc.update({
            "files": [f.to_json() for f in self.files],
            "symlinks": [{"path": s.path, "target": s.target} for s in self.symlinks],
            "prefetch": list(self.prefetch),
            "metadata": self.metadata,
        })
        return doc

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=False) + "\n"
