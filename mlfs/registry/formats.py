"""Format metadata read from bytes, never by executing them.

Every reader takes a `ByteSource` (an object's size and ranged reads) and returns a
`FormatInfo`: the format, what could be learned, or why the file is `unknown` or
`unsafe`. Sizes found in a file are checked against fixed bounds before anything is
allocated or read, so a hostile file costs at most a few MiB of memory.
"""

from __future__ import annotations

import io
import json
import pickletools
import posixpath
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

MAX_SAFETENSORS_HEADER = 16 << 20
MAX_ONNX_BYTES = 64 << 20
MAX_CONFIG_BYTES = 1 << 20
MAX_PICKLE_BYTES = 16 << 20
MAX_ZIP_ENTRIES = 100_000
MAX_ZIP_CENTRAL_DIR = 16 << 20
MAX_GGUF_TENSORS = 1 << 20
MAX_GGUF_KV = 1 << 16
MAX_GGUF_STRING = 1 << 20
MAX_GGUF_ARRAY = 1 << 24
MAX_GGUF_METADATA_BYTES = 64 << 20
MAX_TENSORS = 1 << 20

# Callables a PyTorch checkpoint needs to rebuild tensors; any other GLOBAL could run code.
TORCH_ALLOWED_GLOBALS = frozenset({
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._tensor._rebuild_from_type_v2",
    "torch.Size",
    "torch.device",
    "torch.storage.UntypedStorage",
    "torch.serialization._get_layout",
    *(f"torch.{t}Storage" for t in (
        "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
        "ComplexFloat", "ComplexDouble", "Untyped")),
    *(f"torch.{d}" for d in (
        "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")),
})


class ByteSource(Protocol):
    size: int

    def read(self, offset: int, size: int) -> bytes:
        """Exactly `size` bytes at `offset` (fewer only at the end of the object)."""
        ...


