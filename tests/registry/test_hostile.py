"""Hostile and malformed files written to the gateway: each is indexed as `unknown` or
`unsafe` with a one-line reason, nothing is executed, the gateway stays up and its
peak memory stays bounded (a 1 GiB zip bomb and a 2^60-byte header length included)."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.gateway.server import GatewayServer
from tests.mlfs_cli import mlfs
from tests.registry.conftest import env_for, make_onnx

pytestmark = [pytest.mark.s3]
MIB = 1 << 20
PEAK_RSS_LIMIT = 200 * MIB  # the gateway with onnx imported sits well below; a bomb would not


def _safetensors(header: bytes, data: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def _st_header(tensors: dict) -> bytes:
    return json.dumps(tensors).encode()


class _EvilReduce:
    def __reduce__(self):  # pickled, never unpickled: the test only needs its bytes
        import os

        return (os.system, ("echo pwned",))


def _torch_zip(pkl: bytes, extra: Callable[[zipfile.ZipFile], None] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/data/0", b"\0" * 64)
        if extra:
            extra(zf)
    return buf.getvalue()


def _zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, \
            zf.open("archive/data.pkl", "w", force_zip64=True) as fh:
        block = b"\0" * MIB
        for _ in range(1024):  # 1 GiB of zeros, about 1 MiB compressed
            fh.write(block)
    return buf.getvalue()


def _onnx_bytes(tmp: Path) -> bytes:
    make_onnx(tmp / "ok.onnx")
    return (tmp / "ok.onnx").read_bytes()


def _onnx_external(tmp: Path) -> bytes:
    import onnx

    model = onnx.load(str(tmp / "ok.onnx")) if (tmp / "ok.onnx").exists() else None
    if model is None:
        make_onnx(tmp / "ok.onnx")
        model = onnx.load(str(tmp / "ok.onnx"))
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../../etc/passwd"
    return model.SerializeToString()


def _gguf(tensors: int, kv: int, body: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, tensors, kv) + body


def _gguf_string(n: int) -> bytes:
    return struct.pack("<Q", n)


CASES: dict[str, tuple[str, Callable[[Path], bytes], str, str]] = {
    # name: (file name, bytes, expected format, words of the reason)
    "safetensors-huge-header-length": ("model.safetensors", lambda t: _safetensors(b"{}", length=1 << 60),
                                       "unknown", "exceeds"),
    "safetensors-header-not-json": ("model.safetensors", lambda t: _safetensors(b"\xff\xfe not json at all"),
                                    "unknown", "not JSON"),
    "safetensors-deeply-nested-header": ("model.safetensors", lambda t: _safetensors(b"[" * 200_000 + b"]" * 200_000),
                                         "unknown", "not JSON"),
    "safetensors-offsets-outside-file": (
        "model.safetensors",
        lambda t: _safetensors(_st_header({"w": {"dtype": "F32", "shape": [1024, 1024],
                                                 "data_offsets": [0, 4 * MIB]}}), b"\0" * 16),
        "unknown", "outside"),
    "safetensors-overlapping-tensors": (
        "model.safetensors",
        lambda t: _safetensors(_st_header({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                           "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}),
                               b"\0" * 24),
        "unknown", "overlap"),
    "pickle-os-system-global": ("pytorch_model.bin", lambda t: pickle.dumps(_EvilReduce(), protocol=2),
                                "unsafe", "system"),
    "torch-zip-os-system-stack-global": ("model.pt", lambda t: _torch_zip(pickle.dumps(_EvilReduce(), protocol=4)),
                                         "unsafe", "system"),
    "torch-zip-bomb-entry": ("model.pt", lambda t: _zip_bomb(), "unsafe", "zip bomb"),
    "zip-absurd-entry-count": (
        "model.pt",
        lambda t: _torch_zip(b"\x80\x02}q\x00.")[:-22] + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 65535, 65535,
                                                                                   64 * MIB, 0, 0),
        "unknown", "central directory"),
    "onnx-truncated": ("model.onnx", lambda t: _onnx_bytes(t)[:-40], "unknown", "onnx"),
    "onnx-external-data-leaves-directory": ("model.onnx", _onnx_external, "unsafe", "leaves the model directory"),
    "gguf-absurd-tensor-count": ("model.gguf", lambda t: _gguf(1 << 62, 0), "unknown", "tensor count"),
    "gguf-absurd-metadata-count": ("model.gguf", lambda t: _gguf(1, 1 << 40), "unknown", "metadata count"),
    "gguf-huge-key-length": ("model.gguf", lambda t: _gguf(1, 1, _gguf_string(1 << 50)), "unknown", "exceeds"),
    "hf-config-not-json": ("config.json", lambda t: b'{"architectures": [', "unknown", "not JSON"),
    "hf-config-oversized": ("config.json", lambda t: b'{"pad": "' + b"x" * (2 * MIB) + b'"}', "unknown", "larger"),
}


def peak_rss(server: GatewayServer) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_file_is_indexed_as_unknown_or_unsafe(case: str, registry_gateway: GatewayServer,
                                                      tmp_path: Path, fault_case) -> None:
    filename, build, expected, reason_words = CASES[case]
    label = "v" + str(sorted(CASES).index(case) + 1)
    registry_gateway.client().put_object(Bucket="models", Key=f"models/hostile/{label}/{filename}",
                                         Body=build(tmp_path))
    doc = json.loads(mlfs("models", "show", f"models:/hostile/{label}", "--json",
                          env=env_for(registry_gateway)).stdout)
    [entry] = [f for f in doc["files"] if f["path"] == filename]
    assert entry["format"] == expected, f"{case}: {entry}"
    assert reason_words in entry["reason"] and "\n" not in entry["reason"], f"{case}: {entry}"
    assert registry_gateway.process.poll() is None, "the gateway died"
    rss = peak_rss(registry_gateway)
    assert rss < PEAK_RSS_LIMIT, f"gateway peak RSS {rss >> 20} MiB"
    fault_case.record(f"{expected}: {entry['reason'][:70]} (gateway peak RSS {rss >> 20} MiB)")
