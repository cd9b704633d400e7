"""What kind of ML artifact a file is, from its name and (when known) its first bytes.

Rules match on `file.format`; the mount knows only paths at mount time and the first
chunk after a read, so detection works from the name alone and sharpens with bytes.
"""

from __future__ import annotations

import json
import posixpath
import struct

from mlfs.policy.errors import FormatError

FORMATS = (
    "safetensors", "onnx", "pytorch", "gguf", "tfrecord", "parquet",
    "json", "tokenizer", "image", "unknown",
)

# Hugging Face tokenizer files: read whole and first by every tokenizer loader.
_TOKENIZER_NAMES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "added_tokens.json",
})
_BY_EXTENSION = {
    ".safetensors": "safetensors",
    ".onnx": "onnx", ".ort": "onnx",
    ".pt": "pytorch", ".pth": "pytorch", ".ckpt": "pytorch", ".bin": "pytorch",
    ".gguf": "gguf",
    ".tfrecord": "tfrecord", ".tfrecords": "tfrecord",
    ".parquet": "parquet",
    ".json": "json", ".jsonl": "json",
    ".png": "image", ".jpg": "image", ".jpeg": "image", ".gif": "image", ".webp": "image",
    ".bmp": "image", ".tif": "image", ".tiff": "image",
}
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
# A safetensors header larger than this is certainly not one (the format caps it at 100 MB).
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def extension(path: str) -> str:
    """Lower-case last suffix with its dot ('.safetensors'), or '' when there is none."""
    name = posixpath.basename(path)
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def detect_format(path: str, head: bytes | None = None) -> str:
    """One of FORMATS. Magic bytes win over the name when `head` is given and decisive."""
    name = posixpath.basename(path).lower()
    if name in _TOKENIZER_NAMES:
        return "tokenizer"
    by_name = _by_name(name)
    if head:
        by_magic = _by_magic(head, by_name)
        if by_magic:
            return by_magic
    return by_name


def _by_name(name: str) -> str:
    ext = extension(name)
    if ext in _BY_EXTENSION:
        return _BY_EXTENSION[ext]
    # Sharded TFRecords are usually named 'train.tfrecord-00001-of-00128'.
    if ".tfrecord-" in name or ".tfrecords-" in name:
        return "tfrecord"
    return "unknown"


def _by_magic(head: bytes, by_name: str) -> str | None:
    if head.startswith(b"GGUF"):
        return "gguf"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"PK\x03\x04"):
        # torch.save writes a zip; other zips are only called pytorch when the name agrees.
        return "pytorch" if by_name in ("pytorch", "unknown") else None
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if _looks_like_safetensors(head):
        return "safetensors"
    if by_name == "unknown" and head.lstrip()[:1] in (b"{", b"["):
        return "json"
    return None


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= MAX_SAFETENSORS_HEADER and head[8:9] == b"{"


def safetensors_header_length(first8: bytes, file_size: int | None = None) -> int:
    """Bytes to read from the start of a safetensors file to have its whole header (8 + N).

    With `file_size`, a header claiming to be longer than the file is refused: the caller
    would otherwise read (and fetch) past what the manifest says exists.
    """
    if len(first8) < 8:
        raise FormatError("safetensors: need the first 8 bytes to know the header length")
    (n,) = struct.unpack("<Q", first8[:8])
    if n > MAX_SAFETENSORS_HEADER:
        raise FormatError(f"safetensors: header length {n} is implausibly large")
    if file_size is not None and 8 + n > file_size:
        raise FormatError(f"safetensors: header length {n} runs past the end of the {file_size}-byte file")
    return 8 + n


def safetensors_tensor_ranges(header_bytes: bytes, file_size: int | None = None) -> list[tuple[int, int]]:
    """Absolute [start, end) byte ranges of every tensor, in file order.

    `header_bytes` is the file's first 8 + N bytes (more is fine). Prefetching in file
    order lets a loader that walks tensors in order find each one already fetched.
    The header is untrusted: with `file_size`, a tensor reaching past the end of the
    file is refused, so nothing built from the ranges can outgrow the file.
    """
    total = safetensors_header_length(header_bytes, file_size)
    if len(header_bytes) < total:
        raise FormatError(f"safetensors: header needs {total} bytes, got {len(header_bytes)}")
    try:
        header = json.loads(header_bytes[8:total])
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"safetensors: header is not valid JSON: {exc}") from None
    except RecursionError:
        raise FormatError("safetensors: header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise FormatError("safetensors: header must be a JSON object")
    ranges = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise FormatError(f"safetensors: tensor {name[:80]!r} has invalid data_offsets")
        if file_size is not None and total + offsets[1] > file_size:
            raise FormatError(
                f"safetensors: tensor {name[:80]!r} ends at byte {total + offsets[1]}, "
                f"past the end of the {file_size}-byte file"
            )
        ranges.append((total + offsets[0], total + offsets[1]))
    ranges.sort()
    return ranges
