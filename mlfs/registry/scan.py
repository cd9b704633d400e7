"""`mlfs registry scan s3://bucket[/prefix]`: index an existing bucket of any S3.

Every version directory of the layouts found under the prefix is indexed the way the
gateway indexes what is written to it: each file's format is read from its bytes
(ranged GETs, bounded), and the version is registered with its manifest. A version
without `.mlfs/manifest.json` gets one: from the gateway's recorded digests when the
server is an mlfs gateway, else by reading its objects once; it is written next to the
files, as `mlfs push` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions

from mlfs.errors import FetchError, MlfsError
from mlfs.manifest.generate import ObjectRef, build_manifest, hash_refs
from mlfs.manifest.model import DEFAULT_BLOCK_SIZE, DEFAULT_CHUNK_SIZE, Source
from mlfs.registry.client import RegistryClient
from mlfs.registry.formats import detect
from mlfs.registry.layout import MANIFEST_NAME, Location, is_bookkeeping, locate


class S3Object:
    """A ByteSource over an S3 object: ranged GETs pinned to its ETag."""

    def __init__(self, s3: Any, bucket: str, key: str, size: int, etag: str) -> None:
        self.s3, self.bucket, self.key, self.size, self.etag = s3, bucket, key, size, etag

    def read(self, offset: int, size: int) -> bytes:
        if size <= 0 or offset >= self.size:
            return b""
        end = min(offset + size, self.size) - 1
        try:
            resp = self.s3.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={offset}-{end}",
                                      IfMatch=self.etag)
            return resp["Body"].read()
        except botocore.exceptions.ClientError as exc:
            raise FetchError(f"reading s3://{self.bucket}/{self.key}: {exc.response['Error'].get('Code')}") from None


@dataclass
class ScanResult:
    registered: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (uri, reason)


def scan(s3: Any, registry: RegistryClient, bucket: str, prefix: str,
         say: Callable[[str], None] = lambda _m: None) -> ScanResult:
    versions: dict[str, tuple[Location, list[dict[str, Any]]]] = {}
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                loc = locate(bucket, obj["Key"])
                if loc is None or not loc.path or obj["Key"].endswith("/"):
                    continue
                versions.setdefault(loc.prefix, (loc, []))[1].append(obj)
    except botocore.exceptions.ClientError as exc:
        raise FetchError(f"cannot list s3://{bucket}/{prefix}: {exc.response['Error'].get('Message') or exc}") from None
    result = ScanResult()
    for version_prefix, (loc, objects) in sorted(versions.items()):
        uri = f"s3://{bucket}/{version_prefix}"
        try:
            result.registered.append(_register(s3, registry, loc, objects))
            say(f"registered {uri}")
        except MlfsError as exc:
            result.failed.append((uri, str(exc)))
            say(f"not registered {uri}: {exc}")
    return result


def _register(s3: Any, registry: RegistryClient, loc: Location, objects: list[dict[str, Any]]) -> dict[str, Any]:
    files = [o for o in objects if not is_bookkeeping(o["Key"][len(loc.prefix):])]
    manifest_obj = next((o for o in objects if o["Key"] == loc.prefix + MANIFEST_NAME), None)
    if manifest_obj is not None:
        text = s3.get_object(Bucket=loc.bucket, Key=manifest_obj["Key"])["Body"].read(256 << 20).decode()
    else:
        text = _make_manifest(s3, loc, files)
        s3.put_object(Bucket=loc.bucket, Key=loc.prefix + MANIFEST_NAME, Body=text.encode(),
                      ContentType="application/json")
    formats = []
    for o in files:
        path = o["Key"][len(loc.prefix):]
        src = S3Object(s3, loc.bucket, o["Key"], int(o["Size"]), o.get("ETag", ""))
        formats.append({"path": path, "size": int(o["Size"]), **detect(path, src).to_json()})
    return registry.post("register", {"kind": loc.kind, "name": loc.name, "uri": f"s3://{loc.bucket}/{loc.prefix}",
                                      "manifest": text, "files": formats})["version"]


def _make_manifest(s3: Any, loc: Location, files: list[dict[str, Any]]) -> str:
    from mlfs.manifest.from_gateway import fetch_gateway_manifest

    known = fetch_gateway_manifest(s3, loc.bucket, loc.prefix)
    if known is not None:  # the gateway's recorded digests: chunks only, nothing read
        entries, block_size = known.files, None
    else:
        # The objects are read anyway: block digests as `generate` records them by default.
        refs = [ObjectRef(o["Key"][len(loc.prefix):], Source(bucket=loc.bucket, key=o["Key"],
                                                             etag=o.get("ETag") or None), int(o["Size"]))
                for o in files]
        block_size = DEFAULT_BLOCK_SIZE
        entries = hash_refs(s3, refs, DEFAULT_CHUNK_SIZE, block_size=block_size)
    return build_manifest(loc.name, loc.label, entries, block_size=block_size).dumps()