class BytesSource:
    """A ByteSource over bytes in memory (tests, small objects)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]


class LocalFile:
    """A ByteSource over a local file."""

    def __init__(self, path: str) -> None:
        import os

        self.path = path
        self.size = os.stat(path).st_size

    def read(self, offset: int, size: int) -> bytes:
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)


@dataclass
class FormatInfo:
    format: str  # safetensors, onnx, pytorch, pickle, gguf, savedmodel, hf-config, json, unknown, unsafe
    info: dict[str, Any] = field(default_factory=dict)
    reason: str = ""  # why unknown / unsafe

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"format": self.format, **({"info": self.info} if self.info else {})}
        if self.reason:
            doc["reason"] = self.reason
        return doc


class Malformed(Exception):
    """The file is not what its name claims; the message is the one-line reason."""


class Unsafe(Exception):
    """The file would run code if loaded; the message names what was found."""


def detect(path: str, src: ByteSource) -> FormatInfo:
    """Format metadata of the file at `path` (relative to its version), from its bytes."""
    name = posixpath.basename(path).lower()
    reader = _reader_for(name)
    if reader is None:
        return FormatInfo("other")
    try:
        return reader(src)
    except Unsafe as exc:
        return FormatInfo("unsafe", reason=str(exc))
    except Malformed as exc:
        return FormatInfo("unknown", reason=str(exc))
    except (ValueError, KeyError, IndexError, TypeError, struct.error, zipfile.BadZipFile,
            EOFError, UnicodeDecodeError, RecursionError, OverflowError, MemoryError) as exc:
        return FormatInfo("unknown", reason=f"cannot parse: {type(exc).__name__}: {str(exc)[:200]}")


def _reader_for(name: str) -> Callable[[ByteSource], FormatInfo] | None:
    if name.endswith(".safetensors"):
        return read_safetensors
    if name.endswith(".onnx"):
        return read_onnx
    if name.endswith(".gguf"):
        return read_gguf
    if name in ("saved_model.pb", "saved_model.pbtxt"):
        return lambda src: FormatInfo("savedmodel", {"saved_model": name, "bytes": src.size})
    if name == "config.json":
        return read_hf_config
    if name.endswith((".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")):
        return read_torch
    if name.endswith(".json"):
        return lambda src: FormatInfo("json", {"bytes": src.size})
    return None


def _read_exact(src: ByteSource, offset: int, size: int, what: str) -> bytes:
    if offset + size > src.size:
        raise Malformed(f"{what} ends at byte {offset + size}, past the end of the file ({src.size} bytes)")
    data = src.read(offset, size)
    if len(data) != size:
        raise Malformed(f"{what}: short read")
    return data


# ------------------------------------------------------------------ safetensors
_ST_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
              "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}


def read_safetensors(src: ByteSource) -> FormatInfo:
    if src.size < 8:
        raise Malformed("safetensors: file shorter than its 8-byte header length")
    (length,) = struct.unpack("<Q", _read_exact(src, 0, 8, "safetensors header length"))
    if length > MAX_SAFETENSORS_HEADER:
        raise Malformed(f"safetensors: header length {length} exceeds the {MAX_SAFETENSORS_HEADER}-byte limit")
    if 8 + length > src.size:
        raise Malformed(f"safetensors: header length {length} runs past the end of the file")
    try:
        header = json.loads(_read_exact(src, 8, length, "safetensors header"))
    except (ValueError, RecursionError):
        raise Malformed("safetensors: header is not JSON") from None
    if not isinstance(header, dict):
        raise Malformed("safetensors: header is not a JSON object")
    data_size = src.size - 8 - length
    spans = []
    params = 0
    per_dtype: dict[str, int] = {}
    tensors = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if len(tensors) >= MAX_TENSORS:
            raise Malformed(f"safetensors: more than {MAX_TENSORS} tensors")
        if not isinstance(entry, dict):
            raise Malformed(f"safetensors: tensor {name[:80]!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _ST_DTYPES:
            raise Malformed(f"safetensors: tensor {name[:80]!r} has unknown dtype {str(dtype)[:20]!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and 0 <= d < 1 << 48 for d in shape)):
            raise Malformed(f"safetensors: tensor {name[:80]!r} has an invalid shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise Malformed(f"safetensors: tensor {name[:80]!r} has invalid data_offsets")
        start, end = offsets
        if not 0 <= start <= end <= data_size:
            raise Malformed(f"safetensors: tensor {name[:80]!r} offsets [{start}, {end}] lie outside the file's data")
        count = 1
        for d in shape:
            count *= d
        if count * _ST_DTYPES[dtype] != end - start:
            raise Malformed(f"safetensors: tensor {name[:80]!r} size does not match its shape and dtype")
        spans.append((start, end, name))
        params += count
        per_dtype[dtype] = per_dtype.get(dtype, 0) + end - start
        tensors.append({"name": name, "dtype": dtype, "shape": shape})
    spans.sort()
    for (_s1, e1, n1), (s2, _e2, n2) in zip(spans, spans[1:], strict=False):
        if s2 < e1:
            raise Malformed(f"safetensors: tensors {n1[:60]!r} and {n2[:60]!r} overlap")
    return FormatInfo("safetensors", {
        "tensors": len(tensors), "parameters": params, "bytes_per_dtype": per_dtype,
        # Tensor details only for small files: a version row stays small.
        "tensor_list": tensors[:256],
    })


# ------------------------------------------------------------------------- ONNX
def read_onnx(src: ByteSource) -> FormatInfo:
    import onnx
    from google.protobuf.message import DecodeError

    if src.size > MAX_ONNX_BYTES:
        return FormatInfo("onnx", {"bytes": src.size},
                          reason=f"graph not inspected: larger than {MAX_ONNX_BYTES} bytes")
    data = _read_exact(src, 0, src.size, "onnx model")
    model = onnx.ModelProto()
    try:
        # Parsing the protobuf only: external data is never opened, nothing is executed.
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise Malformed(f"onnx: not a valid model protobuf ({type(exc).__name__})") from None
    graph = model.graph
    if not model.ir_version or not len(model.opset_import):
        raise Malformed("onnx: no IR version or opset (truncated or not an ONNX model)")
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            norm = posixpath.normpath(location) if location else ""
            if not location or location.startswith("/") or norm.startswith("..") or "\\" in location:
                raise Unsafe(f"onnx: external data path {location[:100]!r} leaves the model directory")

    def shape(vi: Any) -> list[Any]:
        dims = vi.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]

    return FormatInfo("onnx", {
        "ir_version": model.ir_version,
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "nodes": len(graph.node),
        "inputs": [{"name": i.name, "shape": shape(i)} for i in graph.input][:64],
        "outputs": [{"name": o.name, "shape": shape(o)} for o in graph.output][:64],
    })


# ----------------------------------------------------------------- HF config.json
def read_hf_config(src: ByteSource) -> FormatInfo:
    if src.size > MAX_CONFIG_BYTES:
        raise Malformed(f"config.json: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = json.loads(_read_exact(src, 0, src.size, "config.json"))
    except (ValueError, RecursionError):
        raise Malformed("config.json: not JSON") from None
    if not isinstance(doc, dict):
        raise Malformed("config.json: not a JSON object")
    info = {k: doc[k] for k in ("architectures", "model_type", "torch_dtype", "vocab_size", "hidden_size")
            if k in doc and isinstance(doc[k], (str, int, float, list))}
    return FormatInfo("hf-config", info)


# ----------------------------------------------------------------------- PyTorch
class _SourceFile(io.RawIOBase):
    """A seekable read-only file over a ByteSource, for zipfile."""

    def __init__(self, src: ByteSource) -> None:
        self.src = src
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.src.size + offset}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf: Any) -> int:
        want = min(len(buf), max(0, self.src.size - self.pos), 4 << 20)
        data = self.src.read(self.pos, want) if want else b""
        buf[:len(data)] = data
        self.pos += len(data)
        return len(data)


def read_torch(src: ByteSource) -> FormatInfo:
    head = _read_exact(src, 0, min(4, src.size), "file start")
    if head.startswith(b"PK\x03\x04"):
        return _read_torch_zip(src)
    if head[:1] == b"\x80":  # pickle protocol 2+: the legacy torch.save format, or a plain pickle
        data = src.read(0, min(src.size, MAX_PICKLE_BYTES))
        globals_ = scan_pickle(data, "pickle")
        return FormatInfo("pickle", {"globals": sorted(globals_)[:64]})
    raise Malformed("not a zip or pickle file")


def _read_torch_zip(src: ByteSource) -> FormatInfo:
    _check_zip_directory(src)
    with zipfile.ZipFile(io.BufferedReader(_SourceFile(src), 1 << 20)) as zf:
        entries = zf.infolist()
        if len(entries) > MAX_ZIP_ENTRIES:
            raise Malformed(f"zip: {len(entries)} entries (limit {MAX_ZIP_ENTRIES})")
        pickles = [e for e in entries if e.filename.endswith(".pkl")]
        if not pickles:
            raise Malformed("zip: no pickle entry (not a PyTorch checkpoint)")
        found: set[str] = set()
        for entry in pickles:
            if entry.file_size > MAX_PICKLE_BYTES:
                raise Unsafe(f"zip: entry {entry.filename[:80]!r} expands to {entry.file_size} bytes "
                             f"(limit {MAX_PICKLE_BYTES}; zip bomb?)")
            with zf.open(entry) as fh:
                data = fh.read(MAX_PICKLE_BYTES + 1)
            if len(data) > MAX_PICKLE_BYTES:
                raise Unsafe(f"zip: entry {entry.filename[:80]!r} expands past {MAX_PICKLE_BYTES} bytes (zip bomb?)")
            found |= scan_pickle(data, entry.filename)
        storages = sum(1 for e in entries if "/data/" in e.filename)
    return FormatInfo("pytorch", {"entries": len(entries), "storages": storages, "globals": sorted(found)[:64]})


def _check_zip_directory(src: ByteSource) -> None:
    # zipfile reads the whole central directory into memory: bound it first, from the
    # end-of-central-directory record (and its zip64 locator when present).
    tail_len = min(src.size, 65_557)
    tail = src.read(src.size - tail_len, tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0:
        raise Malformed("zip: no end-of-central-directory record")
    entries, dir_size = struct.unpack("<HI", tail[at + 10:at + 16])
    if at >= 20 and tail[at - 20:at - 16] == b"PK\x06\x07":
        (z64_offset,) = struct.unpack("<Q", tail[at - 12:at - 4])
        record = _read_exact(src, z64_offset, 56, "zip64 end record") if z64_offset + 56 <= src.size else b""
        if record[:4] == b"PK\x06\x06":
            entries, dir_size = struct.unpack("<QQ", record[32:48])
    if entries > MAX_ZIP_ENTRIES:
        raise Malformed(f"zip: {entries} entries (limit {MAX_ZIP_ENTRIES})")
    if dir_size > MAX_ZIP_CENTRAL_DIR:
        raise Malformed(f"zip: central directory of {dir_size} bytes (limit {MAX_ZIP_CENTRAL_DIR})")


def scan_pickle(data: bytes, what: str) -> set[str]:
    """The GLOBALs a pickle would import, found by reading its opcodes, never by unpickling.

    Raises Unsafe naming the first one outside the allow-list.
    """
    found: set[str] = set()
    strings: list[str] = []
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING",
                           "BINSTRING", "STRING"):
                strings.append(str(arg))
                strings = strings[-2:]
            elif op.name in ("GLOBAL", "INST"):
                found.add(str(arg).replace(" ", ".", 1))
            elif op.name == "STACK_GLOBAL":
                if len(strings) < 2:
                    raise Unsafe(f"{what}: STACK_GLOBAL with a computed name")
                found.add(f"{strings[-2]}.{strings[-1]}")
            elif op.name in ("REDUCE", "BUILD", "OBJ", "NEWOBJ", "NEWOBJ_EX") and not found:
                raise Unsafe(f"{what}: {op.name} without a known callable")
            if op.name == "STOP":
                break
    except ValueError as exc:
        if not found and not strings:
            raise Malformed(f"{what}: not a pickle ({exc})") from None
        raise Malformed(f"{what}: pickle is malformed ({str(exc)[:120]})") from None
    bad = sorted(found - TORCH_ALLOWED_GLOBALS)
    if bad:
        raise Unsafe(f"{what}: pickle imports {bad[0]} (not a tensor-rebuilding callable)")
    return found


# -------------------------------------------------------------------------- GGUF
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
                    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
                    17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}


class _Cursor:
    """Sequential reads over a ByteSource in 1 MiB blocks, with a total budget."""

    def __init__(self, src: ByteSource, budget: int) -> None:
        self.src, self.pos, self.budget = src, 0, budget
        self.buf, self.buf_at = b"", 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.src.size:
            raise Malformed(f"gguf: {what} runs past the end of the file")
        if self.pos + n > self.budget:
            raise Malformed(f"gguf: metadata larger than {self.budget} bytes")
        rel = self.pos - self.buf_at
        if rel < 0 or rel + n > len(self.buf):
            self.buf = self.src.read(self.pos, max(n, 1 << 20))
            self.buf_at, rel = self.pos, 0
        self.pos += n
        return self.buf[rel:rel + n]

    def skip(self, n: int, what: str) -> None:
        if self.pos + n > self.src.size:
            raise Malformed(f"gguf: {what} runs past the end of the file")
        self.pos += n

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        if n > MAX_GGUF_STRING:
            raise Malformed(f"gguf: {what} length {n} exceeds {MAX_GGUF_STRING}")
        return self.take(n, what).decode("utf-8", "replace")


def read_gguf(src: ByteSource) -> FormatInfo:
    cur = _Cursor(src, MAX_GGUF_METADATA_BYTES)
    if cur.take(4, "magic") != b"GGUF":
        raise Malformed("gguf: bad magic")
    version = cur.unpack("<I", "version")
    if version not in (2, 3):
        raise Malformed(f"gguf: unsupported version {version}")
    tensors, kv_count = cur.unpack("<Q", "tensor count"), cur.unpack("<Q", "metadata count")
    if tensors > MAX_GGUF_TENSORS:
        raise Malformed(f"gguf: tensor count {tensors} exceeds {MAX_GGUF_TENSORS}")
    if kv_count > MAX_GGUF_KV:
        raise Malformed(f"gguf: metadata count {kv_count} exceeds {MAX_GGUF_KV}")
    keys: list[str] = []
    wanted: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cur.string("metadata key")
        value = _gguf_value(cur, cur.unpack("<I", "value type"), key, depth=0)
        keys.append(key)
        if key in ("general.architecture", "general.name", "general.file_type", "general.quantization_version"):
            wanted[key] = value
    info: dict[str, Any] = {"version": version, "tensors": tensors, "metadata_keys": keys[:128]}
    if "general.architecture" in wanted:
        info["architecture"] = wanted["general.architecture"]
    if "general.file_type" in wanted:
        info["quantization"] = _GGUF_FILE_TYPES.get(wanted["general.file_type"], str(wanted["general.file_type"]))
    return FormatInfo("gguf", info)


def _gguf_value(cur: _Cursor, vtype: int, key: str, depth: int) -> Any:
    if vtype in _GGUF_SCALARS:
        return cur.unpack(_GGUF_SCALARS[vtype], key)
    if vtype == _GGUF_STRING:
        return cur.string(key)
    if vtype == _GGUF_ARRAY and depth == 0:
        item_type, count = cur.unpack("<I", key), cur.unpack("<Q", key)
        if count > MAX_GGUF_ARRAY:
            raise Malformed(f"gguf: array {key[:60]!r} has {count} items (limit {MAX_GGUF_ARRAY})")
        if item_type in _GGUF_SCALARS:
            cur.skip(count * struct.calcsize(_GGUF_SCALARS[item_type]), key)
        else:
            for _ in range(count):
                _gguf_value(cur, item_type, key, depth + 1)
        return None
    raise Malformed(f"gguf: value of {key[:60]!r} has unknown type {vtype}")
