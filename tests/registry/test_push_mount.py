"""push → MLflow client → mount by reference, against the gateway and against SeaweedFS.

The registry always lives in a real `mlfs serve`; the bytes live in the gateway itself
or in SeaweedFS (`--registry` points at the gateway). The mounted model is loaded with
safetensors' `safe_open` and onnxruntime through the FUSE mount.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from tests.gateway.server import GatewayServer
from tests.mlfs_cli import mlfs, mounted
from tests.registry.conftest import env_for, make_model_dir, mlfs_json
from tests.servers import S3Server

pytestmark = [pytest.mark.s3, pytest.mark.fuse]


@pytest.fixture(params=["gateway", "seaweedfs"])
def backend(request: pytest.FixtureRequest, registry_gateway: GatewayServer, fuse_ready: None) -> tuple[str, S3Server]:
    if request.param == "gateway":
        return "models", registry_gateway
    return request.getfixturevalue("sw_bucket"), request.getfixturevalue("seaweedfs")


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    with safe_open(str(path), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_push_mlflow_and_mount_by_reference(backend, registry_gateway: GatewayServer, mlflow_client,
                                             tmp_path: Path) -> None:
    bucket, server = backend
    name = f"tinylm-{server.name}"
    env = env_for(server, registry_gateway)
    v1 = make_model_dir(tmp_path / "v1", seed=1, shard_mib=4)
    v2 = make_model_dir(tmp_path / "v2", seed=1, shard_mib=4, changed_shard=1)
    for directory, label in ((v1, "v1"), (v2, "v2")):
        doc = mlfs_json("push", directory, "--name", name, "--version", label, "--bucket", bucket, "-q", env=env)
        assert doc["status"] == "READY", f"push of {label} did not register the version"
    assert doc["uri"] == f"s3://{bucket}/model-data/{name}/v2/"
    assert doc["formats"] == ["hf-config", "json", "onnx", "safetensors"]

    client = mlflow_client
    models = client.search_registered_models(filter_string=f"name = '{name}'")
    assert [m.name for m in models] == [name]
    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(v.version for v in versions) == ["1", "2"]
    assert client.get_model_version(name, "2").source == f"s3://{bucket}/model-data/{name}/v2/"
    assert client.get_model_version_download_uri(name, "1") == f"s3://{bucket}/model-data/{name}/v1/"

    client.set_registered_model_alias(name, "champion", "1")
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    client.transition_model_version_stage(name, "1", "Production")
    client.transition_model_version_stage(name, "2", "Production", archive_existing_versions=True)
    assert [v.version for v in client.get_latest_versions(name, ["Production"])] == ["2"]
    assert client.get_model_version(name, "1").current_stage == "Archived"
    client.set_model_version_tag(name, "2", "validated", "yes")
    client.set_registered_model_tag(name, "team", f"nlp-{server.name}")
    client.update_model_version(name, "2", description="second shard retrained")
    got = client.get_model_version(name, "2")
    assert (got.tags, got.description) == ({"validated": "yes"}, "second shard retrained")
    assert client.get_registered_model(name).tags == {"team": f"nlp-{server.name}"}
    assert [m.name for m in client.search_registered_models(filter_string=f"tags.team = 'nlp-{server.name}'")] \
        == [name]

    with mounted("models:/" + name + "@production", tmp_path / "mnt", env, "--cache", tmp_path / "cache") as mp:
        status = json.loads(mlfs("status", "--json", mp, env=env).stdout)
        assert status["manifest"] == {"name": name, "version": "v2"}
        for shard in sorted(v2.glob("*.safetensors")):
            mounted_tensors = _load_safetensors(mp / shard.name)
            local = _load_safetensors(shard)
            assert mounted_tensors.keys() == local.keys()
            for key, value in local.items():
                assert np.array_equal(mounted_tensors[key], value), f"{shard.name}:{key} differs through the mount"
        import onnxruntime

        session = onnxruntime.InferenceSession(str(mp / "model.onnx"), providers=["CPUExecutionProvider"])
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        reference = onnxruntime.InferenceSession(str(v2 / "model.onnx"), providers=["CPUExecutionProvider"])
        assert np.array_equal(session.run(None, {"x": x})[0], reference.run(None, {"x": x})[0])

    # The alias still names version 1, mounted by alias and by number alike.
    with mounted(f"models:/{name}@champion", tmp_path / "mnt1", env, "--cache", tmp_path / "cache") as mp:
        assert (mp / "model-00002-of-00002.safetensors").read_bytes() == \
            (v1 / "model-00002-of-00002.safetensors").read_bytes()
