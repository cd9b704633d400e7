"""A SeaweedFS cluster on loopback: 1 master, N volume servers, a filer with S3.

The single-process `weed server` of tests/servers.py cannot lose a volume server; this
one can, which is what the scale-out test needs. Every process binds 127.0.0.1 on free
ports with data in a temp dir.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import S3Server, free_port, stop_process, weed_binary


@dataclass
class SeaweedCluster:
    s3: S3Server
    master: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def volume_servers(self) -> list[str]:
        return sorted(n for n in self.processes if n.startswith("volume"))

    def data_nodes(self) -> int:
        doc = json.loads(urllib.request.urlopen(f"{self.master}/dir/status", timeout=5).read())
        return sum(len(rack.get("DataNodes") or []) for dc in doc["Topology"].get("DataCenters") or []
                   for rack in dc.get("Racks") or [])

    def kill(self, name: str) -> None:
        proc = self.processes[name]
        proc.kill()
        proc.wait(10)

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            stop_process(self.processes[name], 2)
        self.s3.stop()  # already stopped: removes the unix socket it leaves behind


def _spawn(workdir: Path, name: str, args: list[str]) -> subprocess.Popen:
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([weed_binary(), f"-logdir={workdir}", *args], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    return proc


def start_cluster(workdir: Path, volumes: int = 3, replication: str = "001", timeout: float = 90) -> SeaweedCluster:
    workdir.mkdir(parents=True, exist_ok=True)
    mport, mgrpc = free_port(), free_port()
    master = f"127.0.0.1:{mport}.{mgrpc}"
    procs: dict[str, subprocess.Popen] = {}
    (workdir / "master").mkdir()
    procs["master"] = _spawn(workdir, "master", [
        "master", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={mport}", f"-port.grpc={mgrpc}",
        f"-mdir={workdir / 'master'}", f"-defaultReplication={replication}", "-volumeSizeLimitMB=64",
        "-telemetry=false", "-peers=none"])
    for i in range(volumes):
        d = workdir / f"volume{i}"
        d.mkdir()
        procs[f"volume{i}"] = _spawn(workdir, f"volume{i}", [
            "volume", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={free_port()}", f"-port.grpc={free_port()}",
            f"-dir={d}", f"-mserver={master}", "-max=20", "-dataCenter=dc1", "-rack=rack1"])
    fport, fgrpc, s3port = free_port(), free_port(), free_port()
    procs["filer"] = _spawn(workdir, "filer", [
        "filer", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={fport}", f"-port.grpc={fgrpc}",
        f"-master={master}", f"-defaultReplicaPlacement={replication}", "-maxMB=1",
        # The filer's embedded store defaults to the current directory.
        f"-defaultStoreDir={workdir}"])
    procs["s3"] = _spawn(workdir, "s3", [
        "s3", "-ip.bind=127.0.0.1", f"-port={s3port}", f"-port.grpc={free_port()}",
        f"-filer=127.0.0.1:{fport}.{fgrpc}", "-port.iceberg=0", "-port.lance=0"])
    server = S3Server(endpoint=f"http://127.0.0.1:{s3port}", process=procs["s3"],
                      log_path=workdir / "s3.log", name="seaweedfs-cluster", ports=(s3port,))
    cluster = SeaweedCluster(server, f"http://127.0.0.1:{mport}", procs)
    client = server.client()
    deadline = time.monotonic() + timeout
    while True:
        dead = [n for n, p in procs.items() if p.poll() is not None]
        if dead:
            cluster.stop()
            raise RuntimeError(f"SeaweedFS {dead} exited early; see {workdir}")
        try:
            if cluster.data_nodes() == volumes:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket="mlfs-readiness")
                client.put_object(Bucket="mlfs-readiness", Key="probe", Body=b"ok")
                break
        except Exception as exc:
            last = exc
        else:
            last = f"{cluster.data_nodes()} of {volumes} volume servers registered"
        if time.monotonic() > deadline:
            cluster.stop()
            raise RuntimeError(f"SeaweedFS cluster not ready in {timeout}s ({last}); see {workdir}")
        time.sleep(0.25)
    return cluster
