"""Unit tests: references and layouts, MLflow filters, the schema migrations, and format
readers on well-formed files (the hostile ones are in test_hostile.py, on a real gateway)."""

from __future__ import annotations

import collections
import io
import json
import pickle
import sqlite3
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from mlfs.errors import ConfigError
from mlfs.registry.api import parse_filter
from mlfs.registry.db import MIGRATIONS, RegistryDB
from mlfs.registry.errors import InvalidValue
from mlfs.registry.formats import BytesSource, detect
from mlfs.registry.layout import Reference, locate, parse_reference


def test_references_parse_to_what_they_name() -> None:
    assert parse_reference("models:/tinylm@production") == Reference("model", "tinylm", alias="production")
    assert parse_reference("models:/tinylm/3") == Reference("model", "tinylm", version="3")
    assert parse_reference("datasets:/imagenet/v2/train") == Reference("dataset", "imagenet", "v2", split="train")
    for bad in ("models:/", "models:/a/b/c", "models:/a@", "datasets:/a", "models:/a b/1", "s3://x/y"):
        with pytest.raises(ConfigError):
            parse_reference(bad)


def test_layouts_locate_versions_as_directories() -> None:
    loc = locate("b", "team/model-data/tinylm/v1/sub/w.safetensors")
    assert (loc.kind, loc.name, loc.label, loc.prefix, loc.path) == (
        "model", "tinylm", "v1", "team/model-data/tinylm/v1/", "sub/w.safetensors")
    assert locate("b", "datasets/raw/v1/train/0.jpg").split == "train"
    assert locate("b", "models/tinylm/v1/.mlfs/manifest.json").is_bookkeeping
    assert locate("b", "models/tinylm") is None
    assert locate("b", "elsewhere/tinylm/v1/x") is None


def test_mlflow_filters() -> None:
    match = parse_filter("name LIKE 'tiny%' AND tag.`mlflow.prompt.is_prompt` != 'true'", ("name",))
    assert match({"name": "tinylm"}, {}) and not match({"name": "tinylm"}, {"mlflow.prompt.is_prompt": "true"})
    assert not match({"name": "big"}, {})
    assert parse_filter("name IN ('a', 'b')", ("name",))({"name": "b"}, {})
    with pytest.raises(InvalidValue):
        parse_filter("owner = 'x'", ("name",))
    with pytest.raises(InvalidValue):
        parse_filter("name = 'a' OR name = 'b'", ("name",))


def test_schema_is_migrated_once_and_refuses_newer(tmp_path: Path) -> None:
    db = RegistryDB(tmp_path / "r.sqlite3")
    db.create_artifact("model", "m")
    assert db.schema_version == len(MIGRATIONS)
    db.close()
    db = RegistryDB(tmp_path / "r.sqlite3")
    assert [a.name for a in db.artifacts("model")] == ["m"]
    db.close()
    raw = sqlite3.connect(tmp_path / "r.sqlite3")
    raw.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    raw.close()
    with pytest.raises(RuntimeError, match="newer"):
        RegistryDB(tmp_path / "r.sqlite3")


def test_well_formed_files_are_described() -> None:
    st = detect("m.safetensors", BytesSource(save({"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.int64)})))
    assert (st.format, st.info["tensors"], st.info["parameters"], st.info["bytes_per_dtype"]) == (
        "safetensors", 2, 10, {"F32": 24, "I64": 32})

    plain = detect("state.pkl", BytesSource(pickle.dumps(collections.OrderedDict(a=1), protocol=2)))
    assert (plain.format, plain.info["globals"]) == ("pickle", ["collections.OrderedDict"])

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(collections.OrderedDict(w=2), protocol=2))
        zf.writestr("archive/data/0", b"\0" * 16)
    pt = detect("model.pt", BytesSource(buf.getvalue()))
    assert (pt.format, pt.info["entries"], pt.info["storages"]) == ("pytorch", 2, 1)

    def gguf_str(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()

    kvs = (gguf_str("general.architecture") + struct.pack("<I", 8) + gguf_str("llama")
           + gguf_str("general.file_type") + struct.pack("<II", 4, 15)
           + gguf_str("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + gguf_str("a") + gguf_str("b"))
    gg = detect("m.gguf", BytesSource(b"GGUF" + struct.pack("<IQQ", 3, 7, 3) + kvs))
    assert (gg.format, gg.info["architecture"], gg.info["quantization"], gg.info["tensors"]) == (
        "gguf", "llama", "Q4_K_M", 7)

    cfg = detect("config.json", BytesSource(json.dumps({"architectures": ["Llama"], "vocab_size": 5}).encode()))
    assert cfg.info == {"architectures": ["Llama"], "vocab_size": 5}
    assert detect("saved_model.pb", BytesSource(b"\x08\x01")).format == "savedmodel"
    assert detect("README.md", BytesSource(b"hi")).format == "other"
