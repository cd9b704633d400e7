"""Registry state survives a clean restart and a kill -9; registered versions are
immutable on the gateway; concurrent promotions leave exactly one Production version."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.gateway.server import GatewayServer, start_gateway
from tests.mlfs_cli import mlfs
from tests.registry.conftest import check_log, env_for, make_model_dir, mlfs_json
from tests.servers import ACCESS_KEY, SECRET_KEY

pytestmark = [pytest.mark.s3]


def _state(server: GatewayServer, ref: str) -> dict:
    doc = mlfs_json("models", "show", ref, env=env_for(server))
    return {k: doc[k] for k in ("version", "label", "stage", "aliases", "tags", "manifest_digest", "status",
                                "formats", "uri")}


def _refused(server: GatewayServer, key: str) -> str:
    client = server.client()
    with pytest.raises(ClientError) as put:
        client.put_object(Bucket="models", Key=key, Body=b"changed")
    with pytest.raises(ClientError) as delete:
        client.delete_object(Bucket="models", Key=key)
    assert put.value.response["Error"]["Code"] == delete.value.response["Error"]["Code"] == "AccessDenied"
    return put.value.response["Error"]["Message"]


def test_registry_survives_restart_and_kill_9(tmp_path: Path) -> None:
    work = tmp_path / "gw"
    server = start_gateway(work)
    try:
        server.client().create_bucket(Bucket="models")
        env = env_for(server)
        mlfs("push", make_model_dir(tmp_path / "m", shard_mib=1, shards=1), "--name", "durable", "--version", "v1",
             "-q", env=env)
        mlfs("models", "promote", "models:/durable/1", "production", env=env)
        mlfs("models", "alias", "models:/durable/1", "golden", env=env)
        mlfs("models", "tag", "models:/durable/1", "owner=ml-platform", env=env)
        before = _state(server, "models:/durable@golden")
        assert (before["stage"], before["aliases"], before["tags"]) == ("Production", ["golden"],
                                                                       {"owner": "ml-platform"})
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
    finally:
        server.stop()
    check_log(server)

    for how in ("after kill -9", "after a clean stop"):
        server = start_gateway(work)
        try:
            assert _state(server, "models:/durable@golden") == before, how
            message = _refused(server, "model-data/durable/v1/config.json")
            assert "version 1 (v1) of model durable" in message, how
        finally:
            server.stop()
        assert server.process.returncode == 0, f"mlfs serve did not stop cleanly {how}"
        check_log(server)


def test_registered_version_is_immutable_until_deleted(registry_gateway: GatewayServer, tmp_path: Path) -> None:
    env = env_for(registry_gateway)
    client = registry_gateway.client()
    # Before registration the files may still change.
    client.put_object(Bucket="models", Key="models/frozen/v1/weights.bin", Body=b"first")
    client.put_object(Bucket="models", Key="models/frozen/v1/weights.bin", Body=b"second")
    pending = mlfs_json("models", "show", "models:/frozen/v1", env=env)
    assert pending["status"] == "PENDING_REGISTRATION"

    mlfs("generate", "s3://models/models/frozen/v1", "-o", tmp_path / "m.json", "-q", env=env)
    client.put_object(Bucket="models", Key="models/frozen/v1/.mlfs/manifest.json",
                      Body=(tmp_path / "m.json").read_bytes())
    assert mlfs_json("models", "show", "models:/frozen/v1", env=env)["status"] == "READY"
    assert "registered version 1 (v1) of model frozen" in _refused(registry_gateway, "models/frozen/v1/weights.bin")
    _refused(registry_gateway, "models/frozen/v1/new-file.bin")

    mlfs("models", "rm", "models:/frozen/v1", env=env)
    client.delete_object(Bucket="models", Key="models/frozen/v1/weights.bin")
    client.delete_object(Bucket="models", Key="models/frozen/v1/.mlfs/manifest.json")
    failed = mlfs("models", "show", "models:/frozen/v1", env=env, check=False)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_concurrent_promotions_leave_one_production_version(registry_gateway: GatewayServer, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_for(registry_gateway)
    for label in ("v1", "v2", "v3"):
        mlfs("push", make_model_dir(tmp_path / label, seed=int(label[1]), shard_mib=1, shards=1),
             "--name", "race", "--version", label, "-q", env=env)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ACCESS_KEY)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET_KEY)
    from mlflow import MlflowClient

    clients = [MlflowClient(tracking_uri=registry_gateway.endpoint, registry_uri=registry_gateway.endpoint)
               for _ in range(3)]
    errors: list[BaseException] = []
    for _round in range(10):
        barrier = threading.Barrier(3, timeout=30)

        def promote(client, version: str, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait()
                client.transition_model_version_stage("race", version, "Production", archive_existing_versions=True)
            except BaseException as exc:  # reported below, on the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=promote, args=(c, str(n + 1))) for n, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        stages = [v.current_stage for v in clients[0].search_model_versions("name = 'race'")]
        assert stages.count("Production") == 1, stages
    doc = mlfs("models", "show", "race", "--json", env=env).stdout
    assert sum(v["stage"] == "Production" for a in json.loads(doc) for v in a["versions"]) == 1
