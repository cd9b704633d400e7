"""Manifest validation treats every document as untrusted."""

from __future__ import annotations

import copy
import json

import pytest

from mlfs.errors import ManifestError
from mlfs.manifest import SCHEMA, parse_manifest
from mlfs.manifest.generate import ChunkHasher, name_version_from_prefix, refs_from_artifactfs

D = "a" * 64
CHUNK = 1 << 20


def good() -> dict:
    return {
        "schema": SCHEMA,
        "name": "m",
        "version": "v1",
        "chunk_size": CHUNK,
        "files": [
            {"path": "config.json", "size": 10, "sha256": D, "chunks": [D],
             "source": {"bucket": "b", "key": "m/v1/config.json", "etag": '"e"'}},
            {"path": "sub/w.bin", "size": CHUNK + 1, "sha256": D, "chunks": [D, D],
             "source": {"url": "s3://b/m/v1/sub/w.bin"}},
            {"path": "empty", "size": 0, "sha256": D, "chunks": [], "source": {"url": "https://h/x"}},
        ],
        "symlinks": [{"path": "sub/link", "target": "../config.json"}],
        "prefetch": ["*.json"],
    }


def test_round_trip() -> None:
    m = parse_manifest(json.dumps(good()))
    assert [f.path for f in m.files] == ["config.json", "sub/w.bin", "empty"]
    assert m.files[1].source.bucket == "b" and m.files[1].source.key == "m/v1/sub/w.bin"
    assert m.files[1].chunk_range(1, CHUNK) == (CHUNK, CHUNK + 1)
    again = parse_manifest(m.dumps())
    assert again.to_json() == m.to_json()


def mutate(fn):
    doc = copy.deepcopy(good())
    fn(doc)
    return doc


