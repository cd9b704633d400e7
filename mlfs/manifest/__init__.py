"""Manifests: the unit of mounting (schema, validation, generation, import)."""

from mlfs.manifest.model import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_CHUNK_SIZE,
    SCHEMA,
    FileEntry,
    Manifest,
    Source,
    Symlink,
)
from mlfs.manifest.validate import load_manifest, parse_manifest

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "SCHEMA",
    "FileEntry",
    "Manifest",
    "Source",
    "Symlink",
    "load_manifest",
    "parse_manifest",
]
