"""HTTP routes: the MLflow model-registry REST API (as the stock `mlflow` client calls
it) and mlfs's own `/api/registry/…` routes (push registration, datasets, formats,
lineage, manifests by reference).

MLflow's version numbers are the registry's numbers; a version's `source` and
download URI is its S3 location.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from mlfs.registry.db import STAGES, Artifact, Version
from mlfs.registry.errors import DoesNotExist, InvalidValue
from mlfs.registry.layout import locate_prefix, parse_reference
from mlfs.registry.service import Call

Handler = Callable[[Call], Awaitable[dict[str, Any]]]
ROUTES: dict[tuple[str, str], Handler] = {}
MLFLOW = "/api/2.0/mlflow/"
OWN = "/api/registry/"
MODEL = "model"


def route(method: str, path: str) -> Callable[[Handler], Handler]:
    def add(fn: Handler) -> Handler:
        ROUTES[(method, path)] = fn
        return fn
    return add


# ------------------------------------------------------------------ MLflow JSON
def _ms(t: float) -> int:
    return int(t * 1000)


def mlflow_version(v: Version) -> dict[str, Any]:
    return {
        "name": v.name, "version": str(v.number), "creation_timestamp": _ms(v.created),
        "last_updated_timestamp": _ms(v.updated), "current_stage": v.stage, "description": v.description,
        "source": v.uri, "run_id": v.run_id, "status": v.status,
        "tags": [{"key": k, "value": val} for k, val in sorted(v.tags.items())], "aliases": v.aliases,
    }


def mlflow_model(a: Artifact, versions: list[Version]) -> dict[str, Any]:
    latest: dict[str, Version] = {}
    for v in versions:
        if v.stage not in latest or v.number > latest[v.stage].number:
            latest[v.stage] = v
    return {
        "name": a.name, "creation_timestamp": _ms(a.created), "last_updated_timestamp": _ms(a.updated),
        "description": a.description,
        "latest_versions": [mlflow_version(v) for v in sorted(latest.values(), key=lambda v: v.number)],
        "tags": [{"key": k, "value": val} for k, val in sorted(a.tags.items())],
        "aliases": [{"alias": k, "version": str(n)} for k, n in a.aliases.items()],
    }


def _tags(value: Any) -> dict[str, str]:
    if not value:
        return {}
    if not isinstance(value, list) or not all(isinstance(t, dict) and "key" in t for t in value):
        raise InvalidValue("tags must be a list of {key, value}")
    return {str(t["key"]): str(t.get("value", "")) for t in value}


def _number(call: Call) -> int:
    raw = str(call.get("version", required=True))
    if not raw.isdigit():
        raise InvalidValue(f"version {raw[:40]!r} must be a version number")
    return int(raw)


def _buckets(call: Call, name: str) -> list[str]:
    return sorted({v.bucket for v in call.registry.db.versions(MODEL, name)})


async def _model_doc(call: Call, name: str) -> dict[str, Any]:
    db = call.registry.db
    artifact = await call.run(db.artifact, MODEL, name)
    return mlflow_model(artifact, await call.run(db.versions, MODEL, name))


async def _may_change_model(call: Call, name: str) -> None:
    call.may_write(None)
    for bucket in await call.run(_buckets, call, name):
        call.may_write(bucket)


async def _may_change_version(call: Call, name: str, number: int) -> Version:
    version = await call.run(call.registry.db.version, MODEL, name, number)
    call.may_write(version.bucket)
    return version


# --------------------------------------------------------- registered models
@route("POST", MLFLOW + "registered-models/create")
async def create_model(call: Call) -> dict[str, Any]:
    call.may_write(None)
    name = call.get("name", required=True)
    await call.run(call.registry.db.create_artifact, MODEL, name, call.get("description") or "",
                   _tags(call.get("tags")))
    return {"registered_model": await _model_doc(call, name)}


@route("GET", MLFLOW + "registered-models/get")
async def get_model(call: Call) -> dict[str, Any]:
    return {"registered_model": await _model_doc(call, call.get("name", required=True))}


@route("PATCH", MLFLOW + "registered-models/update")
async def update_model(call: Call) -> dict[str, Any]:
    name = call.get("name", required=True)
    await _may_change_model(call, name)
    await call.run(call.registry.db.update_artifact, MODEL, name, call.get("description") or "")
    return {"registered_model": await _model_doc(call, name)}


@route("POST", MLFLOW + "registered-models/rename")
async def rename_model(call: Call) -> dict[str, Any]:
    name, new = call.get("name", required=True), call.get("new_name", required=True)
    await _may_change_model(call, name)
    await call.run(call.registry.db.rename_artifact, MODEL, name, new)
    return {"registered_model": await _model_doc(call, new)}


@route("DELETE", MLFLOW + "registered-models/delete")
async def delete_model(call: Call) -> dict[str, Any]:
    name = call.get("name", required=True)
    await _may_change_model(call, name)
    await call.run(call.registry.forget_artifact, MODEL, name)
    return {}


@route("GET", MLFLOW + "registered-models/search")
async def search_models(call: Call) -> dict[str, Any]:
    db = call.registry.db
    match = parse_filter(call.get("filter") or "", ("name",))
    found = []
    for artifact in await call.run(db.artifacts, MODEL):
        if match({"name": artifact.name}, artifact.tags):
            found.append(mlflow_model(artifact, await call.run(db.versions, MODEL, artifact.name)))
    return _page(call, sorted(found, key=lambda m: m["name"]), "registered_models")


@route("POST", MLFLOW + "registered-models/get-latest-versions")
@route("GET", MLFLOW + "registered-models/get-latest-versions")
async def latest_versions(call: Call) -> dict[str, Any]:
    name = call.get("name", required=True)
    stages = call.get("stages") or []
    stages = [stages] if isinstance(stages, str) else stages
    await call.run(call.registry.db.artifact, MODEL, name)
    versions = await call.run(call.registry.db.latest, MODEL, name, stages)
    return {"model_versions": [mlflow_version(v) for v in versions]}


@route("POST", MLFLOW + "registered-models/set-tag")
async def set_model_tag(call: Call) -> dict[str, Any]:
    name = call.get("name", required=True)
    await _may_change_model(call, name)
    await call.run(call.registry.db.set_tag, MODEL, name, 0, call.get("key", required=True),
                   str(call.get("value", "")))
    return {}


@route("DELETE", MLFLOW + "registered-models/delete-tag")
async def delete_model_tag(call: Call) -> dict[str, Any]:
    name = call.get("name", required=True)
    await _may_change_model(call, name)
    await call.run(call.registry.db.delete_tag, MODEL, name, 0, call.get("key", required=True))
    return {}


@route("POST", MLFLOW + "registered-models/alias")
async def set_alias(call: Call) -> dict[str, Any]:
    name, number = call.get("name", required=True), _number(call)
    await _may_change_version(call, name, number)
    await call.run(call.registry.db.set_alias, MODEL, name, call.get("alias", required=True), number)
    return {}


@route("DELETE", MLFLOW + "registered-models/alias")
async def delete_alias(call: Call) -> dict[str, Any]:
    name = call.get("name", required=True)
    await _may_change_model(call, name)
    await call.run(call.registry.db.delete_alias, MODEL, name, call.get("alias", required=True))
    return {}


@route("GET", MLFLOW + "registered-models/alias")
async def version_by_alias(call: Call) -> dict[str, Any]:
    version = await call.run(call.registry.db.version_by_alias, MODEL, call.get("name", required=True),
                             call.get("alias", required=True))
    return {"model_version": mlflow_version(version)}


# ------------------------------------------------------------- model versions
@route("POST", MLFLOW + "model-versions/create")
async def create_version(call: Call) -> dict[str, Any]:
    name, source = call.get("name", required=True), call.get("source", required=True)
    db, registry = call.registry.db, call.registry
    await call.run(db.artifact, MODEL, name)
    loc = locate_prefix(source if source.endswith("/") else source + "/")
    if loc is None or not source.startswith("s3://"):
        raise InvalidValue(f"source {source[:200]!r}: expected s3://BUCKET/…/models|model-data/NAME/VERSION/")
    call.may_write(loc.bucket)
    existing = await call.run(db.version_at, loc.bucket, loc.prefix, True)
    if existing is None and await call.run(_on_gateway, call, loc.bucket, loc.prefix):
        existing = await call.run(db.upsert_version, MODEL, name, loc.label, loc.bucket, loc.prefix, True)
    if existing is not None and existing.name != name:
        raise InvalidValue(f"{source} is already version {existing.number} of model {existing.name}")
    if existing is None:
        raise InvalidValue(f"{source}: no objects there on this gateway; push it with mlfs push --registry "
                           "(other S3 servers) or upload it first")
    if existing.manifest is None:
        existing = await call.run(registry.register_from_catalog, existing)
    if call.get("description"):
        existing = await call.run(db.update_version, MODEL, name, existing.number, call.get("description"))
    for key, value in _tags(call.get("tags")).items():
        await call.run(db.set_tag, MODEL, name, existing.id, key, value)
    return {"model_version": mlflow_version(await call.run(db.version_by_id, existing.id))}


def _on_gateway(call: Call, bucket: str, prefix: str) -> bool:
    return bool(call.registry.objects and call.registry.objects.catalog.objects_under(bucket, prefix))


@route("GET", MLFLOW + "model-versions/get")
async def get_version(call: Call) -> dict[str, Any]:
    version = await call.run(call.registry.db.version, MODEL, call.get("name", required=True), _number(call))
    return {"model_version": mlflow_version(version)}


@route("PATCH", MLFLOW + "model-versions/update")
async def update_version(call: Call) -> dict[str, Any]:
    name, number = call.get("name", required=True), _number(call)
    await _may_change_version(call, name, number)
    version = await call.run(call.registry.db.update_version, MODEL, name, number, call.get("description") or "")
    return {"model_version": mlflow_version(version)}


@route("DELETE", MLFLOW + "model-versions/delete")
async def delete_version(call: Call) -> dict[str, Any]:
    name, number = call.get("name", required=True), _number(call)
    version = await _may_change_version(call, name, number)
    await call.run(call.registry.forget_version, version)
    return {}


@route("GET", MLFLOW + "model-versions/search")
async def search_versions(call: Call) -> dict[str, Any]:
    match = parse_filter(call.get("filter") or "", ("name", "version_number", "run_id", "source_path"))
    found = []
    for v in await call.run(call.registry.db.versions, MODEL):
        if match({"name": v.name, "version_number": str(v.number), "run_id": v.run_id, "source_path": v.uri},
                 v.tags):
            found.append(mlflow_version(v))
    found.sort(key=lambda d: (d["name"], -int(d["version"])))
    return _page(call, found, "model_versions")


@route("POST", MLFLOW + "model-versions/transition-stage")
async def transition_stage(call: Call) -> dict[str, Any]:
    name, number = call.get("name", required=True), _number(call)
    await _may_change_version(call, name, number)
    archive = call.get("archive_existing_versions", False)
    archive = archive if isinstance(archive, bool) else str(archive).lower() == "true"
    version = await call.run(call.registry.db.transition_stage, MODEL, name, number,
                             call.get("stage", required=True), archive)
    return {"model_version": mlflow_version(version)}


@route("POST", MLFLOW + "model-versions/set-tag")
async def set_version_tag(call: Call) -> dict[str, Any]:
    name, number = call.get("name", required=True), _number(call)
    version = await _may_change_version(call, name, number)
    await call.run(call.registry.db.set_tag, MODEL, name, version.id, call.get("key", required=True),
                   str(call.get("value", "")))
    return {}


@route("DELETE", MLFLOW + "model-versions/delete-tag")
async def delete_version_tag(call: Call) -> dict[str, Any]:
    name, number = call.get("name", required=True), _number(call)
    version = await _may_change_version(call, name, number)
    await call.run(call.registry.db.delete_tag, MODEL, name, version.id, call.get("key", required=True))
    return {}


@route("GET", MLFLOW + "model-versions/get-download-uri")
async def download_uri(call: Call) -> dict[str, Any]:
    version = await call.run(call.registry.db.version, MODEL, call.get("name", required=True), _number(call))
    return {"artifact_uri": version.uri}


# --------------------------------------------------------------- mlfs routes
@route("POST", OWN + "register")
async def register(call: Call) -> dict[str, Any]:
    """A pushed or scanned version: its location, manifest and indexed files."""
    kind = call.get("kind", MODEL)
    if kind not in (MODEL, "dataset"):
        raise InvalidValue("kind must be model or dataset")
    uri = call.get("uri", required=True)
    loc = locate_prefix(uri)
    if loc is None or loc.kind != kind:
        raise InvalidValue(f"uri {uri[:200]!r} is not a {kind} version directory of the registry layout")
    call.may_write(loc.bucket)
    text = call.get("manifest", required=True)
    files = call.get("files")
    if files is not None and not (isinstance(files, list) and all(
            isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("size"), int)
            and isinstance(f.get("format"), str) for f in files)):
        raise InvalidValue("files must be a list of {path, size, format, info?, reason?}")
    name = call.get("name") or loc.name
    on_gateway = await call.run(_manifest_stored_here, call, loc.bucket, loc.prefix, text)
    version = await call.run(call.registry.register, kind, name, loc.label, loc.bucket, loc.prefix, text,
                             None if on_gateway else files, on_gateway, call.get("description") or "",
                             call.get("metadata") or {})
    for alias in call.get("aliases") or []:
        if str(alias).lower() in {s.lower() for s in STAGES}:
            version = await call.run(call.registry.db.transition_stage, kind, name, version.number, alias, True)
        else:
            await call.run(call.registry.db.set_alias, kind, name, alias, version.number)
    version = await call.run(call.registry.db.version_by_id, version.id)
    return {"version": await call.run(call.registry.describe, version)}


def _manifest_stored_here(call: Call, bucket: str, prefix: str, text: str) -> bool:
    import hashlib

    objects = call.registry.objects
    if objects is None:
        return False
    rec = objects.catalog.get_object(bucket, prefix + ".mlfs/manifest.json")
    if rec is None:
        return False
    sha = rec.sha256 or objects.whole_sha256(rec)
    return sha == hashlib.sha256(text.encode()).hexdigest()


@route("GET", OWN + "models")
async def list_models(call: Call) -> dict[str, Any]:
    return {"models": await call.run(_listing, call, MODEL)}


@route("GET", OWN + "datasets")
async def list_datasets(call: Call) -> dict[str, Any]:
    return {"datasets": await call.run(_listing, call, "dataset")}


def _listing(call: Call, kind: str) -> list[dict[str, Any]]:
    db = call.registry.db
    out = []
    for artifact in db.artifacts(kind):
        versions = db.versions(kind, artifact.name)
        out.append({"name": artifact.name, "description": artifact.description, "tags": artifact.tags,
                    "aliases": artifact.aliases,
                    "versions": [call.registry.describe(v) for v in versions]})
    return out


@route("GET", OWN + "version")
async def show_version(call: Call) -> dict[str, Any]:
    """`?ref=models:/N@A` → the version, its files with formats, and (with manifest=1) its manifest."""
    ref = parse_reference(call.get("ref", required=True))
    version = await call.run(call.registry.find, ref)
    doc = await call.run(call.registry.describe, version, bool(call.get("manifest")))
    return {"version": doc}


@route("GET", OWN + "manifest")
async def manifest_of(call: Call) -> dict[str, Any]:
    """The manifest a reference resolves to, with the version it resolved to."""
    resolved = await call.run(call.registry.resolve, call.get("ref", required=True))
    v = resolved.version
    return {"kind": v.kind, "name": v.name, "version": v.number, "label": v.label, "uri": v.uri,
            "stage": v.stage, "aliases": v.aliases, "manifest_digest": v.manifest_digest,
            "split": resolved.split, "manifest": v.manifest}


@route("GET", OWN + "lineage")
async def lineage(call: Call) -> dict[str, Any]:
    return await call.run(call.registry.lineage, call.get("ref", required=True))


async def _writable(call: Call) -> Version:
    """The version the request's `ref` names, once the caller may write its bucket."""
    version = await call.run(call.registry.find, parse_reference(call.get("ref", required=True)))
    call.may_write(version.bucket)
    return version