CASES = {
    "dotdot": (lambda d: d["files"][0].update(path="a/../b"), "'..' components"),
    "dot": (lambda d: d["files"][0].update(path="./a"), "'.' components"),
    "absolute": (lambda d: d["files"][0].update(path="/etc/x"), "absolute"),
    "empty path": (lambda d: d["files"][0].update(path=""), "empty path"),
    "empty component": (lambda d: d["files"][0].update(path="a//b"), "empty path component"),
    "trailing slash": (lambda d: d["files"][0].update(path="a/"), "empty path component"),
    "nul": (lambda d: d["files"][0].update(path="a\x00"), "NUL"),
    "long name": (lambda d: d["files"][0].update(path="x" * 300), "longer than 255"),
    "duplicate": (lambda d: d["files"].append(copy.deepcopy(d["files"][0])), "duplicate path"),
    "file/dir clash": (lambda d: d["files"].append(dict(d["files"][0], path="config.json/x")), "is a file"),
    "symlink clash": (lambda d: d["symlinks"].append({"path": "config.json", "target": "x"}), "duplicate"),
    "size type": (lambda d: d["files"][0].update(size="10"), "size must be"),
    "huge size": (lambda d: d["files"][0].update(size=1 << 60), "size must be"),
    "bool size": (lambda d: d["files"][0].update(size=True), "size must be"),
    "too few chunks": (lambda d: d["files"][1].update(chunks=[D]), "expected 2"),
    "too many chunks": (lambda d: d["files"][2].update(chunks=[D]), "expected 0"),
    "bad chunk digest": (lambda d: d["files"][1].update(chunks=[D, "B" * 64]), "chunks[1]"),
    "bad sha": (lambda d: d["files"][0].update(sha256="zz"), "sha256 must be"),
    "sha with newline": (lambda d: d["files"][0].update(sha256=D + "\n"), "sha256 must be"),
    "chunk digest with newline": (lambda d: d["files"][1].update(chunks=[D, D + "\n"]), "chunks[1]"),
    "chunk digest not a string": (lambda d: d["files"][1].update(chunks=[D, 7]), "chunks[1]"),
    "chunk digest too short": (lambda d: d["files"][1].update(chunks=[D[:63], D]), "chunks[0]"),
    "unknown file key": (lambda d: d["files"][0].update(extra=1), "unknown key"),
    "unknown top key": (lambda d: d.update(extra=1), "unknown top-level"),
    "schema": (lambda d: d.update(schema="other/9"), "unsupported schema"),
    "chunk size": (lambda d: d.update(chunk_size=10), "chunk_size"),
    "no source": (lambda d: d["files"][0].pop("source"), "'source' must be"),
    "source no key": (lambda d: d["files"][0].update(source={"bucket": "b"}), "needs non-empty"),
    "bad url": (lambda d: d["files"][0].update(source={"url": "file:///etc/passwd"}), "must start with"),
    "s3 url no key": (lambda d: d["files"][0].update(source={"url": "s3://bucket"}), "needs a bucket and a key"),
    "mode": (lambda d: d["files"][0].update(mode=0o70000), "mode must be"),
    "symlink absolute": (lambda d: d["symlinks"].append({"path": "l2", "target": "/etc/passwd"}), "absolute target"),
    "symlink escape": (lambda d: d["symlinks"].append({"path": "l2", "target": "../../x"}), "escapes the mount"),
    "prefetch type": (lambda d: d.update(prefetch="*.json"), "'prefetch' must be"),
    "files type": (lambda d: d.update(files={}), "'files' must be a list"),
    "blocks without block_size": (lambda d: d["files"][0].update(blocks=[D]), "needs a top-level block_size"),
    "block size not dividing": (lambda d: d.update(block_size=3 * 65536), "divides chunk_size"),
    "block size too small": (lambda d: d.update(block_size=4096), "block_size must be"),
    "too few blocks": (lambda d: (d.update(block_size=CHUNK // 4), d["files"][1].update(blocks=[D] * 4)),
                       "4 block digests for 1048577 bytes (expected 5"),
    "bad block digest": (lambda d: (d.update(block_size=CHUNK // 4), d["files"][0].update(blocks=["x"])),
                         "blocks[0] must be"),
    "uppercase block digest": (lambda d: (d.update(block_size=CHUNK // 4),
                                          d["files"][1].update(blocks=[D, D, D, D.upper(), D])), "blocks[3] must be"),
}


def test_block_digests_round_trip() -> None:
    doc = good()
    doc["block_size"] = CHUNK // 4
    doc["files"][1]["blocks"] = ["b" * 64] * 5
    m = parse_manifest(json.dumps(doc))
    assert m.block_size == CHUNK // 4 and m.files[1].blocks == ("b" * 64,) * 5 and m.files[0].blocks == ()
    assert parse_manifest(m.dumps()).to_json() == m.to_json()
    assert "blocks" not in m.to_json()["files"][0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_defect_is_named(case: str) -> None:
    change, message = CASES[case]
    with pytest.raises(ManifestError) as info:
        parse_manifest(mutate(change), origin="m.json")
    text = str(info.value)
    assert message in text and text.startswith("m.json: ") and "\n" not in text


def test_not_json_and_not_object() -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(b"{")
    with pytest.raises(ManifestError, match="JSON object"):
        parse_manifest(b"[]")


def test_artifactfs_manifest_is_recognised_with_advice() -> None:
    doc = {"artifact_id": "llama", "version": "3", "files": [{"path": "a", "url": "s3://b/a", "size": 1}]}
    with pytest.raises(ManifestError, match="mlfs generate --from"):
        parse_manifest(doc)
    refs, meta = refs_from_artifactfs(dict(doc, prefetch=["a"], mount_path="/mnt/x"), "x.json")
    assert refs[0].source.bucket == "b" and refs[0].source.key == "a"
    assert meta["name"] == "llama" and meta["prefetch"] == ["a"] and meta["metadata"]["mount_path"] == "/mnt/x"
    with pytest.raises(ManifestError, match="'..' components"):
        refs_from_artifactfs({"artifact_id": "x", "files": [{"path": "../a", "url": "s3://b/a", "size": 1}]}, "x")


def test_chunk_hasher_matches_independent_hashing() -> None:
    import hashlib
    import os

    data = os.urandom(3 * 65536 + 7)
    h = ChunkHasher(65536)
    for i in range(0, len(data), 10000):  # feed in pieces that straddle chunk borders
        h.update(data[i:i + 10000])
    whole, chunks = h.finish()
    assert whole == hashlib.sha256(data).hexdigest()
    assert chunks == [hashlib.sha256(data[i:i + 65536]).hexdigest() for i in range(0, len(data), 65536)]

    blocked = ChunkHasher(65536, block_size=16384)
    for i in range(0, len(data), 10000):
        blocked.update(data[i:i + 10000])
    assert blocked.finish() == (whole, chunks)  # blocks change nothing else
    assert blocked.blocks == [hashlib.sha256(data[i:i + 16384]).hexdigest() for i in range(0, len(data), 16384)]
    assert len(blocked.blocks) == 13  # 12 whole blocks and the 7-byte tail


def test_name_version_from_prefix() -> None:
    assert name_version_from_prefix("models/tiny/v1/") == ("tiny", "v1")
    assert name_version_from_prefix("tiny") == ("tiny", "")


def test_example_manifests_stay_valid() -> None:
    from pathlib import Path

    from mlfs.manifest import load_manifest

    root = Path(__file__).resolve().parents[2] / "manifests"
    example = load_manifest(root / "example.json")
    assert [f.path for f in example.files] == ["config.json", "weights/model.safetensors"]
    with pytest.raises(ManifestError, match="mlfs generate --from"):
        load_manifest(root / "mlartifactfs-example.json")
