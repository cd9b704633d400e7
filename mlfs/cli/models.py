"""`mlfs models …`, `mlfs datasets …` and `mlfs lineage`: the registry from the shell.

Every command prints a human table by default and the registry's JSON with `--json`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import click

from mlfs.cli.common import run_command


def registry_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    @click.option("--registry", "registry_url", help="Registry URL [$MLFS_REGISTRY_URL, else the S3 endpoint].")
    @click.option("--endpoint-url", help="S3 endpoint, the default registry [$AWS_ENDPOINT_URL].")
    @click.option("--profile", help="AWS profile for credentials [$AWS_PROFILE].")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @functools.wraps(fn)
    def wrapper(*args: Any, registry_url: str | None, endpoint_url: str | None, profile: str | None,
                as_json: bool, **kwargs: Any) -> None:
        def body() -> None:
            from mlfs.registry.client import RegistryClient

            client = RegistryClient(registry_url, endpoint_url, profile)
            doc, human = fn(client, *args, **kwargs)
            click.echo(json.dumps(doc, indent=1) if as_json else human)

        run_command(body)

    return wrapper


def _table(rows: list[list[str]], header: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows])


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _version_rows(versions: list[dict[str, Any]]) -> list[list[str]]:
    return [[v["name"], str(v["version"]), v["label"], v["stage"] if v["kind"] == "model" else "-",
             ",".join(v["aliases"]) or "-", v["status"].replace("PENDING_REGISTRATION", "pending").lower(),
             ",".join(v["formats"]) or "-", _size(v["bytes"]), v["uri"]] for v in versions]


_HEADER = ["NAME", "VERSION", "LABEL", "STAGE", "ALIASES", "STATUS", "FORMATS", "SIZE", "URI"]


def _show(doc: dict[str, Any]) -> str:
    lines = [f"{doc['kind']} {doc['name']} version {doc['version']} ({doc['label']})",
             f"  uri       {doc['uri']}{'  (on this gateway)' if doc['on_gateway'] else ''}",
             f"  status    {doc['status']}   stage {doc['stage']}   aliases {', '.join(doc['aliases']) or '-'}",
             f"  manifest  {doc['manifest_digest'] or '-'}",
             f"  size      {doc['objects']} objects, {_size(doc['bytes'])}"]
    if doc["tags"]:
        lines.append("  tags      " + ", ".join(f"{k}={v}" for k, v in sorted(doc["tags"].items())))
    if doc["description"]:
        lines.append(f"  about     {doc['description']}")
    for key in ("hf_repo", "hf_revision"):
        if key in doc["metadata"]:
            lines.append(f"  {key:<9} {doc['metadata'][key]}")
    if doc.get("splits"):
        lines.append("  splits    " + ", ".join(f"{s or '(top)'}: {v['objects']} objects, {_size(v['bytes'])}"
                                              for s, v in sorted(doc["splits"].items())))
    lines.append("  files:")
    for f in doc["files"]:
        summary = f.get("reason") or ", ".join(f"{k}={v}" for k, v in (f.get("info") or {}).items()
                                               if k in ("tensors", "parameters", "opset", "nodes", "architecture",
                                                        "quantization", "architectures", "model_type",
                                                        "torch_dtype", "vocab_size", "hidden_size", "entries"))
        lines.append(f"    {f['path']:<40} {_size(f['size']):>10}  {f['format']:<12} {summary}")
    return "\n".join(lines)


def _ref(kind: str, text: str) -> str:
    """A bare NAME/VERSION or NAME@ALIAS is taken as a reference of the command's kind."""
    if text.startswith(("models:/", "datasets:/")):
        return text
    return f"{'models' if kind == 'model' else 'datasets'}:/{text}"


def _listing(client: Any, kind: str, name: str | None = None) -> tuple[Any, str]:
    key = "models" if kind == "model" else "datasets"
    doc = client.get(key)[key]
    if name is not None:
        doc = [a for a in doc if a["name"] == name]
        if not doc:
            from mlfs.registry.client import RegistryRequestError

            raise RegistryRequestError(f"registry: {kind} {name!r} does not exist")
    versions = [v for a in doc for v in a["versions"]]
    return doc, _table(_version_rows(versions), _HEADER)


def _show_ref(client: Any, kind: str, text: str) -> tuple[Any, str]:
    if "/" not in text and "@" not in text:
        return _listing(client, kind, text)
    doc = client.get("version", ref=_ref(kind, text))["version"]
    return doc, _show(doc)


@click.group()
def models() -> None:
    """Registered models: list, show, promote, alias, tag, remove."""


