"""Turn an untrusted manifest document into a `Manifest`, or say exactly what is wrong.

A manifest decides which paths appear under a mountpoint and which bytes are served
for them, so every field is checked before anything is mounted: path shape, duplicates,
file/directory clashes, sizes against chunk counts, digest syntax, document size.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from pathlib import Path
from typing import Any

from mlfs.errors import ManifestError
from mlfs.manifest.model import SCHEMA, FileEntry, Manifest, Source, Symlink

MAX_DOCUMENT_BYTES = 256 * 1024 * 1024
MAX_ENTRIES = 2_000_000
MAX_FILE_SIZE = 1 << 50  # 1 PiB: far above any artifact, far below int overflow anywhere
MIN_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 1 << 30
MIN_BLOCK_SIZE = 64 * 1024
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096

_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
_HEX_DIGITS = str.maketrans("", "", "0123456789abcdef")

_TOP_KEYS = {"schema", "name", "version", "chunk_size", "block_size", "files", "symlinks", "prefetch", "metadata"}
_FILE_KEYS = {"path", "size", "mode", "sha256", "chunks", "blocks", "source"}
_SOURCE_KEYS = {"bucket", "key", "etag", "url"}


def _all_digests(values: list[Any]) -> bool:
    """Every item is 64 lowercase hex digits, checked in C loops: a 20 GB model with
    256 KiB block digests has 80,000 of them, and a regex per item took 60 ms of the
    mount's start-up."""
    return (set(map(type, values)) <= {str} and set(map(len, values)) <= {64}
            and "".join(values).translate(_HEX_DIGITS) == "")


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read(MAX_DOCUMENT_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError(f"manifest {p}: no such file") from None
    except OSError as exc:
        raise ManifestError(f"manifest {p}: cannot read: {exc.strerror}") from None
    return parse_manifest(raw, origin=str(p))


def parse_manifest(doc: bytes | str | dict[str, Any], origin: str = "manifest") -> Manifest:
    if isinstance(doc, (bytes, str)):
        if len(doc) > MAX_DOCUMENT_BYTES:
            raise ManifestError(f"{origin}: document larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            doc = json.loads(doc)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{origin}: not valid JSON: {exc}") from None
        except RecursionError:
            raise ManifestError(f"{origin}: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{origin}: top level must be a JSON object")
    return _Parser(origin).manifest(doc)


def is_artifactfs_manifest(doc: Any) -> bool:
    """MLArtifactFS-style documents have `artifact_id` and files with `url`, no schema."""
    return isinstance(doc, dict) and "schema" not in doc and "artifact_id" in doc


def check_path(path: Any, what: str) -> str:
    """Validate a relative POSIX path from a manifest; return it unchanged."""
    if not isinstance(path, str):
        raise ManifestError(f"{what}: path must be a string")
    if path == "":
        raise ManifestError(f"{what}: empty path")
    if "\x00" in path:
        raise ManifestError(f"{what} {path!r}: path contains a NUL byte")
    if path.startswith("/"):
        raise ManifestError(f"{what} {path!r}: absolute paths are not allowed")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise ManifestError(f"{what} {path[:60]!r}...: path longer than {MAX_PATH_BYTES} bytes")
    for part in path.split("/"):
        if part == "":
            raise ManifestError(f"{what} {path!r}: empty path component")
        if part in (".", ".."):
            raise ManifestError(f"{what} {path!r}: '{part}' components are not allowed")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise ManifestError(f"{what} {path!r}: a component is longer than {MAX_NAME_BYTES} bytes")
    return path


class _Parser:
    def __init__(self, origin: str) -> None:
        self.origin = origin

    def fail(self, msg: str) -> ManifestError:
        return ManifestError(f"{self.origin}: {msg}")

    def manifest(self, doc: dict[str, Any]) -> Manifest:
        if is_artifactfs_manifest(doc):
            raise self.fail(
                "this is an MLArtifactFS-style manifest: it has whole-file SHA-256 only, which "
                "cannot verify lazy reads chunk by chunk; convert it with "
                "'mlfs generate --from FILE -o OUT.json'"
            )
        schema = doc.get("schema")
        if schema != SCHEMA:
            raise self.fail(f"unsupported schema {schema!r} (expected {SCHEMA!r})")
        unknown = set(doc) - _TOP_KEYS
        if unknown:
            raise self.fail(f"unknown top-level key(s): {', '.join(sorted(unknown))}")
        name = self.string(doc.get("name", ""), "name")
        version = self.string(doc.get("version", ""), "version")
        chunk_size = doc.get("chunk_size")
        if not _is_int(chunk_size) or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise self.fail(
                f"chunk_size must be an integer between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
            )
        block_size = doc.get("block_size")
        if block_size is not None and (
                not _is_int(block_size) or block_size < MIN_BLOCK_SIZE or chunk_size % block_size):
            raise self.fail(f"block_size must be an integer of at least {MIN_BLOCK_SIZE} "
                            f"that divides chunk_size ({chunk_size})")
        files_doc = doc.get("files")
        if not isinstance(files_doc, list):
            raise self.fail("'files' must be a list")
        links_doc = doc.get("symlinks", [])
        if not isinstance(links_doc, list):
            raise self.fail("'symlinks' must be a list")
        if len(files_doc) + len(links_doc) > MAX_ENTRIES:
            raise self.fail(f"more than {MAX_ENTRIES} entries")
        files = [self.file(i, f, chunk_size, block_size) for i, f in enumerate(files_doc)]
        links = [self.symlink(i, s) for i, s in enumerate(links_doc)]
        self.check_tree([f.path for f in files] + [s.path for s in links])
        _LinkResolver(links, self.fail).check_all()
        prefetch = doc.get("prefetch", [])
        if not isinstance(prefetch, list) or not all(isinstance(p, str) for p in prefetch):
            raise self.fail("'prefetch' must be a list of glob strings")
        metadata = doc.get("metadata", {})
        if not isinstance(metadata, dict):
            raise self.fail("'metadata' must be an object")
        return Manifest(
            name=name,
            version=version,
            files=files,
            chunk_size=chunk_size,
            symlinks=links,
            prefetch=prefetch,
            metadata=metadata,
            block_size=block_size,
        )

    def string(self, value: Any, what: str) -> str:
        if not isinstance(value, str) or "\x00" in value:
            raise self.fail(f"'{what}' must be a string without NUL bytes")
        return value

    def file(self, index: int, doc: Any, chunk_size: int, block_size: int | None = None) -> FileEntry:
        where = f"files[{index}]"
        if not isinstance(doc, dict):
            raise self.fail(f"{where}: must be an object")
        path = doc.get("path")
        try:
            check_path(path, where)
        except ManifestError as exc:
            raise self.fail(str(exc)) from None
        where = f"file {path!r}"
        unknown = set(doc) - _FILE_KEYS
        if unknown:
            raise self.fail(f"{where}: unknown key(s): {', '.join(sorted(unknown))}")
        size = doc.get("size")
        if not _is_int(size) or not 0 <= size <= MAX_FILE_SIZE:
            raise self.fail(f"{where}: size must be an integer between 0 and {MAX_FILE_SIZE}")
        mode = doc.get("mode", 0o444)
        if not _is_int(mode) or not 0 <= mode <= 0o7777:
            raise self.fail(f"{where}: mode must be an integer permission value (0..0o7777)")
        sha = doc.get("sha256")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise self.fail(f"{where}: sha256 must be 64 lowercase hex digits")
        chunks = doc.get("chunks")
        if not isinstance(chunks, list):
            raise self.fail(f"{where}: 'chunks' must be a list of SHA-256 digests")
        expected = math.ceil(size / chunk_size)
        if len(chunks) != expected:
            raise self.fail(
                f"{where}: {len(chunks)} chunk digests for {size} bytes "
                f"(expected {expected} at chunk_size {chunk_size})"
            )
        self.digests(where, "chunks", chunks)
        return FileEntry(
            path=path,
            size=size,
            sha256=sha,
            chunks=tuple(chunks),
            source=self.source(where, doc.get("source")),
            mode=mode,
            blocks=self.blocks(where, doc.get("blocks"), size, block_size),
        )

    def blocks(self, where: str, blocks: Any, size: int, block_size: int | None) -> tuple[str, ...]:
        if blocks is None:
            return ()
        if block_size is None:
            raise self.fail(f"{where}: 'blocks' needs a top-level block_size")
        if not isinstance(blocks, list):
            raise self.fail(f"{where}: 'blocks' must be a list of SHA-256 digests")
        expected = math.ceil(size / block_size)
        if len(blocks) != expected:
            raise self.fail(f"{where}: {len(blocks)} block digests for {size} bytes "
                            f"(expected {expected} at block_size {block_size})")
        self.digests(where, "blocks", blocks)
        return tuple(blocks)

    def digests(self, where: str, what: str, values: list[Any]) -> None:
        if _all_digests(values):
            return
        for j, v in enumerate(values):  # which one: the error names it
            if not isinstance(v, str) or not _SHA256.match(v):
                raise self.fail(f"{where}: {what}[{j}] must be 64 lowercase hex digits")

    def source(self, where: str, doc: Any) -> Source:
        if not isinstance(doc, dict):
            raise self.fail(f"{where}: 'source' must be an object with bucket+key or url")
        unknown = set(doc) - _SOURCE_KEYS
        if unknown:
            raise self.fail(f"{where}: unknown source key(s): {', '.join(sorted(unknown))}")
        etag = doc.get("etag")
        if etag is not None and (not isinstance(etag, str) or not etag or "\n" in etag):
            raise self.fail(f"{where}: source etag must be a non-empty string")
        if "url" in doc:
            url = doc["url"]
            if not isinstance(url, str) or "\x00" in url:
                raise self.fail(f"{where}: source url must be a string")
            if url.startswith("s3://"):
                src = Source.from_s3_url(url, etag)
                if not src.bucket or not src.key:
                    raise self.fail(f"{where}: source url {url!r} needs a bucket and a key")
                return src
            if url.startswith(("http://", "https://")):
                return Source(url=url, etag=etag)
            raise self.fail(f"{where}: source url {url!r} must start with s3://, http:// or https://")
        bucket, key = doc.get("bucket"), doc.get("key")
        if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
            raise self.fail(f"{where}: source needs non-empty 'bucket' and 'key' (or 'url')")
        if "\x00" in bucket or "\x00" in key:
            raise self.fail(f"{where}: source bucket/key contains a NUL byte")
        return Source(bucket=bucket, key=key, etag=etag)

    def symlink(self, index: int, doc: Any) -> Symlink:
        where = f"symlinks[{index}]"
        if not isinstance(doc, dict) or set(doc) != {"path", "target"}:
            raise self.fail(f"{where}: must be an object with exactly 'path' and 'target'")
        try:
            check_path(doc["path"], where)
        except ManifestError as exc:
            raise self.fail(str(exc)) from None
        target = doc["target"]
        if not isinstance(target, str) or not target or "\x00" in target or len(target) > MAX_PATH_BYTES:
            raise self.fail(f"symlink {doc['path']!r}: target must be a non-empty string without NUL")
        return Symlink(path=doc["path"], target=target)

    def check_tree(self, paths: list[str]) -> None:
        """No duplicates, and no path that is both a leaf and a directory of another."""
        leaves: set[str] = set()
        for p in paths:
            if p in leaves:
                raise self.fail(f"duplicate path {p!r}")
            leaves.add(p)
        for p in paths:
            parent = posixpath.dirname(p)
            while parent:
                if parent in leaves:
                    raise self.fail(f"path {p!r} needs {parent!r} to be a directory, but it is a file")
                parent = posixpath.dirname(parent)



MAX_LINK_HOPS = 40  # as the kernel's MAXSYMLINKS


class _LinkResolver:
    """Resolve every symlink target the way the kernel will: component by component,
    through the tree's own links, refusing any that leaves the mount.

    A lexical check is not enough: with `a/b/s -> ../..`, the target
    `s/../../../etc/passwd` of `a/b/p` looks like it stays inside, but the kernel applies
    the `..` after `s` to where `s` leads (the mount root), and walks out of the mount.
    """

    def __init__(self, links: list[Symlink], fail: Any) -> None:
        self.links = {link.path: link.target for link in links}
        self.fail = fail
        self.resolved: dict[str, list[str]] = {}
        self.active: set[str] = set()

    def check_all(self) -> None:
        for path, target in self.links.items():
            if target.startswith("/"):
                raise self.fail(f"symlink {path!r}: absolute target {target!r} is not allowed")
        for path in self.links:
            self.resolve_link(path, path)

    def resolve_link(self, path: str, origin: str) -> list[str]:
        done = self.resolved.get(path)
        if done is not None:
            return done
        if path in self.active or len(self.active) >= MAX_LINK_HOPS:
            raise self.fail(f"symlink {origin!r}: target {self.links[origin]!r} loops or passes through more than {MAX_LINK_HOPS} symlinks")
        self.active.add(path)
        try:
            where = self.walk(path.split("/")[:-1], self.links[path], origin)
        finally:
            self.active.discard(path)
        self.resolved[path] = where
        return where

    def walk(self, start: list[str], target: str, origin: str) -> list[str]:
        where = list(start)
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not where:
                    raise self.fail(f"symlink {origin!r}: target {self.links[origin]!r} escapes the mount")
                where.pop()
                continue
            where.append(part)
            joined = "/".join(where)
            if joined in self.links:
                where = list(self.resolve_link(joined, origin))
        return where


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
