"""`GET /{bucket}?mlfs-manifest&prefix=P[&name=N&version=V]`: an mlfs manifest of a prefix.

Every object under the directory P/ becomes a file whose path is its key relative to
it, with the chunk digests and whole-object SHA-256 the gateway recorded when storing
it (objects still waiting for their SHA-256 are hashed now, once). P is a directory:
asking for `m/v1` never picks up `m/v10/…`. Keys ending in "/" (directory markers) and
keys under a `.mlfs/` directory (an artifact's own manifests and bookkeeping, at any
depth) are left out. The
response is exactly `Manifest(...).dumps()`.
"""

from __future__ import annotations

from mlfs.errors import ManifestError
from mlfs.gateway.context import Gateway
from mlfs.gateway.errors import S3Error
from mlfs.gateway.http import Request, Responder
from mlfs.gateway.inputs import require_bucket
from mlfs.gateway.objects import CHUNK_SIZE, ObjectStore
from mlfs.manifest.model import FileEntry, Manifest, Source
from mlfs.manifest.validate import parse_manifest

MAX_FILES = 100_000
BOOKKEEPING_DIR = ".mlfs"


def is_bookkeeping(path: str) -> bool:
    """True for paths inside a `.mlfs/` directory, which are no files of an artifact."""
    return BOOKKEEPING_DIR in path.split("/")[:-1]


def directory_prefix(prefix: str) -> str:
    """The prefix as a directory: "m/v1" → "m/v1/" (the empty prefix stays the whole bucket)."""
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def catalog_manifest(objects: ObjectStore, bucket: str, prefix: str, name: str | None = None,
                     version: str | None = None) -> Manifest:
    """The manifest of the objects under directory `prefix`, from the catalogue. Blocking."""
    prefix = directory_prefix(prefix)
    records = objects.catalog.objects_under(bucket, prefix)
    if len(records) > MAX_FILES:
        raise S3Error("InvalidRequest", f"More than {MAX_FILES} objects under this prefix.")
    files = []
    for rec in records:
        path = rec.key[len(prefix):].lstrip("/")
        if not path or rec.key.endswith("/") or is_bookkeeping(path):
            continue
        sha256 = rec.sha256 or objects.whole_sha256(rec)
        files.append(FileEntry(
            path=path, size=rec.size, sha256=sha256, chunks=tuple(rec.chunks),
            source=Source(bucket=bucket, key=rec.key, etag=rec.etag),
        ))
    name = name or prefix.strip("/").rsplit("/", 1)[-1] or bucket
    manifest = Manifest(name=name, version=version or "latest", files=files, chunk_size=CHUNK_SIZE)
    try:
        return parse_manifest(manifest.dumps(), origin=f"s3://{bucket}/{prefix}")
    except ManifestError as exc:
        raise S3Error("InvalidRequest", f"These objects do not form a valid manifest: {exc}") from None


async def mlfs_manifest(gw: Gateway, req: Request, resp: Responder) -> None:
    bucket = req.bucket or ""
    await require_bucket(gw, bucket)
    manifest = await gw.run(catalog_manifest, gw.objects, bucket, req.query.get("prefix", ""),
                            req.query.get("name"), req.query.get("version"))
    await resp.simple(200, [("content-type", "application/json")], manifest.dumps().encode())
