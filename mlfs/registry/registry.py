"""The registry: versions indexed from the gateway's writes or registered by push/scan,
made immutable by their manifest, resolved from references.

On the gateway, `on_write` runs after every committed write or delete (PUT,
complete-multipart, copy): an object under a layout is indexed at once (format read
from its stored bytes, bounded), and a version's `.mlfs/manifest.json` registers the
version when it describes exactly the objects under the version. `guard` refuses
writes and deletes under a registered version of this store until it is deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlfs.errors import ManifestError
from mlfs.manifest.model import Manifest
from mlfs.manifest.validate import parse_manifest
from mlfs.registry.db import READY, RegistryDB, Version, canonical_stage
from mlfs.registry.errors import DoesNotExist, InvalidValue
from mlfs.registry.formats import detect
from mlfs.registry.layout import (
    MANIFEST_NAME,
    Location,
    Reference,
    is_bookkeeping,
    locate,
    parse_reference,
)

if TYPE_CHECKING:
    from mlfs.gateway.catalog import ObjectRecord
    from mlfs.gateway.objects import ObjectStore

log = logging.getLogger(__name__)
MAX_MANIFEST_BYTES = 64 << 20


def manifest_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Resolved:
    version: Version
    manifest: Manifest
    split: str | None = None


class StoredObject:
    """A ByteSource over a gateway object's chunks (reads may span chunks)."""

    def __init__(self, objects: ObjectStore, rec: ObjectRecord) -> None:
        self.reader = objects.reader(rec)
        self.size = rec.size

    def read(self, offset: int, size: int) -> bytes:
        parts = []
        end = min(offset + size, self.size)
        while offset < end:
            block = self.reader.read(offset, end - offset)
            parts.append(block)
            offset += len(block)
        return b"".join(parts)

    def close(self) -> None:
        self.reader.close()


