"""Build manifests: from an S3 prefix, from a local mirror of it, or from an
MLArtifactFS-style manifest. Every byte is hashed once: whole-file and per-chunk SHA-256
in a single pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import botocore.exceptions

from mlfs.errors import FetchError, ManifestError
from mlfs.manifest.model import DEFAULT_CHUNK_SIZE, FileEntry, Manifest, Source, Symlink
from mlfs.manifest.validate import check_path, is_artifactfs_manifest, parse_manifest

# Small files a loader reads first (configs, tokenizers): fetched at mount by default.
DEFAULT_PREFETCH = ["*.json", "*.txt", "*.yaml", "*.model", "tokenizer*"]
_READ_BLOCK = 1 << 20

Progress = Callable[[int], None]


@dataclass(frozen=True)
class ObjectRef:
    path: str  # path inside the manifest
    source: Source
    size: int
    expected_sha256: str | None = None


class ChunkHasher:
    """Whole-file, per-chunk and (optionally) per-block SHA-256 from one pass over a byte stream."""

    def __init__(self, chunk_size: int, block_size: int | None = None) -> None:
        self.chunk_size = chunk_size
        self.whole = hashlib.sha256()
        self.chunk = _Pieces(chunk_size)
        self.block = _Pieces(block_size) if block_size else None
        self.size = 0

    @property
    def chunks(self) -> list[str]:
        return self.chunk.digests

    @property
    def blocks(self) -> list[str]:
        # A file of one block has none: its chunk digest is the same digest.
        if self.block is None or self.size <= self.block.size:
            return []
        return self.block.digests

    def update(self, data: bytes) -> None:
        self.whole.update(data)
        self.size += len(data)
        self.chunk.update(data)
        if self.block is not None:
            self.block.update(data)

    def finish(self) -> tuple[str, list[str]]:
        self.chunk.finish()
        if self.block is not None:
            self.block.finish()
        return self.whole.hexdigest(), self.chunks


class _Pieces:
    """SHA-256 of each consecutive `size`-byte piece of a stream."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.hash = hashlib.sha256()
        self.filled = 0
        self.digests: list[str] = []

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.size - self.filled)
            self.hash.update(view[:take])
            self.filled += take
            view = view[take:]
            if self.filled == self.size:
                self.digests.append(self.hash.hexdigest())
                self.hash = hashlib.sha256()
                self.filled = 0

    def finish(self) -> None:
        if self.filled:
            self.digests.append(self.hash.hexdigest())
            self.filled = 0


def hash_stream(
    stream: BinaryIO, chunk_size: int, progress: Progress | None = None, also: Any = None,
    block_size: int | None = None,
) -> tuple[int, str, list[str], list[str]]:
    """Size, whole-file, chunk and block SHA-256 of a stream (no blocks without
    `block_size`); `also` (a hashlib object) sees the bytes too."""
    hasher = ChunkHasher(chunk_size, block_size)
    while block := stream.read(_READ_BLOCK):
        hasher.update(block)
        if also is not None:
            also.update(block)
        if progress:
            progress(len(block))
    whole, chunks = hasher.finish()
    return hasher.size, whole, chunks, hasher.blocks


def name_version_from_prefix(prefix: str) -> tuple[str, str]:
    parts = [p for p in prefix.strip("/").split("/") if p]
    if len(parts) >= 2:
        return parts[-2], parts[-1]
    return (parts[-1] if parts else "artifact"), ""


# ------------------------------------------------------------------------- S3
def list_prefix(client: Any, bucket: str, prefix: str) -> list[tuple[str, int, str]]:
    """(key, size, etag) of every object under the prefix, directory markers and .mlfs/ skipped."""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    out = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                # Directory markers, and manifests under .mlfs/ directories, are no files of it.
                if obj["Key"].endswith("/") or ".mlfs" in obj["Key"][len(prefix):].split("/")[:-1]:
                    continue
                out.append((obj["Key"], int(obj["Size"]), obj.get("ETag", "")))
    except botocore.exceptions.ClientError as exc:
        raise FetchError(f"cannot list s3://{bucket}/{prefix}: {exc.response['Error'].get('Message') or exc}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise FetchError(f"cannot list s3://{bucket}/{prefix}: {exc}") from None
    if not out:
        raise ManifestError(f"no objects under s3://{bucket}/{prefix}")
    return out


def _relative(key: str, prefix: str) -> str:
    rel = key[len(prefix):] if prefix else key
    try:
        return check_path(rel, f"object s3://…/{key}")
    except ManifestError as exc:
        raise ManifestError(f"{exc} (cannot be a file path in the mount)") from None


def refs_from_s3(client: Any, bucket: str, prefix: str) -> list[ObjectRef]:
    norm = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    return [
        ObjectRef(_relative(key, norm), Source(bucket=bucket, key=key, etag=etag or None), size)
        for key, size, etag in list_prefix(client, bucket, prefix)
    ]


def _open_source(client: Any, source: Source) -> Any:
    if source.is_s3:
        kwargs = {"Bucket": source.bucket, "Key": source.key}
        if source.etag:
            kwargs["IfMatch"] = source.etag
        try:
            return client.get_object(**kwargs)["Body"]
        except botocore.exceptions.ClientError as exc:
            raise FetchError(f"cannot read {source.describe()}: {exc.response['Error'].get('Code') or exc}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise FetchError(f"cannot read {source.describe()}: {exc}") from None
    try:
        return urllib.request.urlopen(str(source.url), timeout=60)
    except OSError as exc:
        raise FetchError(f"cannot read {source.url}: {exc}") from None


def hash_refs(
    client: Any,
    refs: list[ObjectRef],
    chunk_size: int,
    workers: int = 8,
    progress: Progress | None = None,
    block_size: int | None = None,
) -> list[FileEntry]:
    """Read every object once, in parallel, and return its manifest entry."""

    def one(ref: ObjectRef) -> FileEntry:
        body = _open_source(client, ref.source)
        try:
            size, whole, chunks, blocks = hash_stream(body, chunk_size, progress, block_size=block_size)
        except (OSError, botocore.exceptions.BotoCoreError) as exc:
            raise FetchError(f"reading {ref.source.describe()} failed: {exc}") from None
        finally:
            body.close()
        if size != ref.size:
            raise ManifestError(f"{ref.path}: read {size} bytes but the listing says {ref.size}")
        if ref.expected_sha256 and whole != ref.expected_sha256:
            raise ManifestError(f"{ref.path}: SHA-256 {whole} does not match the manifest's {ref.expected_sha256}")
        return FileEntry(ref.path, size, whole, tuple(chunks), ref.source, blocks=tuple(blocks))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, refs))


