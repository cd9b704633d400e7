"""The mlfs demo: one machine, nothing but mlfs.

Starts the embedded S3 gateway (`mlfs serve`) on a temporary directory, uploads a small
generated model through it, builds its manifest, mounts it lazily, loads every tensor
with safetensors through the mount, then pushes the model to the registry, promotes it
to production and mounts it by name (`models:/demo-llm@production`), prints timings,
and unmounts.

    make demo            (or: python scripts/demo.py [--keep])
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import botocore.config
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

ACCESS, SECRET = "mlfs-demo", "mlfs-demo-secret-key"


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def run(*args: str, env: dict[str, str]) -> None:
    print("    $", " ".join(args), flush=True)
    subprocess.run(args, env=env, check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(data: Path, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlfs", "serve", "--data", str(data), "--listen", f"127.0.0.1:{port}"]
    print("    $", " ".join(["mlfs", *cmd[3:]]), flush=True)
    with open(log, "wb") as log_fh:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log_fh)
    deadline = time.monotonic() + 30
    while b"listening on" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"demo: mlfs serve did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return proc


def make_model(root: Path) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "demo-llm", "hidden_size": 1024, "layers": 8}))
    (root / "tokenizer.json").write_text(json.dumps({"vocab": {f"tok{i}": i for i in range(5000)}}))
    for shard in range(2):
        tensors = {f"layers.{shard * 4 + i}.mlp.weight": rng.standard_normal((1024, 4096), dtype=np.float32)
                   for i in range(4)}
        save_file(tensors, str(root / f"model-0000{shard + 1}-of-00002.safetensors"))


def load_all(root: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    total = 0
    for shard in sorted(root.glob("*.safetensors")):
        with safe_open(str(shard), "np") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
                total += f.get_tensor(key).nbytes
    return total, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlfs-demo-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(MLFS_ROOT_ACCESS_KEY=ACCESS, MLFS_ROOT_SECRET_KEY=SECRET, AWS_ACCESS_KEY_ID=ACCESS,
               AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
               AWS_EC2_METADATA_DISABLED="true")
    gateway = None
    mnt = work / "mnt"
    try:
        step(f"starting the embedded S3 gateway on 127.0.0.1:{port}")
        gateway = start_gateway(work / "gateway", port, env, work / "gateway.log")

        step("uploading a generated 2-shard safetensors model (128 MiB) through it")
        make_model(work / "model")
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=ACCESS,
                          aws_secret_access_key=SECRET, region_name="us-east-1",
                          config=botocore.config.Config(s3={"addressing_style": "path"}))
        s3.create_bucket(Bucket="models")
        for f in sorted((work / "model").iterdir()):
            s3.upload_file(str(f), "models", f"models/demo-llm/v1/{f.name}")
            print(f"    uploaded s3://models/models/demo-llm/v1/{f.name}")

        step("generating the manifest (whole-file and per-chunk SHA-256)")
        manifest = work / "demo-llm.json"
        run("mlfs", "generate", "s3://models/models/demo-llm/v1/", "-o", str(manifest), env=env)

        step("mounting it lazily (nothing is downloaded yet)")
        mnt.mkdir()
        t0 = time.perf_counter()
        run("mlfs", "mount", str(manifest), str(mnt), "--cache", str(work / "cache"), env=env)
        mount_s = time.perf_counter() - t0
        run("ls", "-l", str(mnt), env=env)

        step("loading every tensor with safetensors through the mount (cold)")
        nbytes, cold_s = load_all(mnt)
        _, warm_s = load_all(mnt)
        local_bytes, local_s = load_all(work / "model")
        assert nbytes == local_bytes
        run("mlfs", "unmount", str(mnt), env=env)

        step("remounting on the gateway's own chunk store: served with zero downloads")
        run("mlfs", "mount", str(manifest), str(mnt), "--cache", str(work / "gateway" / "store"), env=env)
        _, shared_s = load_all(mnt)
        time.sleep(2.2)  # the mount publishes its statistics every 2 s
        stats = json.loads(subprocess.run([sys.executable, "-m", "mlfs", "status", "--json", str(mnt)], env=env,
                                          check=True, capture_output=True, text=True).stdout)
        print(f"    S3 requests made by this mount: {stats['fetch']['requests']}")
        run("mlfs", "unmount", str(mnt), env=env)

        step("the registry: push the model as a version, promote it, mount it by name")
        run("mlfs", "push", str(work / "model"), "--name", "demo-llm", "--version", "v1", "-q", env=env)
        run("mlfs", "models", "promote", "models:/demo-llm/1", "production", env=env)
        run("mlfs", "models", "ls", env=env)
        run("mlfs", "mount", "models:/demo-llm@production", str(mnt), "--cache", str(work / "gateway" / "store"),
            env=env)
        by_name, _ = load_all(mnt)
        assert by_name == nbytes
        print(f"    loaded {by_name / 1e6:.0f} MB of tensors from models:/demo-llm@production")
        run("mlfs", "unmount", str(mnt), env=env)

        step("timings")
        mb = nbytes / 1e6
        print(f"    mount (daemon ready)           {mount_s:6.2f} s")
        print(f"    load {mb:.0f} MB cold via S3        {cold_s:6.2f} s  ({mb / cold_s:7.0f} MB/s)")
        print(f"    load again (page cache)        {warm_s:6.2f} s  ({mb / warm_s:7.0f} MB/s)")
        print(f"    load via shared chunk store    {shared_s:6.2f} s  ({mb / shared_s:7.0f} MB/s)")
        print(f"    load from local disk           {local_s:6.2f} s  ({mb / local_s:7.0f} MB/s)")
        print("\ndemo: the model loaded through the mount, verified chunk by chunk.")
    finally:
        if mnt.exists() and os.path.ismount(mnt):
            subprocess.run([sys.executable, "-m", "mlfs", "unmount", str(mnt)], env=env)
        if gateway is not None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(10)
            except subprocess.TimeoutExpired:
                gateway.kill()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
