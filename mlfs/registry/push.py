"""`mlfs push`: a local model or dataset directory → `s3://B/{prefix}/{name}/{version}/`,
its manifest next to it, and a registered version.

Each file is hashed locally first (whole-file, 16 MiB chunk and 256 KiB block SHA-256,
one pass: the block digests let a random reader of the mount fetch 256 KiB, not 16 MiB).
A file whose target object already carries the same SHA-256 (`x-amz-meta-mlfs-sha256`)
is skipped, which makes a re-run after a killed push resume; a file that an earlier
registered version of the same name holds in the same bucket is copied server-side;
only the rest is uploaded (multipart with 16 MiB parts for big files, so the gateway
keeps them as whole chunks). The manifest is written last, then the version is
registered with the registry.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.exceptions

from mlfs.errors import ConfigError, FetchError, ManifestError
from mlfs.manifest.generate import build_manifest, hash_stream
from mlfs.manifest.model import DEFAULT_BLOCK_SIZE, DEFAULT_CHUNK_SIZE, FileEntry, Manifest, Source
from mlfs.manifest.validate import check_path, parse_manifest
from mlfs.registry.client import RegistryClient, RegistryRequestError
from mlfs.registry.formats import LocalFile, detect
from mlfs.registry.layout import MANIFEST_NAME, parse_reference

SHA_META = "mlfs-sha256"
MULTIPART_THRESHOLD = 64 << 20
Progress = Callable[[int], None]


@dataclass
class PushPlan:
    directory: Path
    name: str
    version: str
    bucket: str
    prefix: str = "model-data"
    aliases: list[str] = field(default_factory=list)
    trained_on: list[str] = field(default_factory=list)  # dataset references: lineage inputs
    description: str = ""
    workers: int = 8

    @property
    def kind(self) -> str:
        return "dataset" if self.prefix.rstrip("/").rsplit("/", 1)[-1] == "datasets" else "model"

    @property
    def base(self) -> str:
        return f"{self.prefix.strip('/')}/{self.name}/{self.version}/"


@dataclass
class PushResult:
    uploaded: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    version: dict[str, Any] = field(default_factory=dict)


@dataclass
class LocalFileInfo:
    rel: str
    path: Path
    size: int
    sha256: str = ""
    chunks: tuple[str, ...] = ()
    md5: str = ""
    blocks: tuple[str, ...] = ()


def list_directory(root: Path) -> list[LocalFileInfo]:
    """Every regular file under root, following symlinks (Hugging Face snapshots link into blobs/)."""
    if not root.is_dir():
        raise ConfigError(f"{root}: not a directory")
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d != ".mlfs" and not d.startswith(".cache"))
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if not full.is_file():
                raise ConfigError(f"{rel}: not a regular file (dangling symlink?)")
            check_path(rel, "file")
            out.append(LocalFileInfo(rel, full, full.stat().st_size))
    if not out:
        raise ConfigError(f"{root}: no files to push")
    return out


def hf_snapshot_revision(root: Path) -> dict[str, str]:
    """The revision of a Hugging Face cache snapshot directory (…/models--org--name/snapshots/REV)."""
    resolved = root.resolve()
    if resolved.parent.name != "snapshots" or not re.fullmatch(r"[0-9a-f]{40}", resolved.name):
        return {}
    meta = {"hf_revision": resolved.name}
    repo_dir = resolved.parent.parent.name
    if repo_dir.startswith(("models--", "datasets--")):
        meta["hf_repo"] = repo_dir.split("--", 1)[1].replace("--", "/")
    refs = resolved.parent.parent / "refs"
    if refs.is_dir():
        for ref in sorted(refs.iterdir()):
            if ref.is_file() and ref.read_text().strip() == resolved.name:
                meta["hf_ref"] = ref.name
                break
    return meta


def push(plan: PushPlan, s3: Any, registry: RegistryClient, progress: Progress | None = None,
         say: Callable[[str], None] = lambda _m: None) -> PushResult:
    files = list_directory(plan.directory)
    _hash_all(files, plan.workers, progress)
    manifest_key = plan.base + MANIFEST_NAME
    current = _read_small(s3, plan.bucket, manifest_key)
    if current is not None and not _same_contents(_existing(current, plan, manifest_key), files):
        # Refused before anything is uploaded: the version's objects stay as its manifest says.
        raise _different_version(plan, manifest_key)
    known = _known_copies(plan, registry)
    result = PushResult()
    lock = threading.Lock()

    def one(f: LocalFileInfo) -> FileEntry:
        key = plan.base + f.rel
        etag = _existing_etag(s3, plan.bucket, key, f)
        if etag is not None:
            outcome = "skipped"
        elif f.sha256 in known:
            etag = _copy(s3, plan.bucket, known[f.sha256], key, f)
            outcome = "copied"
        else:
            etag = _upload(s3, plan.bucket, key, f, progress)
            outcome = "uploaded"
        with lock:
            getattr(result, outcome).append(f.rel)
            if outcome == "uploaded":
                result.bytes_uploaded += f.size
            elif progress:
                progress(f.size)
        return FileEntry(f.rel, f.size, f.sha256, f.chunks, Source(bucket=plan.bucket, key=key, etag=etag),
                         blocks=f.blocks)

    with ThreadPoolExecutor(max_workers=max(1, plan.workers)) as pool:
        entries = list(pool.map(one, files))
    metadata: dict[str, Any] = {**hf_snapshot_revision(plan.directory)}
    if plan.trained_on:
        metadata["lineage"] = {"inputs": [_lineage_input(registry, ref) for ref in plan.trained_on]}
    manifest = build_manifest(plan.name, plan.version, entries, metadata=metadata, block_size=DEFAULT_BLOCK_SIZE)
    text = manifest.dumps()
    current = _read_small(s3, plan.bucket, manifest_key)  # again: another push may have finished meanwhile
    if current is not None and current != text.encode():
        if not _same_files(_existing(current, plan, manifest_key), manifest):
            raise _different_version(plan, manifest_key)
        text = current.decode()  # the same version pushed before block digests: it stays as it was
    if current is None:
        _put(s3, plan.bucket, manifest_key, text.encode(), "application/json")
    formats = [{"path": f.rel, "size": f.size, **detect(f.rel, LocalFile(str(f.path))).to_json()} for f in files]
    doc = registry.post("register", {
        "kind": plan.kind, "name": plan.name, "uri": f"s3://{plan.bucket}/{plan.base}", "manifest": text,
        "files": formats, "aliases": plan.aliases, "description": plan.description,
    })
    result.version = doc["version"]
    return result


def _hash_all(files: list[LocalFileInfo], workers: int, progress: Progress | None) -> None:
    def one(f: LocalFileInfo) -> None:
        md5 = hashlib.md5()
        with open(f.path, "rb") as fh:
            size, whole, chunks, blocks = hash_stream(fh, DEFAULT_CHUNK_SIZE, None, also=md5,
                                                      block_size=DEFAULT_BLOCK_SIZE)
        if size != f.size:
            raise ConfigError(f"{f.rel}: changed while being read")
        f.sha256, f.chunks, f.md5, f.blocks = whole, tuple(chunks), md5.hexdigest(), tuple(blocks)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, files))


def _different_version(plan: PushPlan, manifest_key: str) -> ConfigError:
    return ConfigError(f"s3://{plan.bucket}/{manifest_key} already holds a different manifest: version "
                       f"{plan.version} of {plan.name} was pushed with other files (push a new version)")


def _existing(current: bytes, plan: PushPlan, manifest_key: str) -> Manifest | None:
    """The version's manifest already in S3, or None when it is not a valid one
    (then it is different from whatever this push would write)."""
    try:
        return parse_manifest(current, origin=f"s3://{plan.bucket}/{manifest_key}")
    except ManifestError:
        return None


def _same_contents(old: Manifest | None, files: list[LocalFileInfo]) -> bool:
    """The manifest already there lists exactly these paths with these sizes and SHA-256."""
    return old is not None and ({f.path: (f.size, f.sha256) for f in old.files}
                                == {f.rel: (f.size, f.sha256) for f in files})


def _same_files(old: Manifest | None, new: Manifest) -> bool:
    """The manifest already there describes the same version as `new`, block digests
    aside (versions pushed before push recorded them have none)."""
    if old is None:
        return False

    def without_blocks(m: Manifest) -> dict[str, Any]:
        doc = m.to_json()
        doc.pop("block_size", None)
        for f in doc["files"]:
            f.pop("blocks", None)
        return doc

    return without_blocks(old) == without_blocks(new)


def _known_copies(plan: PushPlan, registry: RegistryClient) -> dict[str, str]:
    """SHA-256 → key of files that registered versions of this name hold in the same bucket."""
    listing = registry.get("models" if plan.kind == "model" else "datasets")
    known: dict[str, str] = {}
    for artifact in listing.get("models", listing.get("datasets", [])):
        if artifact["name"] != plan.name:
            continue
        for v in artifact["versions"]:
            if v["status"] != "READY" or not v["uri"].startswith(f"s3://{plan.bucket}/") or \
                    v["uri"].endswith(f"/{plan.base}"):
                continue
            ref = f"{'models' if plan.kind == 'model' else 'datasets'}:/{plan.name}/{v['version']}"
            doc = registry.get("version", ref=ref, manifest="1")["version"]
            if not doc.get("manifest"):
                continue
            for entry in parse_manifest(doc["manifest"], origin=ref).files:
                if entry.source.bucket == plan.bucket:
                    known.setdefault(entry.sha256, str(entry.source.key))
    return known


def _lineage_input(registry: RegistryClient, text: str) -> dict[str, str]:
    ref = parse_reference(text)
    try:
        doc = registry.get("version", ref=text)["version"]
    except RegistryRequestError as exc:
        raise ConfigError(f"--trained-on {text}: {exc}") from None
    return {"uri": doc["uri"], "name": ref.name, "version": doc["label"]}


def _existing_etag(s3: Any, bucket: str, key: str, f: LocalFileInfo) -> str | None:
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"].get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise FetchError(f"cannot check s3://{bucket}/{key}: {exc.response['Error'].get('Message') or exc}") from None
    same = int(head["ContentLength"]) == f.size and head.get("Metadata", {}).get(SHA_META) == f.sha256
    return head.get("ETag", "").strip('"') if same else None


def _copy(s3: Any, bucket: str, source_key: str, key: str, f: LocalFileInfo) -> str:
    try:
        s3.copy({"Bucket": bucket, "Key": source_key}, bucket, key,
                ExtraArgs={"MetadataDirective": "REPLACE", "Metadata": {SHA_META: f.sha256}})
        head = s3.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        raise FetchError(f"copying s3://{bucket}/{source_key} to {key} failed: "
                         f"{exc.response['Error'].get('Message') or exc}") from None
    if int(head["ContentLength"]) != f.size:
        raise FetchError(f"copy of {f.rel} from s3://{bucket}/{source_key} has the wrong size")
    return head.get("ETag", "").strip('"')


def _upload(s3: Any, bucket: str, key: str, f: LocalFileInfo, progress: Progress | None) -> str:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=DEFAULT_CHUNK_SIZE,
                            max_concurrency=4, use_threads=True)
    try:
        s3.upload_file(str(f.path), bucket, key, ExtraArgs={"Metadata": {SHA_META: f.sha256}},
                       Config=config, Callback=progress)
        head = s3.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        raise FetchError(f"uploading {f.rel} to s3://{bucket}/{key} failed: "
                         f"{exc.response['Error'].get('Message') or exc}") from None
    except Exception as exc:  # boto3's S3UploadFailedError wraps the ClientError
        raise FetchError(f"uploading {f.rel} to s3://{bucket}/{key} failed: {exc}") from None
    if int(head["ContentLength"]) != f.size:
        raise FetchError(f"s3://{bucket}/{key} has {head['ContentLength']} bytes after upload, expected {f.size}")
    return head.get("ETag", "").strip('"')


def _read_small(s3: Any, bucket: str, key: str) -> bytes | None:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read(256 << 20)
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"].get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise FetchError(f"cannot read s3://{bucket}/{key}: {exc.response['Error'].get('Message') or exc}") from None


def _put(s3: Any, bucket: str, key: str, body: bytes, content_type: str) -> None:
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    except botocore.exceptions.ClientError as exc:
        raise FetchError(f"writing s3://{bucket}/{key} failed: {exc.response['Error'].get('Message') or exc}") from None