class Registry:
    def __init__(self, db: RegistryDB, objects: ObjectStore | None = None) -> None:
        self.db = db
        self.objects = objects
        self._lock = threading.Lock()
        self._frozen = db.registered_prefixes()

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------ gateway hooks
    def guard(self, bucket: str, key: str) -> None:
        loc = locate(bucket, key)
        if loc is None:
            return
        with self._lock:
            frozen = (bucket, loc.prefix) in self._frozen
        if frozen:
            from mlfs.gateway.errors import S3Error

            v = self.db.version_at(bucket, loc.prefix, on_gateway=True)
            what = f"version {v.number} ({v.label}) of {v.kind} {v.name}" if v else f"the version at {loc.prefix}"
            raise S3Error("AccessDenied", f"{key} belongs to registered {what}, which is immutable; "
                                          "delete the version from the registry first", f"/{bucket}/{key}")

    def on_write(self, bucket: str, key: str, rec: ObjectRecord | None) -> None:
        loc = locate(bucket, key)
        if loc is None or self.objects is None:
            return
        if rec is None:
            self._forget(loc)
            return
        if loc.path == MANIFEST_NAME:
            self._register_from_object(loc, rec)
        elif loc.is_split_manifest:
            self._lineage_from_split(loc, rec)
        elif not loc.is_bookkeeping and loc.path:
            self._index(loc, rec)

    def _index(self, loc: Location, rec: ObjectRecord) -> None:
        try:
            version = self.db.upsert_version(loc.kind, loc.name, loc.label, loc.bucket, loc.prefix, True)
        except Exception as exc:  # the name is taken by a version elsewhere: not ours to index
            log.info("not indexing s3://%s/%s: %s", loc.bucket, rec.key, exc)
            return
        self._index_as(version, loc, rec)

    def _index_as(self, version: Version, loc: Location, rec: ObjectRecord) -> None:
        src = StoredObject(self.objects, rec)  # type: ignore[arg-type]
        try:
            found = detect(loc.path, src)
        finally:
            src.close()
        if found.format in ("unknown", "unsafe"):
            log.info("indexed s3://%s/%s as %s: %s", loc.bucket, rec.key, found.format, found.reason)
        self.db.put_files(version.id, [{"path": loc.path, "size": rec.size, **found.to_json()}])

    def _index_missing(self, version: Version, manifest: Manifest) -> None:
        # Files written while the name was still held by a pending version elsewhere.
        assert self.objects is not None
        known = {f["path"] for f in self.db.files(version.id)}
        for entry in manifest.files:
            if entry.path in known:
                continue
            rec = self.objects.catalog.get_object(version.bucket, version.prefix + entry.path)
            if rec is not None:
                loc = locate(version.bucket, rec.key)
                if loc is not None:
                    self._index_as(version, loc, rec)

    def _forget(self, loc: Location) -> None:
        version = self.db.version_at(loc.bucket, loc.prefix, on_gateway=True)
        if version is None or version.registered:
            return
        self.db.drop_file(version.id, loc.path)
        if not self.db.files(version.id):
            self.db.delete_version(version.kind, version.name, version.number)

    def _lineage_from_split(self, loc: Location, rec: ObjectRecord) -> None:
        # A run that wrote one split records where it came from in that split's manifest.
        text = self._read_manifest(loc, rec)
        if text is None:
            return
        try:
            links, pipeline = lineage_links(parse_manifest(text, origin=rec.key).metadata)
            version = self.db.upsert_version(loc.kind, loc.name, loc.label, loc.bucket, loc.prefix, True)
        except Exception as exc:
            log.info("s3://%s/%s: no lineage taken from it: %s", loc.bucket, rec.key, exc)
            return
        self.db.add_lineage(version.id, links, pipeline)

    def _read_manifest(self, loc: Location, rec: ObjectRecord) -> str | None:
        if rec.size > MAX_MANIFEST_BYTES:
            log.info("s3://%s/%s: manifest larger than %d bytes, ignored", loc.bucket, rec.key, MAX_MANIFEST_BYTES)
            return None
        src = StoredObject(self.objects, rec)  # type: ignore[arg-type]
        try:
            return src.read(0, rec.size).decode("utf-8", "replace")
        finally:
            src.close()

    def _register_from_object(self, loc: Location, rec: ObjectRecord) -> None:
        text = self._read_manifest(loc, rec)
        if text is None:
            return
        try:
            self.register(loc.kind, loc.name, loc.label, loc.bucket, loc.prefix, text, files=None, on_gateway=True)
        except Exception as exc:
            log.info("s3://%s/%s does not register the version: %s", loc.bucket, rec.key, exc)

    # ------------------------------------------------------------ registration
    def register(self, kind: str, name: str, label: str, bucket: str, prefix: str, manifest_text: str,
                 files: list[dict[str, Any]] | None, on_gateway: bool, description: str = "",
                 extra_metadata: dict[str, Any] | None = None) -> Version:
        """Register a version with its manifest (idempotent for the same manifest)."""
        manifest = parse_manifest(manifest_text, origin=f"manifest of s3://{bucket}/{prefix}")
        for entry in manifest.files:
            src = entry.source
            if src.bucket != bucket or src.key != prefix + entry.path:
                raise InvalidValue(f"manifest file {entry.path!r} is not stored at s3://{bucket}/{prefix}{entry.path}")
        if on_gateway:
            self._check_against_catalog(bucket, prefix, manifest)
        version = self.db.upsert_version(kind, name, label, bucket, prefix, on_gateway, description=description,
                                         claim=True)
        if files is not None:
            self.db.put_files(version.id, files)
        elif on_gateway:
            self._index_missing(version, manifest)
        lineage, pipeline = lineage_links(manifest.metadata)
        metadata = {k: v for k, v in manifest.metadata.items() if k != "lineage"}
        metadata.update(extra_metadata or {})
        if manifest.metadata.get("lineage"):
            metadata["lineage"] = manifest.metadata["lineage"]
        version = self.db.register(version.id, manifest_text, manifest_digest(manifest_text), metadata,
                                   lineage, pipeline)
        if on_gateway:
            with self._lock:
                self._frozen.add((bucket, prefix))
        return version

    def register_from_catalog(self, version: Version) -> Version:
        """Register a gateway version that has no manifest object: build it from the catalogue."""
        from mlfs.gateway.manifest import catalog_manifest

        assert self.objects is not None
        manifest = catalog_manifest(self.objects, version.bucket, version.prefix, version.name, version.label)
        return self.register(version.kind, version.name, version.label, version.bucket, version.prefix,
                             manifest.dumps(), None, True)

    def _check_against_catalog(self, bucket: str, prefix: str, manifest: Manifest) -> None:
        assert self.objects is not None
        stored = {r.key[len(prefix):]: r for r in self.objects.catalog.objects_under(bucket, prefix)
                  if not is_bookkeeping(r.key[len(prefix):]) and not r.key.endswith("/")}
        listed = {f.path: f for f in manifest.files}
        if set(stored) != set(listed):
            extra = sorted(set(stored) ^ set(listed))[0]
            raise InvalidValue(f"the manifest and the objects under s3://{bucket}/{prefix} differ at {extra!r}")
        for path, entry in listed.items():
            rec = stored[path]
            if rec.size != entry.size or (entry.source.etag or rec.etag).strip('"') != rec.etag \
                    or (rec.sha256 and rec.sha256 != entry.sha256):
                raise InvalidValue(f"the manifest does not match the stored object {path!r}")

    def forget_version(self, version: Version) -> None:
        self.db.delete_version(version.kind, version.name, version.number)
        with self._lock:
            self._frozen.discard((version.bucket, version.prefix))

    def forget_artifact(self, kind: str, name: str) -> None:
        versions = self.db.versions(kind, name)
        self.db.delete_artifact(kind, name)
        with self._lock:
            for v in versions:
                self._frozen.discard((v.bucket, v.prefix))

    # --------------------------------------------------------------- resolving
    def find(self, ref: Reference) -> Version:
        self.db.artifact(ref.kind, ref.name)  # "registered model 'x' does not exist" comes first
        if ref.alias is not None:
            try:
                return self.db.version_by_alias(ref.kind, ref.name, ref.alias)
            except DoesNotExist:
                pass
            if ref.alias.lower() == "latest":
                ready = [v for v in self.db.versions(ref.kind, ref.name) if v.registered]
                if ready:
                    return ready[-1]
                raise DoesNotExist(f"{ref}: no registered version") from None
            try:
                stage = canonical_stage(ref.alias)
            except InvalidValue:
                raise DoesNotExist(f"{ref}: no alias {ref.alias!r}") from None
            latest = self.db.latest(ref.kind, ref.name, [stage])
            if not latest:
                raise DoesNotExist(f"{ref}: no alias {ref.alias!r} and no version in stage {stage}")
            return latest[-1]
        assert ref.version is not None
        if ref.version.isdigit():
            try:
                return self.db.version(ref.kind, ref.name, int(ref.version))
            except DoesNotExist:
                pass
        return self.db.version_by_label(ref.kind, ref.name, ref.version)

    def resolve(self, text: str) -> Resolved:
        ref = parse_reference(text)
        version = self.find(ref)
        if version.manifest is None:
            raise DoesNotExist(f"{ref}: version {version.number} ({version.label}) has no manifest yet "
                               "(push it with mlfs push, or register it)")
        manifest = parse_manifest(version.manifest, origin=f"registered manifest of {ref}")
        if ref.split and not any(f.path.startswith(ref.split + "/") for f in manifest.files):
            raise DoesNotExist(f"{ref}: dataset version {version.label} has no split {ref.split!r}")
        return Resolved(version, manifest, ref.split)

    # ----------------------------------------------------------------- reports
    def describe(self, version: Version, with_manifest: bool = False) -> dict[str, Any]:
        files = self.db.files(version.id)
        formats = sorted({f["format"] for f in files} - {"other"})
        doc: dict[str, Any] = {
            "kind": version.kind, "name": version.name, "version": version.number, "label": version.label,
            "uri": version.uri, "on_gateway": version.on_gateway, "status": version.status,
            "stage": version.stage, "aliases": version.aliases, "tags": version.tags,
            "description": version.description, "manifest_digest": version.manifest_digest,
            "formats": formats, "files": files, "metadata": version.metadata,
            "objects": len(files), "bytes": sum(f["size"] for f in files),
            "created": version.created, "updated": version.updated,
        }
        if version.kind == "dataset":
            doc["splits"] = dataset_splits(version, files)
        saved = [f["path"] for f in files if f["format"] == "savedmodel"]
        if saved:
            # A TensorFlow SavedModel is a layout: saved_model.pb beside variables/.
            root = saved[0].rpartition("/")[0]
            under = root + "/variables/" if root else "variables/"
            doc["savedmodel"] = {"saved_model": saved[0],
                                 "variables": sum(1 for f in files if f["path"].startswith(under))}
        if with_manifest:
            doc["manifest"] = version.manifest
        return doc

    def lineage(self, text: str) -> dict[str, Any]:
        ref = parse_reference(text)
        version = self.find(ref)
        inputs = []
        for edge in self.db.lineage_of(version.id):
            try:
                found = self.db.version_by_label(edge["kind"], edge["name"], edge["version"])
                edge = {**edge, "registered_version": found.number}
            except DoesNotExist:
                pass
            inputs.append(edge)
        outputs = [{"kind": v.kind, "name": v.name, "version": v.number, "label": v.label, "uri": v.uri}
                   for v in self.db.used_by(version.kind, version.name, version.label)]
        return {"kind": version.kind, "name": version.name, "version": version.number, "label": version.label,
                "uri": version.uri, "inputs": inputs,
                "pipeline": next((e["pipeline"] for e in inputs if e["pipeline"]), {}),
                "used_by": outputs}


