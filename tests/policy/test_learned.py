"""Learned prefetch: record the first seconds of reads, save, load for the same artifact only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlfs.policy import LearnedPrefetch
from tests.policy.helpers import CHUNK, make_manifest

FILES = {"config.json": 700, "model.safetensors": 10 * CHUNK}


def test_records_chunks_read_within_the_window_in_order(tmp_path: Path) -> None:
    manifest = make_manifest(FILES)
    lp = LearnedPrefetch(tmp_path, manifest, window_seconds=30)
    lp.record("config.json", 0, 700, now=1.0)  # before start(): ignored
    lp.start(now=100.0)
    lp.record("config.json", 0, 700, now=100.1)
    lp.record("model.safetensors", CHUNK - 10, 20, now=100.2)  # spans chunks 0 and 1
    lp.record("model.safetensors", 0, 8, now=100.3)  # chunk 0 again: kept at its first time
    lp.record("model.safetensors", 9 * CHUNK, 100 * CHUNK, now=100.4)  # past the end: clamped
    lp.record("nope.bin", 0, 10, now=100.5)
    lp.record("model.safetensors", 5 * CHUNK, 1, now=131.0)  # after the window
    got = [(c.path, c.index) for c in lp.recorded()]
    assert got == [("config.json", 0), ("model.safetensors", 0), ("model.safetensors", 1), ("model.safetensors", 9)]
    assert lp.recorded()[1].t == pytest.approx(0.2)
    assert lp.recorded()[1].sha256 == manifest.file("model.safetensors").chunks[0]


def test_save_then_load_in_a_new_mount(tmp_path: Path) -> None:
    manifest = make_manifest(FILES)
    first = LearnedPrefetch(tmp_path, manifest)
    assert first.save() is None  # nothing recorded, nothing written
    first.start(now=0.0)
    first.record("model.safetensors", 3 * CHUNK, 10, now=1.0)
    first.record("config.json", 0, 10, now=2.0)
    path = first.save()
    assert path is not None and path.parent == tmp_path / "learned"
    assert path.name.startswith("demo@1-") and json.loads(path.read_text())["schema"] == "mlfs.learned/1"
    loaded = LearnedPrefetch(tmp_path, make_manifest(FILES)).load()
    assert [(c.path, c.index) for c in loaded] == [("model.safetensors", 3), ("config.json", 0)]


def test_a_changed_artifact_does_not_use_an_old_trace(tmp_path: Path) -> None:
    lp = LearnedPrefetch(tmp_path, make_manifest(FILES))
    lp.start(now=0.0)
    lp.record("config.json", 0, 10, now=1.0)
    lp.save()
    changed = make_manifest({**FILES, "extra.json": 5})
    assert LearnedPrefetch(tmp_path, changed).load() == []
    assert LearnedPrefetch(tmp_path, make_manifest(FILES, version="2")).load() == []


@pytest.mark.expect_warnings
def test_a_corrupt_or_stale_file_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = make_manifest(FILES)
    lp = LearnedPrefetch(tmp_path, manifest)
    lp.path.parent.mkdir(parents=True)
    lp.path.write_text("{not json")
    assert lp.load() == []
    assert "ignoring it" in caplog.text
    # entries that no longer fit the manifest are dropped one by one
    lp.start(now=0.0)
    lp.record("model.safetensors", 0, 1, now=0.5)
    lp.save()
    doc = json.loads(lp.path.read_text())
    doc["chunks"] += [{"path": "model.safetensors", "index": 99, "sha256": "0" * 64, "t": 1},
                      {"path": "config.json", "index": 0, "sha256": "f" * 64, "t": 1}, "junk"]
    lp.path.write_text(json.dumps(doc))
    assert [(c.path, c.index) for c in lp.load()] == [("model.safetensors", 0)]
