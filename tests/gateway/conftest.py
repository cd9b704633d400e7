"""Gateway fixtures: a real `mlfs serve` subprocess, and `s3_backend` over gateway and SeaweedFS."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.gateway.server import GatewayServer, start_gateway
from tests.servers import S3Server, remove_bucket

_names = itertools.count()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    server = start_gateway(tmp_path_factory.mktemp("gateway"), "--anonymous-read", "public-read")
    try:
        yield server
    finally:
        server.stop()
        assert server.process.returncode == 0, f"mlfs serve did not stop cleanly; see {server.log_path}"


@pytest.fixture(params=["gateway", "seaweedfs"])
def s3_backend(request: pytest.FixtureRequest) -> S3Server:
    return request.getfixturevalue(request.param)


@pytest.fixture
def bucket_on(request: pytest.FixtureRequest):
    """Factory: a fresh, empty bucket on a server; emptied and deleted after the test."""
    made: list[tuple[S3Server, str]] = []

    def make(server: S3Server) -> str:
        name = f"t{next(_names)}-{request.node.name.split('[')[0][-30:].replace('_', '-').lower()}".rstrip("-")
        server.client().create_bucket(Bucket=name)
        made.append((server, name))
        return name

    yield make
    for server, name in made:
        remove_bucket(server.client(), name)


@pytest.fixture
def bucket(s3_backend: S3Server, bucket_on) -> str:  # type: ignore[no-untyped-def]
    return bucket_on(s3_backend)
