"""The rest of the MLflow surface, driven by the stock client against a real gateway:
create/update/rename/delete registered models, create (from objects already on the
gateway), update and delete model versions, tag and alias removal, pagination."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from tests.gateway.server import GatewayServer
from tests.registry.conftest import make_model_dir

pytestmark = [pytest.mark.s3]


def test_mlflow_client_manages_models_and_versions(registry_gateway: GatewayServer, mlflow_client,
                                                   tmp_path: Path) -> None:
    client = mlflow_client
    local = make_model_dir(tmp_path / "m", shard_mib=1, shards=1)
    s3 = registry_gateway.client()
    client.create_registered_model("from-mlflow", tags={"team": "vision"}, description="made by MLflow")
    with pytest.raises(MlflowException, match="already exists"):
        client.create_registered_model("from-mlflow")
    for f in sorted(local.iterdir()):
        s3.put_object(Bucket="models", Key=f"models/from-mlflow/v7/{f.name}", Body=f.read_bytes())
    version = client.create_model_version("from-mlflow", "s3://models/models/from-mlflow/v7/",
                                          tags={"source": "test"}, description="first")
    assert (version.version, version.status, version.tags) == ("1", "READY", {"source": "test"})
    # Created from objects on the gateway: the version is registered, hence immutable.
    with pytest.raises(Exception, match="AccessDenied"):
        s3.put_object(Bucket="models", Key="models/from-mlflow/v7/config.json", Body=b"{}")

    client.update_registered_model("from-mlflow", description="renamed soon")
    client.rename_registered_model("from-mlflow", "renamed-model")
    model = client.get_registered_model("renamed-model")
    assert (model.description, model.tags) == ("renamed soon", {"team": "vision"})
    with pytest.raises(MlflowException, match="does not exist"):
        client.get_registered_model("from-mlflow")

    client.update_model_version("renamed-model", "1", description="updated")
    client.set_registered_model_alias("renamed-model", "candidate", "1")
    client.delete_registered_model_alias("renamed-model", "candidate")
    with pytest.raises(MlflowException, match="no alias"):
        client.get_model_version_by_alias("renamed-model", "candidate")
    client.delete_model_version_tag("renamed-model", "1", "source")
    client.delete_registered_model_tag("renamed-model", "team")
    got = client.get_model_version("renamed-model", "1")
    assert (got.description, got.tags) == ("updated", {})

    client.create_registered_model("second-model")
    page = client.search_registered_models(max_results=1)
    assert [m.name for m in page] == ["renamed-model"] and page.token
    rest = client.search_registered_models(max_results=1, page_token=page.token)
    assert [m.name for m in rest] == ["second-model"] and not rest.token

    client.delete_model_version("renamed-model", "1")
    s3.put_object(Bucket="models", Key="models/from-mlflow/v7/config.json", Body=b"{}")  # writable again
    client.delete_registered_model("renamed-model")
    assert [m.name for m in client.search_registered_models(filter_string="name = 'renamed-model'")] == []
