"""Registry fixtures: a real `mlfs serve` (gateway + registry), model directories, the CLI."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.gateway.server import GatewayServer, start_gateway
from tests.mlfs_cli import mlfs, require_fuse
from tests.servers import ACCESS_KEY, SECRET_KEY, S3Server, remove_bucket

MIB = 1 << 20


def make_onnx(path: Path) -> None:
    """A tiny graph: y = relu(x @ W + b), W and b as initializers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(np.array([0.5, -0.5, 0.25], dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w, b])
    model = helper.make_model(graph, producer_name="mlfs-tests", opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_model_dir(root: Path, seed: int = 0, shard_mib: int = 20, shards: int = 2,
                   changed_shard: int | None = None) -> Path:
    """safetensors shards (numpy), a tiny ONNX graph, config and tokenizer JSON.

    The same seed gives byte-identical shards; `changed_shard` regenerates one of them.
    """
    from safetensors.numpy import save_file

    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({
        "architectures": ["TinyForCausalLM"], "model_type": "tiny", "torch_dtype": "float32",
        "vocab_size": 2000, "hidden_size": 256}))
    (root / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {f"t{i}": i for i in range(2000)}}}))
    rows = shard_mib * MIB // (256 * 4)
    for shard in range(shards):
        rng = np.random.default_rng(seed * 1000 + shard + (10_000 if shard == changed_shard else 0))
        tensors = {f"layers.{shard}.weight": rng.standard_normal((rows, 256), dtype=np.float32),
                   f"layers.{shard}.bias": rng.standard_normal((256,), dtype=np.float32)}
        save_file(tensors, str(root / f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"))
    make_onnx(root / "model.onnx")
    return root


@pytest.fixture(scope="session")
def fuse_ready() -> None:
    require_fuse()


@pytest.fixture(scope="module")
def registry_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    server = start_gateway(tmp_path_factory.mktemp("registry-gw"))
    server.client().create_bucket(Bucket="models")
    try:
        yield server
    finally:
        server.stop()
        check_log(server)


@pytest.fixture(scope="session")
def sw_bucket(seaweedfs: S3Server) -> Iterator[str]:
    """One SeaweedFS bucket for every registry test (each bucket takes its own volumes on
    the suite's shared server); tests keep apart by model names and prefixes."""
    name = "registry-tests"
    client = seaweedfs.client()
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        remove_bucket(client, name)


def check_log(server: S3Server) -> None:
    """A daemon's log must hold no WARNING, ERROR or traceback the test did not expect."""
    assert server.log_path is not None
    text = server.log_path.read_text(errors="replace")
    bad = [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line or "Traceback" in line]
    assert not bad, f"unexpected problems in {server.log_path}:\n" + "\n".join(bad[:20])


def env_for(s3: S3Server, registry: S3Server | None = None) -> dict[str, str]:
    env = s3.env()
    if registry is not None:
        env["MLFS_REGISTRY_URL"] = registry.endpoint
    return env


def mlfs_json(*args: str | os.PathLike[str], env: dict[str, str]) -> dict:
    return json.loads(mlfs(*args, "--json", env=env).stdout)


@pytest.fixture
def mlflow_client(registry_gateway: GatewayServer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ACCESS_KEY)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET_KEY)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=registry_gateway.endpoint, registry_uri=registry_gateway.endpoint)
