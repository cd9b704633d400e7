"""The container image, run as users run it: `make test-image` builds it (podman + runc,
local Debian base) and runs these tests against SeaweedFS on loopback.

    podman run --device /dev/fuse --cap-add SYS_ADMIN --network host IMAGE \\
        mount /work/m.json /mnt/model --mkdir -- python3 /work/verify.py ...
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.mlfs_cli import mlfs
from tests.servers import S3Server

IMAGE = os.environ.get("MLFS_IMAGE", "localhost/mlfs:latest")

# Runs inside the container: checks every byte of every file against the manifest.
VERIFY = """
import hashlib, json, sys
mp, manifest = sys.argv[1], json.load(open(sys.argv[2]))
for f in manifest["files"]:
    try:
        with open(f"{mp}/{f['path']}", "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        sys.exit(f"reader: {f['path']}: {exc.strerror}")
    if digest != f["sha256"]:
        sys.exit(f"reader: {f['path']}: wrong bytes")
print(f"reader: verified {len(manifest['files'])} files")
"""


def podman(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    if shutil.which("podman") is None:
        raise RuntimeError("podman is not installed: run `make test-image` (it installs podman, runc, debootstrap)")
    return subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True, timeout=timeout)


def run_image(work: Path, server: S3Server, *args: str, detach: str | None = None) -> subprocess.CompletedProcess:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    env = server.env()
    how = ("-d", "--name", detach) if detach else ("--rm",)
    return podman(
        "run", *how, "--network", "host", "--device", "/dev/fuse", "--cap-add", "SYS_ADMIN",
        # This machine grants less than podman's default limits.
        "--ulimit", f"nofile={hard}:{hard}", "--ulimit", "nproc=4096:4096",
        "-v", f"{work}:/work:ro",
        "-e", f"AWS_ENDPOINT_URL={env['AWS_ENDPOINT_URL']}", "-e", f"AWS_ACCESS_KEY_ID={env['AWS_ACCESS_KEY_ID']}",
        "-e", f"AWS_SECRET_ACCESS_KEY={env['AWS_SECRET_ACCESS_KEY']}", "-e", "AWS_REGION=us-east-1",
        IMAGE, *args)


@pytest.fixture(scope="module")
def image() -> str:
    found = podman("image", "inspect", "--format", "{{.Size}}", IMAGE)
    assert found.returncode == 0, f"image {IMAGE} not built (make image): {found.stderr.strip()}"
    print(f"\nimage {IMAGE}: {int(found.stdout.strip()) / 1e6:.0f} MB")
    return IMAGE


def test_image_has_no_compilers(image: str) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    found = podman("run", "--rm", "--ulimit", f"nofile={hard}:{hard}", "--ulimit", "nproc=4096:4096",
                   "--entrypoint", "sh", image, "-c", "command -v gcc cc c++ g++ clang || echo none")
    assert found.stdout.strip() == "none", found.stdout + found.stderr


def test_container_mounts_runs_a_reader_and_fails_on_a_changed_object(
        image: str, seaweedfs: S3Server, tmp_path: Path) -> None:
    client = seaweedfs.client()
    client.create_bucket(Bucket="image-test")
    rng = np.random.default_rng(7)
    files = {"config.json": b'{"layers": 2}', "weights.bin": rng.bytes(3 * (1 << 20) + 123),
             "shards/part-0.bin": rng.bytes(1 << 20)}
    for path, data in files.items():
        client.put_object(Bucket="image-test", Key=f"models/img/v1/{path}", Body=data)
    work = tmp_path / "work"
    work.mkdir()
    mlfs("generate", "s3://image-test/models/img/v1/", "-o", work / "m.json", "--chunk-size", "1M", "-q",
         env=seaweedfs.env())
    (work / "verify.py").write_text(VERIFY)
    command = ("mount", "/work/m.json", "/mnt/model", "--mkdir", "--cache", "/tmp/cache",
               "--", "python3", "/work/verify.py", "/mnt/model", "/work/m.json")

    good = run_image(work, seaweedfs, *command)
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == "reader: verified 3 files"

    client.put_object(Bucket="image-test", Key="models/img/v1/weights.bin", Body=rng.bytes(len(files["weights.bin"])))
    changed = run_image(work, seaweedfs, *command)
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert "reader: weights.bin: Stale file handle" in changed.stderr
    assert json.loads((work / "m.json").read_text())["name"] == "img"


def test_mlfs_as_pid_1_stays_in_the_foreground_until_stopped(
        image: str, seaweedfs: S3Server, tmp_path: Path) -> None:
    client = seaweedfs.client()
    client.create_bucket(Bucket="image-sidecar")
    client.put_object(Bucket="image-sidecar", Key="models/side/v1/w.bin", Body=np.random.default_rng(3).bytes(1 << 20))
    work = tmp_path / "work"
    work.mkdir()
    mlfs("generate", "s3://image-sidecar/models/side/v1/", "-o", work / "m.json", "-q", env=seaweedfs.env())
    (work / "verify.py").write_text(VERIFY)
    name = f"mlfs-test-{os.getpid()}"
    started = run_image(work, seaweedfs, "mount", "/work/m.json", "/mnt/model", "--mkdir", detach=name)
    assert started.returncode == 0, started.stderr
    try:
        # Without --foreground: as PID 1, mlfs does not daemonise, so the container lives on.
        deadline = time.monotonic() + 120
        while True:
            check = podman("exec", name, "python3", "/work/verify.py", "/mnt/model", "/work/m.json")
            if check.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert check.stdout.strip() == "reader: verified 1 files", check.stderr
        assert podman("stop", "-t", "30", name).returncode == 0
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name)
        assert code.stdout.strip() == "0", podman("logs", name).stderr
    finally:
        podman("rm", "-f", name)
