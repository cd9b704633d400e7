"""Fuzzing every parser of untrusted input: manifests, rule files, safetensors headers.

Whatever the input, the parser either accepts it (and what it built is usable and within
bounds) or rejects it with a one-line error of its own type: never another exception.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mlfs.errors import ManifestError
from mlfs.fuse.inodes import InodeTable
from mlfs.manifest.validate import parse_manifest
from mlfs.mount_policy import _chunks_in_order
from mlfs.policy import FormatError, safetensors_header_length, safetensors_tensor_ranges
from mlfs.policy.errors import RuleError
from mlfs.policy.parse import parse_rule_text

DIGEST = "ab" * 32
CHUNK = 64 * 1024


def one_line(exc: Exception) -> None:
    text = str(exc)
    assert text and "\n" not in text and "\r" not in text, f"not a one-line error: {text!r}"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Path components chosen to collide: shared prefixes, dots, empties, odd characters.
component = st.sampled_from(["a", "b", "s", "p", "..", ".", "", "x\x00", "é", "a b", "\n"])
paths = st.lists(component, min_size=1, max_size=5).map("/".join) | st.text(max_size=30)


@st.composite
def manifests(draw) -> dict:
    files = []
    for _ in range(draw(st.integers(0, 5))):
        size = draw(st.sampled_from([0, 1, CHUNK, CHUNK + 1, 3 * CHUNK]) | st.integers(-5, 2**52))
        count = max(0, -(-size // CHUNK)) if size < 10 * CHUNK else 1
        f = {"path": draw(paths), "size": size, "sha256": DIGEST, "chunks": [DIGEST] * count,
             "mode": draw(st.sampled_from([0o444, 0o755, 0o4755, 0o7777, 0o10000, -1])),
             "source": {"bucket": "b", "key": "k"}}
        if draw(st.booleans()):
            f[draw(st.sampled_from(sorted(f)))] = draw(json_values)
        files.append(f)
    links = [{"path": draw(paths), "target": draw(paths)} for _ in range(draw(st.integers(0, 5)))]
    doc = {"schema": "mlfs.manifest/1", "name": "n", "version": "v", "chunk_size": CHUNK,
           "files": files, "symlinks": links}
    if draw(st.booleans()):
        doc[draw(st.sampled_from(sorted(doc) + ["prefetch", "metadata", "extra"]))] = draw(json_values)
    return doc


def _realise(manifest, root: Path) -> None:
    """Build the accepted tree on disk, so the kernel's own path walk can judge the links."""
    mnt = root / "mnt"
    mnt.mkdir()
    for f in manifest.files:
        (mnt / f.path).parent.mkdir(parents=True, exist_ok=True)
        (mnt / f.path).write_bytes(b"")
    for link in manifest.symlinks:
        (mnt / link.path).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(link.target, mnt / link.path)
    for link in manifest.symlinks:
        resolved = os.path.realpath(mnt / link.path)
        inside = os.path.commonpath([resolved, str(mnt)]) == str(mnt)
        assert inside, f"accepted symlink {link.path!r} -> {link.target!r} leaves the mount ({resolved})"


@given(manifests())
def test_manifest_documents(doc: dict) -> None:
    try:
        manifest = parse_manifest(doc)
    except ManifestError as exc:
        one_line(exc)
        return
    table = InodeTable(manifest)
    assert all(n.mode & 0o7000 == 0 for n in table.nodes.values()), "setuid/setgid/sticky bit served"
    with tempfile.TemporaryDirectory() as tmp:
        _realise(manifest, Path(tmp))


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode)
       | st.integers(1, 200_000).map(lambda n: b"[" * n) | st.integers(1, 200_000).map(lambda n: b'{"a":' * n))
def test_manifest_bytes(raw: bytes) -> None:
    try:
        parse_manifest(raw)
    except ManifestError as exc:
        one_line(exc)


rule_words = st.sampled_from([
    "rules:", "use:", "templates:", "- id: r", "  priority: 5", "  conditions:", "  actions:",
    "    - {property: file.size, operator: gt, value: 1G}", "    prefetch: {when: mount, what: whole}",
    "    stream: {window: 4}", "    pin: true", "[", "{", "}", "]", ":", "- ", "&a", "*a", "!!python/object:os.system",
    "      weight: 1e400", "  threshold: -1", "  enabled: maybe", "\t", "'", '"', "%YAML 1.1", "---", "...",
])


@given(st.lists(rule_words, max_size=25).map("\n".join) | st.text(max_size=300)
       | st.sampled_from([50, 400, 1100]).map(lambda n: "[" * n) | st.integers(1, 3_000).map(lambda n: "- " * n))
def test_rule_files(text: str) -> None:
    parsed, report = parse_rule_text(text, "fuzz.yaml")
    for problem in report.problems:
        one_line(Exception(str(problem)))
    if report.problems:
        one_line(RuleError(report.problems))
    else:
        assert parsed is not None


offsets = st.lists(st.integers(-(2**64), 2**64) | st.booleans() | st.floats() | st.text(max_size=3),
                   min_size=0, max_size=3)
tensors = st.dictionaries(
    st.text(max_size=10),
    st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "BF16", 7]), "shape": st.lists(st.integers(0, 2**40)),
                           "data_offsets": offsets}) | json_values,
    max_size=6,
)


@given(tensors | json_values, st.integers(0, 2**50), st.booleans(), st.integers(0, 2**64 - 1))
def test_safetensors_headers(header, file_size: int, lie_about_length: bool, claimed: int) -> None:
    body = json.dumps(header).encode()
    length = claimed if lie_about_length else len(body)
    raw = struct.pack("<Q", length) + body
    try:
        total = safetensors_header_length(raw[:8], file_size)
        ranges = safetensors_tensor_ranges(raw, file_size)
    except FormatError as exc:
        one_line(exc)
        return
    assert total <= file_size
    assert all(0 <= start <= end <= file_size for start, end in ranges)
    count = max(1, -(-file_size // CHUNK))
    plan = _chunks_in_order(ranges, CHUNK, count)
    assert len(plan) == len(set(plan)) and all(0 <= i < count for i in plan)


@given(st.binary(max_size=64) | st.integers(1, 100_000).map(lambda n: struct.pack("<Q", 2 * n) + b"[" * n + b"]" * n))
def test_safetensors_bytes(raw: bytes) -> None:
    try:
        safetensors_tensor_ranges(raw, file_size=len(raw))
    except FormatError as exc:
        one_line(exc)
