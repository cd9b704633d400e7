"""`GET /{bucket}?mlfs-manifest&prefix=P[&name=N&version=V]`: an mlfs manifest of a prefix.

Every object under P becomes a file whose path is its key relative to P, with the
chunk digests and whole-object SHA-256 the gateway recorded when storing it (objects
still waiting for their SHA-256 are hashed now, once). Keys ending in "/" (directory
markers) are left out. The response is exactly `Manifest(...).dumps()`.
"""

from __future__ import annotations

from mlfs.errors import ManifestError
from mlfs.gateway.context import Gateway
from mlfs.gateway.errors import S3Error
from mlfs.gateway.http import Request, Responder
from mlfs.gateway.inputs import require_bucket
from mlfs.gateway.objects import CHUNK_SIZE
from mlfs.manifest.model import FileEntry, Manifest, Source
from mlfs.manifest.validate import parse_manifest

MAX_FILES = 100_000


async def mlfs_manifest(gw: Gateway, req: Request, resp: Responder) -> None:
    bucket = req.bucket or ""
    await require_bucket(gw, bucket)
    prefix = req.query.get("prefix", "")
    records = await gw.run(gw.objects.catalog.objects_under, bucket, prefix)
    if len(records) > MAX_FILES:
        raise S3Error("InvalidRequest", f"More than {MAX_FILES} objects under this prefix.")
    files = []
    for rec in records:
        path = rec.key[len(prefix):].lstrip("/")
        if not path or rec.key.endswith("/"):
            continue
        sha256 = rec.sha256 or await gw.run(gw.objects.whole_sha256, rec)
        files.append(FileEntry(
            path=path, size=rec.size, sha256=sha256, chunks=tuple(rec.chunks),
            source=Source(bucket=bucket, key=rec.key, etag=rec.etag),
        ))
    name = req.query.get("name") or prefix.strip("/").rsplit("/", 1)[-1] or bucket
    manifest = Manifest(name=name, version=req.query.get("version", "latest"), files=files, chunk_size=CHUNK_SIZE)
    text = manifest.dumps()
    try:
        parse_manifest(text, origin=f"s3://{bucket}/{prefix}")
    except ManifestError as exc:
        raise S3Error("InvalidRequest", f"These objects do not form a valid manifest: {exc}") from None
    await resp.simple(200, [("content-type", "application/json")], text.encode())
