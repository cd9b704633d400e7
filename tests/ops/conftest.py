"""Operations tests: the FUSE tests' demo artifact, uploaded to a bucket of their own.

(Importing the FUSE tests' session fixture here would create it a second time in the
same SeaweedFS, so the tree is rebuilt under another bucket instead.)
"""

from __future__ import annotations

import pytest

from tests.fuse.conftest import Artifact, build_artifact
from tests.mlfs_cli import require_fuse
from tests.servers import S3Server


@pytest.fixture(scope="session")
def ops_artifact(seaweedfs: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    require_fuse()
    return build_artifact(seaweedfs, tmp_path_factory.mktemp("ops-artifact"), "ops-artifacts",
                          [{"path": "latest.safetensors", "target": "model.safetensors"}])


@pytest.fixture
def artifact(ops_artifact: Artifact) -> Artifact:
    return ops_artifact


