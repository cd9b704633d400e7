"""Where artifacts live in a bucket, and how references name them.

Layouts: `models/{name}/{version}/…`, `model-data/{name}/{version}/…` (models) and
`datasets/{name}/{version}/{split}/…` (datasets), possibly below a bucket-level
prefix. A version is exactly the objects under its `{version}/` directory; the
version's manifest is `{version}/.mlfs/manifest.json`, which is no file of it.

References: `models:/NAME/VERSION`, `models:/NAME@ALIAS` (or a stage such as
`@production`), `datasets:/NAME/VERSION[/SPLIT]`. VERSION is the registry's version
number or the layout's version directory name (`3` or `v3`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlfs.errors import ConfigError

MANIFEST_NAME = ".mlfs/manifest.json"
BOOKKEEPING = ".mlfs/"
_ROOTS = {"models": "model", "model-data": "model", "datasets": "dataset"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,255}\Z")


@dataclass(frozen=True)
class Location:
    kind: str  # "model" | "dataset"
    name: str
    label: str  # the version directory name
    bucket: str
    prefix: str  # "model-data/tinylm/v1/" (ends with "/")
    path: str  # the object's path inside the version ("" for the version itself)

    @property
    def split(self) -> str:
        return self.path.split("/", 1)[0] if self.kind == "dataset" and "/" in self.path else ""

    @property
    def is_bookkeeping(self) -> bool:
        """Inside a `.mlfs/` directory at any depth (the version's or a split's manifest)."""
        return is_bookkeeping(self.path)

    @property
    def is_split_manifest(self) -> bool:
        """`{split}/.mlfs/manifest.json`: what a run writing one split of a dataset leaves."""
        head, _, tail = self.path.partition("/")
        return self.kind == "dataset" and bool(head) and head != ".mlfs" and tail == MANIFEST_NAME


def is_bookkeeping(path: str) -> bool:
    return BOOKKEEPING.rstrip("/") in path.split("/")[:-1]


def locate(bucket: str, key: str) -> Location | None:
    """The artifact version an object key belongs to, or None if it is outside every layout."""
    parts = key.split("/")
    for i, part in enumerate(parts[:-2]):
        kind = _ROOTS.get(part)
        if kind is None:
            continue
        name, label = parts[i + 1], parts[i + 2]
        if not (_NAME.match(name) and _NAME.match(label)):
            return None
        return Location(kind, name, label, bucket, "/".join(parts[:i + 3]) + "/", "/".join(parts[i + 3:]))
    return None


def locate_prefix(uri: str) -> Location | None:
    """The version a `s3://bucket/…/{version}/` URI names."""
    if not uri.startswith("s3://"):
        return None
    bucket, _, key = uri[5:].partition("/")
    loc = locate(bucket, key.rstrip("/") + "/")
    return loc if loc is not None and loc.path == "" else None


@dataclass(frozen=True)
class Reference:
    kind: str
    name: str
    version: str | None = None  # number or label
    alias: str | None = None  # alias or stage
    split: str | None = None

    def __str__(self) -> str:
        root = "models" if self.kind == "model" else "datasets"
        tail = f"@{self.alias}" if self.alias else f"/{self.version}"
        return f"{root}:/{self.name}{tail}" + (f"/{self.split}" if self.split else "")


def is_reference(text: str) -> bool:
    return str(text).startswith(("models:/", "datasets:/"))


def parse_reference(text: str) -> Reference:
    """Parse `models:/N@A`, `models:/N/V`, `datasets:/N/V[/S]`; ConfigError names what is wrong."""
    kind = "model" if text.startswith("models:/") else "dataset" if text.startswith("datasets:/") else None
    if kind is None:
        raise ConfigError(f"{text!r}: a reference starts with models:/ or datasets:/")
    rest = text.split(":/", 1)[1].lstrip("/")
    if "@" in rest and kind == "model":
        name, _, alias = rest.partition("@")
        if not (_NAME.match(name) and alias and re.fullmatch(r"[A-Za-z0-9_-]+", alias)):
            raise ConfigError(f"{text!r}: expected models:/NAME@ALIAS")
        return Reference(kind, name, alias=alias)
    parts = rest.split("/")
    shape_ok = kind == "model" and len(parts) == 2 or kind == "dataset" and len(parts) in (2, 3)
    if shape_ok and all(_NAME.match(p) for p in parts):
        return Reference(kind, parts[0], version=parts[1], split=parts[2] if len(parts) == 3 else None)
    form = "models:/NAME/VERSION or models:/NAME@ALIAS" if kind == "model" else "datasets:/NAME/VERSION[/SPLIT]"
    raise ConfigError(f"{text!r}: expected {form}")
