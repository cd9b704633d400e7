"""Format detection from names and magic bytes; safetensors tensor ranges from a real file."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from mlfs.policy import (
    FormatError,
    detect_format,
    safetensors_header_length,
    safetensors_tensor_ranges,
)


@pytest.mark.parametrize(("path", "expected"), [
    ("model-00001-of-00002.safetensors", "safetensors"),
    ("model.onnx", "onnx"),
    ("pytorch_model.bin", "pytorch"),
    ("ckpt/epoch=3.ckpt", "pytorch"),
    ("llama-7b.Q4_K_M.gguf", "gguf"),
    ("train.tfrecord-00001-of-00128", "tfrecord"),
    ("data/part-0.parquet", "parquet"),
    ("config.json", "json"),
    ("tokenizer.json", "tokenizer"),
    ("sub/tokenizer.model", "tokenizer"),
    ("merges.txt", "tokenizer"),
    ("images/cat.JPG", "image"),
    ("README", "unknown"),
])
def test_detect_format_by_name(path: str, expected: str) -> None:
    assert detect_format(path) == expected


@pytest.mark.parametrize(("head", "expected"), [
    (b"GGUF\x03\x00\x00\x00", "gguf"),
    (b"PAR1\x15\x04", "parquet"),
    (b"PK\x03\x04rest", "pytorch"),
    (b"\x89PNG\r\n\x1a\n....", "image"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image"),
    (struct.pack("<Q", 20) + b'{"a":{"dtype":"F32"', "safetensors"),
    (b'  {"hidden_size": 4096}', "json"),
    (b"\x00\x01\x02", "unknown"),
])
def test_detect_format_by_magic_for_unnamed_files(head: bytes, expected: str) -> None:
    assert detect_format("blob", head) == expected


def test_magic_does_not_turn_a_named_zip_into_pytorch() -> None:
    assert detect_format("archive.json", b"PK\x03\x04") == "json"


def test_safetensors_ranges_match_the_file_layout(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    tensors = {"b": np.ones((3, 5), np.float32), "a": np.zeros(7, np.int64), "c": np.ones(1, np.float16)}
    save_file(tensors, str(path), metadata={"format": "np"})
    data = path.read_bytes()
    n = safetensors_header_length(data[:8])
    ranges = safetensors_tensor_ranges(data[:n])
    assert ranges == sorted(ranges)
    assert sorted(end - start for start, end in ranges) == sorted(t.nbytes for t in tensors.values())
    assert ranges[0][0] == n and ranges[-1][1] == len(data)
    for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False):
        assert end == start  # tensors are packed back to back after the header


def test_safetensors_errors_are_format_errors() -> None:
    with pytest.raises(FormatError, match="first 8 bytes"):
        safetensors_header_length(b"\x01")
    with pytest.raises(FormatError, match="header needs 18 bytes"):
        safetensors_tensor_ranges(struct.pack("<Q", 10) + b"{}")
    with pytest.raises(FormatError, match="not valid JSON"):
        safetensors_tensor_ranges(struct.pack("<Q", 2) + b"{x")
    bad = b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}'
    with pytest.raises(FormatError, match="invalid data_offsets"):
        safetensors_tensor_ranges(struct.pack("<Q", len(bad)) + bad)