def dataset_splits(version: Version, files: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    splits: dict[str, dict[str, int]] = {}
    if version.manifest:
        try:
            entries = [(f.path, f.size) for f in parse_manifest(version.manifest).files]
        except ManifestError:
            entries = []
    else:
        entries = [(f["path"], f["size"]) for f in files]
    for path, size in entries:
        split = path.split("/", 1)[0] if "/" in path else ""
        s = splits.setdefault(split, {"objects": 0, "bytes": 0})
        s["objects"] += 1
        s["bytes"] += size
    return splits


def lineage_links(metadata: dict[str, Any]) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Input versions and pipeline named in a manifest's `metadata.lineage`."""
    doc = metadata.get("lineage")
    if not isinstance(doc, dict):
        return [], {}
    pipeline = doc.get("pipeline") if isinstance(doc.get("pipeline"), dict) else {}
    links = []
    for item in doc.get("inputs") or []:
        if not isinstance(item, dict) or not isinstance(item.get("uri"), str):
            continue
        # The layout names an input best (a split URI's last components are no name and
        # version); an input outside every layout keeps the names it was given.
        uri = item["uri"]
        loc = locate(*uri[5:].split("/", 1)) if uri.startswith("s3://") and "/" in uri[5:] else None
        kind = loc.kind if loc else "dataset"
        name = loc.name if loc else str(item.get("name") or "")
        label = loc.label if loc else str(item.get("version") or "")
        if name and label:
            links.append({"kind": kind, "name": name, "version": label, "uri": item["uri"]})
    return links, json.loads(json.dumps(pipeline))


__all__ = ["READY", "Registry", "Resolved", "manifest_digest"]