@models.command("ls")
@registry_options
def models_ls(client: Any) -> tuple[Any, str]:
    """List every model version."""
    return _listing(client, "model")


@models.command("show")
@click.argument("ref", metavar="NAME | models:/NAME/VERSION | models:/NAME@ALIAS")
@registry_options
def models_show(client: Any, ref: str) -> tuple[Any, str]:
    """Show a model's versions, or one version with its files and formats."""
    return _show_ref(client, "model", ref)


@models.command("promote")
@click.argument("ref", metavar="models:/NAME/VERSION")
@click.argument("stage", type=click.Choice(["None", "Staging", "Production", "Archived"], case_sensitive=False))
@click.option("--keep-existing", is_flag=True, help="Do not archive the versions already in STAGE.")
@registry_options
def models_promote(client: Any, ref: str, stage: str, keep_existing: bool) -> tuple[Any, str]:
    """Move a version to STAGE (the previous ones in STAGE are archived)."""
    doc = client.post("stage", {"ref": _ref("model", ref), "stage": stage, "archive_existing": not keep_existing})
    v = doc["version"]
    return doc, f"{v['name']} version {v['version']} ({v['label']}) is now in stage {v['stage']}"


@models.command("alias")
@click.argument("ref", metavar="models:/NAME/VERSION")
@click.argument("alias")
@click.option("--delete", is_flag=True, help="Remove the alias instead.")
@registry_options
def models_alias(client: Any, ref: str, alias: str, delete: bool) -> tuple[Any, str]:
    """Point ALIAS at a version (models:/NAME@ALIAS then resolves to it)."""
    doc = client.post("alias", {"ref": _ref("model", ref), "alias": alias, "delete": delete})
    v = doc["version"]
    return doc, (f"alias {alias} removed from {v['name']}" if delete
                 else f"{v['name']}@{alias} → version {v['version']} ({v['label']})")


@models.command("tag")
@click.argument("ref", metavar="models:/NAME/VERSION")
@click.argument("tag", metavar="KEY[=VALUE]")
@click.option("--delete", is_flag=True, help="Remove the tag instead.")
@registry_options
def models_tag(client: Any, ref: str, tag: str, delete: bool) -> tuple[Any, str]:
    """Set (or remove) a tag on a version."""
    key, _, value = tag.partition("=")
    doc = client.post("tag", {"ref": _ref("model", ref), "key": key, "value": value, "delete": delete})
    v = doc["version"]
    return doc, f"{v['name']} version {v['version']} tags: " + (", ".join(f"{k}={x}" for k, x in v["tags"].items())
                                                                  or "-")


@models.command("rm")
@click.argument("ref", metavar="models:/NAME/VERSION")
@registry_options
def models_rm(client: Any, ref: str) -> tuple[Any, str]:
    """Delete a version from the registry (its objects stay, and become writable again)."""
    doc = client.post("delete", {"ref": _ref("model", ref)})
    d = doc["deleted"]
    return doc, f"deleted {d['kind']} {d['name']} version {d['version']} ({d['label']}); objects remain at {d['uri']}"


@click.group()
def datasets() -> None:
    """Datasets: versions, splits, lineage."""


@datasets.command("ls")
@registry_options
def datasets_ls(client: Any) -> tuple[Any, str]:
    """List every dataset version."""
    return _listing(client, "dataset")


@datasets.command("show")
@click.argument("ref", metavar="NAME | datasets:/NAME/VERSION")
@registry_options
def datasets_show(client: Any, ref: str) -> tuple[Any, str]:
    """Show a dataset's versions, or one version with its splits and files."""
    return _show_ref(client, "dataset", ref)


@click.command()
@click.argument("ref", metavar="models:/… | datasets:/…")
@registry_options
def lineage(client: Any, ref: str) -> tuple[Any, str]:
    """What a version was made from (inputs, pipeline) and what was made from it."""
    doc = client.get("lineage", ref=ref)
    lines = [f"{doc['kind']} {doc['name']} version {doc['version']} ({doc['label']}) {doc['uri']}"]
    if doc["pipeline"]:
        lines.append(f"  made by pipeline {doc['pipeline'].get('name', '?')} {doc['pipeline'].get('digest', '')}")
    for i in doc["inputs"]:
        lines.append(f"  input   {i['kind']} {i['name']} {i['version']}  {i['uri']}")
    for o in doc["used_by"]:
        lines.append(f"  used by {o['kind']} {o['name']} version {o['version']} ({o['label']})  {o['uri']}")
    if not doc["inputs"] and not doc["used_by"]:
        lines.append("  no recorded inputs or outputs")
    return doc, "\n".join(lines)