# ---------------------------------------------------------------------- local
def entries_from_local(
    client: Any,
    root: Path,
    bucket: str,
    prefix: str,
    chunk_size: int,
    workers: int = 4,
    progress: Progress | None = None,
    block_size: int | None = None,
) -> tuple[list[FileEntry], list[Symlink]]:
    """Hash a local mirror of the prefix, checking each file against an S3 HEAD."""
    if not root.is_dir():
        raise ManifestError(f"--local {root}: not a directory")
    norm = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    files: list[tuple[str, Path]] = []
    links: list[Symlink] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                links.append(Symlink(rel, os.readlink(full)))
            elif full.is_file():
                files.append((rel, full))

    def one(item: tuple[str, Path]) -> FileEntry:
        rel, full = item
        key = norm + rel
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            raise ManifestError(f"{rel}: s3://{bucket}/{key} not found ({exc.response['Error'].get('Code')})") from None
        md5 = hashlib.md5()
        with open(full, "rb") as fh:
            size, whole, chunks, blocks = hash_stream(fh, chunk_size, progress, also=md5, block_size=block_size)
        etag = head.get("ETag", "")
        if int(head["ContentLength"]) != size:
            raise ManifestError(f"{rel}: local size {size} differs from S3 ({head['ContentLength']})")
        plain = etag.strip('"')
        if plain and "-" not in plain and plain != md5.hexdigest():
            raise ManifestError(f"{rel}: local content differs from s3://{bucket}/{key} (ETag mismatch)")
        mode = 0o555 if os.stat(full).st_mode & 0o111 else 0o444
        return FileEntry(rel, size, whole, tuple(chunks), Source(bucket=bucket, key=key, etag=etag or None), mode,
                         tuple(blocks))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, files)), links


# --------------------------------------------------------------- MLArtifactFS
def refs_from_artifactfs(doc: dict[str, Any], origin: str) -> tuple[list[ObjectRef], dict[str, Any]]:
    if not is_artifactfs_manifest(doc):
        raise ManifestError(f"{origin}: not an MLArtifactFS-style manifest (needs artifact_id and files)")
    files = doc.get("files")
    if not isinstance(files, list):
        raise ManifestError(f"{origin}: 'files' must be a list")
    refs = []
    for i, f in enumerate(files):
        if not isinstance(f, dict):
            raise ManifestError(f"{origin}: files[{i}] must be an object")
        path = check_path(f.get("path"), f"{origin}: files[{i}]")
        url, size, sha = f.get("url"), f.get("size"), f.get("sha256")
        if not isinstance(url, str) or not url.startswith(("s3://", "http://", "https://")):
            raise ManifestError(f"{origin}: file {path!r}: url must be s3://, http:// or https://")
        if not isinstance(size, int) or size < 0:
            raise ManifestError(f"{origin}: file {path!r}: size must be a non-negative integer")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
            raise ManifestError(f"{origin}: file {path!r}: sha256 must be 64 hex digits")
        source = Source.from_s3_url(url) if url.startswith("s3://") else Source(url=url)
        refs.append(ObjectRef(path, source, size, sha.lower() if sha else None))
    meta = {
        "name": str(doc.get("artifact_id", "")),
        "version": str(doc.get("version", "")),
        "prefetch": [p for p in doc.get("prefetch", []) if isinstance(p, str)],
        "metadata": {"imported_from": "mlartifactfs", **({"mount_path": doc["mount_path"]} if isinstance(doc.get("mount_path"), str) else {})},
    }
    return refs, meta


def read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except ValueError as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from None
    except RecursionError:
        raise ManifestError(f"{path}: JSON nested too deeply") from None


def build_manifest(
    name: str,
    version: str,
    files: Iterable[FileEntry],
    symlinks: Iterable[Symlink] = (),
    prefetch: list[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    metadata: dict[str, Any] | None = None,
    block_size: int | None = None,
) -> Manifest:
    files = list(files)
    manifest = Manifest(
        name=name,
        version=version,
        files=sorted(files, key=lambda f: f.path),
        chunk_size=chunk_size,
        symlinks=sorted(symlinks, key=lambda s: s.path),
        prefetch=list(DEFAULT_PREFETCH if prefetch is None else prefetch),
        metadata=metadata or {},
        block_size=block_size if any(f.blocks for f in files) else None,
    )
    # Round-trip through the validator: what we write is exactly what mounts accept.
    return parse_manifest(manifest.to_json(), origin="generated manifest")


def write_manifest(manifest: Manifest, output: str | None) -> None:
    text = manifest.dumps()
    if output in (None, "-"):
        import sys

        sys.stdout.write(text)
        return
    out = Path(output)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)


class ByteCounter:
    """Thread-safe running total, polled by the progress bar on the main thread."""

    def __init__(self) -> None:
        self.total = 0
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.total += n

