"""A daemon-mode mount that cannot work says why in the terminal that started it,
exits non-zero and leaves nothing mounted."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from mlfs.fuse.mountpoints import find_mount
from tests.fuse.conftest import Artifact
from tests.gateway.server import start_gateway
from tests.mlfs_cli import mlfs
from tests.servers import free_port


def _fails_with(artifact: Artifact, tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                manifest: Path | None = None) -> str:
    mp = tmp_path / "mnt"
    mp.mkdir(exist_ok=True)
    result = mlfs("mount", manifest or artifact.manifest, mp, "--cache", tmp_path / "cache", *args,
                  env=env or artifact.env, check=False, timeout=120)
    assert result.returncode == 1, result.stderr
    assert find_mount(mp) is None, "a failed mount left something mounted"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlfs: "), result.stderr
    return lines[0]


def test_unreachable_endpoint(artifact: Artifact, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    line = _fails_with(artifact, tmp_path, "--endpoint-url", dead)
    assert line.startswith(f"mlfs: cannot reach S3 at {dead}")


def test_refused_credentials(artifact: Artifact, tmp_path: Path) -> None:
    # SeaweedFS here runs without authentication; `mlfs serve` checks every signature.
    gateway = start_gateway(tmp_path / "gw")
    try:
        client = gateway.client()
        client.create_bucket(Bucket="models")
        client.put_object(Bucket="models", Key="m/v1/config.json", Body=b'{"a": 1}')
        manifest = tmp_path / "gw.json"
        mlfs("generate", "s3://models/m/v1/", "-o", manifest, "-q", env=gateway.env())
        env = dict(gateway.env(), AWS_SECRET_ACCESS_KEY="not-the-secret")
        line = _fails_with(artifact, tmp_path, env=env, manifest=manifest)
    finally:
        gateway.stop()
    assert "refused the credentials for s3://models/m/v1/config.json" in line


def test_missing_bucket(artifact: Artifact, tmp_path: Path) -> None:
    doc = json.loads(artifact.manifest.read_text())
    for f in doc["files"]:
        f["source"]["bucket"] = "no-such-bucket-here"
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(doc))
    line = _fails_with(artifact, tmp_path, manifest=manifest)
    assert line.startswith("mlfs: bucket 'no-such-bucket-here' does not exist")


def test_failure_after_daemonising_reaches_the_terminal(artifact: Artifact, tmp_path: Path) -> None:
    # The metrics port is bound by the daemon, after the fork: its error travels back
    # through the readiness pipe.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        line = _fails_with(artifact, tmp_path, "--metrics-addr", f"127.0.0.1:{port}")
    assert line.startswith(f"mlfs: --metrics-addr 127.0.0.1:{port}: ") and "in use" in line