async def _described(call: Call, version: Version) -> dict[str, Any]:
    """The version as stored now (after a change), described."""
    current = await call.run(call.registry.db.version_by_id, version.id)
    return {"version": await call.run(call.registry.describe, current)}


@route("POST", OWN + "stage")
async def promote(call: Call) -> dict[str, Any]:
    version = await _writable(call)
    version = await call.run(call.registry.db.transition_stage, version.kind, version.name, version.number,
                             call.get("stage", required=True), bool(call.get("archive_existing", True)))
    return {"version": await call.run(call.registry.describe, version)}


@route("POST", OWN + "alias")
async def alias(call: Call) -> dict[str, Any]:
    version = await _writable(call)
    name = call.get("alias", required=True)
    if call.get("delete"):
        await call.run(call.registry.db.delete_alias, version.kind, version.name, name)
    else:
        await call.run(call.registry.db.set_alias, version.kind, version.name, name, version.number)
    return await _described(call, version)


@route("POST", OWN + "tag")
async def tag(call: Call) -> dict[str, Any]:
    version = await _writable(call)
    key = call.get("key", required=True)
    if call.get("delete"):
        await call.run(call.registry.db.delete_tag, version.kind, version.name, version.id, key)
    else:
        await call.run(call.registry.db.set_tag, version.kind, version.name, version.id, key,
                       str(call.get("value", "")))
    return await _described(call, version)


