"""Small builders for policy tests: manifests without real bytes, rule files on disk."""

from __future__ import annotations

import hashlib
import math
import textwrap
from pathlib import Path

from mlfs.manifest.model import FileEntry, Manifest, Source

CHUNK = 1024 * 1024


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_manifest(files: dict[str, int], name: str = "demo", version: str = "1") -> Manifest:
    entries = [
        FileEntry(
            path=path,
            size=size,
            sha256=digest(path),
            chunks=tuple(digest(f"{path}#{i}") for i in range(math.ceil(size / CHUNK))),
            source=Source(bucket="b", key=path),
        )
        for path, size in files.items()
    ]
    return Manifest(name=name, version=version, files=entries, chunk_size=CHUNK)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


HF_MODEL = {
    "config.json": 700,
    "generation_config.json": 200,
    "tokenizer.json": 2_000_000,
    "tokenizer_config.json": 1_000,
    "model-00001-of-00002.safetensors": 50 * CHUNK,
    "model-00002-of-00002.safetensors": 30 * CHUNK,
    "model.safetensors.index.json": 30_000,
}
