"""Where inputs come from and results go: an S3 prefix (any S3 server) or a local
directory (which may be inside an mlfs mount).

Inputs are listed once; an S3 source on an `mlfs serve` gateway answers with every
object's SHA-256 (its `mlfs-manifest` listing), so cache lookups need no download.
Elsewhere the digest is computed from the bytes when they are read. Bytes whose
digest differs from the listing's are refused.

An S3 destination gets a manifest at `{prefix}.mlfs/manifest.json`, built from the bytes
written (no re-reading); a local destination gets `.mlfs/lineage.json` (a manifest
needs S3 sources to be mounted).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.exceptions

from mlfs.errors import ConfigError, FetchError, MlfsError
from mlfs.manifest.from_gateway import fetch_gateway_manifest
from mlfs.manifest.generate import ChunkHasher, list_prefix
from mlfs.manifest.model import DEFAULT_CHUNK_SIZE, FileEntry, Manifest, Source
from mlfs.preprocess.cache import RESULT_CHUNK, TOKEN_FILE, CachedResult
from mlfs.preprocess.client import call_service
from mlfs.preprocess.work import WorkFailure, holds, write_atomically
from mlfs.s3.client import split_s3_url

META_DIR = ".mlfs"
MAX_INPUT = 128 << 20  # an input object larger than this is refused, not read into memory


@dataclass(frozen=True)
class InputItem:
    rel: str  # path relative to the source prefix
    size: int
    sha256: str | None  # known from the listing, or None until read
    etag: str | None = None


class InputError(Exception):
    """One input could not be read; the run reports it and goes on."""


def _norm_prefix(prefix: str) -> str:
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


# ------------------------------------------------------------------------ sources
class S3Input:
    def __init__(self, client: Any, url: str) -> None:
        self.client = client
        self.bucket, prefix = split_s3_url(url)
        self.prefix = _norm_prefix(prefix)
        self.uri = f"s3://{self.bucket}/{self.prefix}"
        self.gateway = False

    def list(self) -> list[InputItem]:
        manifest = fetch_gateway_manifest(self.client, self.bucket, self.prefix)
        if manifest is not None:
            self.gateway = True
            return [InputItem(f.path, f.size, f.sha256, f.source.etag) for f in manifest.files
                    if not f.path.startswith(META_DIR + "/")]
        items = []
        for key, size, etag in list_prefix(self.client, self.bucket, self.prefix):
            rel = key[len(self.prefix):]
            if rel and not rel.startswith(META_DIR + "/"):
                items.append(InputItem(rel, size, None, etag.strip('"') or None))
        return items

    def describe(self, item: InputItem) -> str:
        return self.uri + item.rel

    def read(self, item: InputItem) -> bytes:
        check_size(item)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.prefix + item.rel}
        if item.etag:
            kwargs["IfMatch"] = item.etag
        try:
            return self.client.get_object(**kwargs)["Body"].read()
        except botocore.exceptions.ClientError as exc:
            raise InputError(f"cannot read: {exc.response['Error'].get('Code') or exc}") from None
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise InputError(f"cannot read: {exc}") from None

    def lineage(self) -> dict[str, Any]:
        return _lineage_input(self.uri, self.prefix)


class LocalInput:
    def __init__(self, path: str) -> None:
        self.root = Path(path).absolute()
        if not self.root.is_dir():
            raise ConfigError(f"{path}: not a directory")
        self.uri = self.root.as_uri() + "/"
        self.gateway = False

    def list(self) -> list[InputItem]:
        # scandir: the file type comes with the directory entry, so each file costs one
        # lstat (its size) and no path objects; symlinks are not followed.
        items: list[InputItem] = []
        stack = [("", os.fspath(self.root))]
        while stack:
            rel_dir, path = stack.pop()
            try:
                with os.scandir(path) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                raise ConfigError(f"{path}: {exc.strerror}") from None
            subdirs = []
            for entry in entries:
                rel = rel_dir + entry.name
                if entry.is_dir(follow_symlinks=False):
                    if not (rel_dir == "" and entry.name == META_DIR):
                        subdirs.append((rel + "/", entry.path))
                elif entry.is_file(follow_symlinks=False):
                    items.append(InputItem(rel, entry.stat(follow_symlinks=False).st_size, None))
            stack.extend(reversed(subdirs))
        return items

    def describe(self, item: InputItem) -> str:
        return str(self.root / item.rel)

    def read(self, item: InputItem) -> bytes:
        check_size(item)
        try:
            return (self.root / item.rel).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}") from None

    def prefetch(self, item: InputItem) -> None:
        """Start reading an input into the page cache (without waiting), for a worker
        process that reads it soon: a worker that read it cold would wait for the disk
        with its core idle."""
        try:
            # Non-blocking: the path may have become a FIFO since it was listed.
            fd = os.open(self.root / item.rel, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return  # the worker reports it
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # not a regular file: the worker reports it
        finally:
            os.close(fd)

    def lineage(self) -> dict[str, Any]:
        return _lineage_input(self.uri, str(self.root))


def _lineage_input(uri: str, prefix: str) -> dict[str, Any]:
    parts = [p for p in prefix.strip("/").split("/") if p]
    doc: dict[str, Any] = {"uri": uri}
    if len(parts) >= 2:
        doc["name"], doc["version"] = parts[-2], parts[-1]
    return doc


def check_size(item: InputItem) -> None:
    """Refuse an input too large to read into memory."""
    if item.size > MAX_INPUT:
        raise InputError(f"larger than {MAX_INPUT} bytes; not read")


def verify_digest(item: InputItem, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    if item.sha256 is not None and digest != item.sha256:
        raise InputError(f"content SHA-256 {digest[:16]}… differs from the listing's {item.sha256[:16]}…")
    if len(data) != item.size:
        raise InputError(f"read {len(data)} bytes but the listing says {item.size}")
    return digest


# -------------------------------------------------------------------------- sinks
class S3Output:
    """Results as objects under an S3 prefix; identical objects already there are not re-sent."""

    def __init__(self, client: Any, url: str) -> None:
        self.client = client
        self.bucket, prefix = split_s3_url(url)
        self.prefix = _norm_prefix(prefix)
        self.uri = f"s3://{self.bucket}/{self.prefix}"
        self._existing: dict[str, tuple[int, str]] = {}
        self._written: dict[str, FileEntry] = {}
        self._lock = threading.Lock()
        self.uploaded = 0

    def prepare(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            raise ConfigError(f"destination {self.uri}: {exc.response['Error'].get('Code') or exc}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise FetchError(f"destination {self.uri}: {exc}") from None
        try:
            listing = list_prefix(self.client, self.bucket, self.prefix)
        except Exception:  # an empty prefix is reported as an error by list_prefix
            listing = []
        self._existing = {key[len(self.prefix):]: (size, etag.strip('"')) for key, size, etag in listing}

    def already_has(self, rel: str, size: int, md5: str) -> bool:
        """True when the destination holds exactly these bytes under `rel` (single-part ETag = MD5)."""
        return self._existing.get(rel) == (size, md5)

    def holds_result(self, rel: str, result: CachedResult) -> bool:
        """True when the object in place is this result (its ETag is the MD5 the entry recorded)."""
        return bool(result.md5) and self.already_has(rel, result.size, result.md5)

    def keep(self, rel: str, result: CachedResult) -> None:
        """Put an output that is already in place into the manifest (its chunks are the result's)."""
        key = self.prefix + rel
        entry = FileEntry(rel, result.size, result.sha256, result.chunks,
                          Source(bucket=self.bucket, key=key, etag=result.md5))
        with self._lock:
            self._written[rel] = entry

    def write(self, rel: str, data: bytes, md5: str | None = None, cached: CachedResult | None = None) -> None:
        md5 = md5 or hashlib.md5(data).hexdigest()
        key = self.prefix + rel
        etag = md5
        if not self.already_has(rel, len(data), md5):
            try:
                etag = self.client.put_object(Bucket=self.bucket, Key=key, Body=data)["ETag"].strip('"')
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                raise InputError(f"cannot write {self.uri}{rel}: {exc}") from None
            with self._lock:
                self.uploaded += 1
        if cached is not None and RESULT_CHUNK == DEFAULT_CHUNK_SIZE:
            whole, chunks = cached.sha256, list(cached.chunks)  # hashed once, by the worker
        else:
            hasher = ChunkHasher(DEFAULT_CHUNK_SIZE)
            hasher.update(data)
            whole, chunks = hasher.finish()
        entry = FileEntry(rel, len(data), whole, tuple(chunks), Source(bucket=self.bucket, key=key, etag=etag))
        with self._lock:
            self._written[rel] = entry

    def finish(self, name: str, version: str, metadata: dict[str, Any]) -> str:
        files = [self._written[rel] for rel in sorted(self._written)]
        manifest = Manifest(name=name, version=version, files=files, metadata=metadata)
        key = f"{self.prefix}{META_DIR}/manifest.json"
        body = manifest.dumps().encode()
        if self._holds(key, hashlib.md5(body).hexdigest()):
            # A re-run that produced the same dataset version: nothing to write (and a
            # version the registry has registered is immutable).
            return f"s3://{self.bucket}/{key}"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise FetchError(f"cannot write the manifest s3://{self.bucket}/{key}: {exc}") from None
        return f"s3://{self.bucket}/{key}"


    def _holds(self, key: str, md5: str) -> bool:
        """True when `key` exists with exactly the bytes of this MD5 (single-part ETag)."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
            return False
        return head.get("ETag", "").strip('"') == md5


class LocalOutput:
    def __init__(self, path: str) -> None:
        self.root = Path(path).absolute()
        self.uri = self.root.as_uri() + "/"
        self.uploaded = 0
        self._written: set[str] = set()
        self._lock = threading.Lock()

    def prepare(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"destination {self.root}: {exc.strerror}") from None

    def path_of(self, rel: str) -> Path:
        return self.root / rel

    def write(self, rel: str, data: bytes, md5: str | None = None, sha256: str | None = None) -> None:
        try:
            write_atomically(self.path_of(rel), data, sha256=sha256)
        except WorkFailure as exc:
            raise InputError(str(exc)) from None
        self.written_elsewhere(rel)

    def holds_result(self, rel: str, result: CachedResult) -> bool:
        """True when the output in place is this result, written by a run and unchanged since."""
        return holds(self.path_of(rel), result.sha256, result.size)

    def keep(self, rel: str, result: CachedResult) -> None:
        """Count an output already in place as part of this run's dataset (not written)."""
        with self._lock:
            self._written.add(rel)

    def written_elsewhere(self, rel: str) -> None:
        """Count an output a worker process wrote."""
        with self._lock:
            self.uploaded += 1
            self._written.add(rel)

    def finish(self, name: str, version: str, metadata: dict[str, Any]) -> str:
        path = self.root / META_DIR / "lineage.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"name": name, "version": version, "files": sorted(self._written),
                                    "metadata": metadata}, indent=1) + "\n")
        return str(path)


def open_input(spec: str, client_factory: Any) -> S3Input | LocalInput:
    return S3Input(client_factory(), spec) if spec.startswith("s3://") else LocalInput(spec)


def open_output(spec: str, client_factory: Any) -> S3Output | LocalOutput:
    return S3Output(client_factory(), spec) if spec.startswith("s3://") else LocalOutput(spec)


# ------------------------------------------------------------ the gateway's store
def gateway_store(client: Any) -> Path | None:
    """The chunk store of the `mlfs serve` at the client's endpoint, if this host can use it.

    The gateway names its store directory and a random token it wrote into that
    directory when it started; only a process that reads the same token from the same
    path shares the gateway's filesystem (same host, or the same shared disk).
    """
    try:
        doc = call_service(client, "GET", "store", timeout=30)
        store, token = Path(doc["store"]), str(doc["token"])
    except (MlfsError, KeyError, TypeError):
        return None
    try:
        if (store / TOKEN_FILE).read_text().strip() == token:
            return store
    except OSError:
        pass
    return None