@route("POST", OWN + "delete")
async def delete(call: Call) -> dict[str, Any]:
    version = await _writable(call)
    await call.run(call.registry.forget_version, version)
    return {"deleted": {"kind": version.kind, "name": version.name, "version": version.number,
                        "label": version.label, "uri": version.uri}}


# ------------------------------------------------------------------ helpers
def _page(call: Call, items: list[dict[str, Any]], key: str) -> dict[str, Any]:
    try:
        limit = int(call.get("max_results") or 1000)
        start = int(call.get("page_token") or 0)
    except ValueError:
        raise InvalidValue("max_results and page_token must be integers") from None
    page = items[start:start + max(1, limit)]
    doc: dict[str, Any] = {key: page}
    if start + limit < len(items):
        doc["next_page_token"] = str(start + limit)
    return doc


_CLAUSE = re.compile(
    r"""\s*(?P<attr>(?:tags?\.)?(?:`[^`]+`|[\w.]+))\s*(?P<op>!=|=|ILIKE|LIKE|IN)\s*"""
    r"""(?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\([^)]*\)|[\w.-]+)\s*""", re.IGNORECASE)


def parse_filter(text: str, attributes: tuple[str, ...]) -> Callable[[dict[str, str], dict[str, str]], bool]:
    """MLflow's search filter subset: `attr = 'v'`, `!=`, `LIKE`, `ILIKE`, `IN (...)`, `tag.k`, joined by AND."""
    clauses = []
    rest = text.strip()
    while rest:
        m = _CLAUSE.match(rest)
        if m is None:
            raise InvalidValue(f"cannot parse filter {text[:200]!r}")
        attr, op, raw = m.group("attr"), m.group("op").upper(), m.group("value")
        is_tag = attr.lower().startswith(("tag.", "tags."))
        key = attr.split(".", 1)[1] if is_tag else attr
        key = key.strip("`")
        if not is_tag and key not in attributes:
            raise InvalidValue(f"filter attribute {key!r} is not supported (use {', '.join(attributes)} or tags.KEY)")
        if op == "IN":
            values = [v.strip().strip("'\"") for v in raw.strip("()").split(",")]
        else:
            values = [raw[1:-1] if raw[:1] in "'\"" else raw]
        clauses.append((is_tag, key, op, values))
        rest = rest[m.end():]
        if rest:
            joined = re.match(r"AND\s+", rest, re.IGNORECASE)
            if joined is None:
                raise InvalidValue(f"cannot parse filter {text[:200]!r} (only AND is supported)")
            rest = rest[joined.end():]

    def like(value: str, pattern: str, flags: int) -> bool:
        regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
        return re.fullmatch(regex, value, flags | re.DOTALL) is not None

    def match(attrs: dict[str, str], tags: dict[str, str]) -> bool:
        for is_tag, key, op, values in clauses:
            value = tags.get(key) if is_tag else attrs.get(key)
            if op == "=" and value != values[0]:
                return False
            if op == "!=" and value == values[0]:
                return False
            if op == "LIKE" and (value is None or not like(value, values[0], 0)):
                return False
            if op == "ILIKE" and (value is None or not like(value, values[0], re.IGNORECASE)):
                return False
            if op == "IN" and value not in values:
                return False
        return True

    return match


__all__ = ["ROUTES", "DoesNotExist"]
