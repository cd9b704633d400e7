"""Cold load of every tensor of an 8-shard safetensors model (1 GiB): through a mount
with the default rules, through a mount with no rules, and download-then-load, in one run.

    python benchmarks/policy_bench.py [--size-mib 1024] [--runs 3]

Each figure is the median of --runs runs after a warm-up run; every run starts from an
empty chunk store (mount) or an empty directory (download). Nothing is asserted.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3.s3.transfer
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import bench_args, seaweedfs_workspace  # noqa: E402
from tests.mlfs_cli import mlfs, mounted  # noqa: E402

MIB = 1 << 20
SHARDS = 8


def make_model(root: Path, size: int) -> None:
    rng = np.random.default_rng(3)
    per_shard = size // SHARDS
    tensors_per_shard = 8
    elems = per_shard // tensors_per_shard // 4
    for s in range(SHARDS):
        tensors = {f"layers.{s}.t{i}": rng.standard_normal(elems, dtype=np.float32) for i in range(tensors_per_shard)}
        save_file(tensors, str(root / f"model-{s + 1:05d}-of-{SHARDS:05d}.safetensors"))
    (root / "config.json").write_text('{"model_type": "bench"}')


def load_all(root: Path) -> int:
    total = 0
    for shard in sorted(root.glob("*.safetensors")):
        with safe_open(str(shard), "np") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
                total += int(f.get_tensor(key).sum() != 0) + 0 * total  # touch every byte
    return total


def download(client, bucket: str, prefix: str, dest: Path) -> None:
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    config = boto3.s3.transfer.TransferConfig(max_concurrency=8, multipart_chunksize=16 * MIB)

    def one(key: str) -> None:
        client.download_file(bucket, key, str(dest / key[len(prefix):]), Config=config)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, keys))


def main() -> None:
    args = bench_args(__doc__)
    with seaweedfs_workspace("mlfs-policy-bench-") as (work, server):
        env = server.env()
        client = server.client()
        src = work / "model"
        src.mkdir()
        make_model(src, args.size_mib * MIB)
        for f in sorted(src.iterdir()):
            client.upload_file(str(f), "bench", f"llm/v1/{f.name}")
        manifest = work / "llm.json"
        mlfs("generate", "s3://bench/llm/v1/", "-o", manifest, "-q", env=env)

        results: dict[str, list[float]] = {"mount, default rules": [], "mount, no rules": [],
                                           "download then load": []}
        for run in range(args.runs + 1):
            for label, extra in (("mount, default rules", []), ("mount, no rules", ["--no-policy"])):
                cache = work / "cache"
                t0 = time.perf_counter()
                with mounted(manifest, work / "mnt", env, "--cache", cache, *extra) as mp:
                    load_all(mp)
                    elapsed = time.perf_counter() - t0
                shutil.rmtree(cache)
                if run:
                    results[label].append(elapsed)
            dest = work / "downloaded"
            dest.mkdir()
            t0 = time.perf_counter()
            download(client, "bench", "llm/v1/", dest)
            load_all(dest)
            elapsed = time.perf_counter() - t0
            shutil.rmtree(dest)
            if run:
                results["download then load"].append(elapsed)

        base = statistics.median(results["download then load"])
        print(f"\n{SHARDS}-shard safetensors model, {args.size_mib} MiB, cold, median of {args.runs} runs")
        for label, times in results.items():
            med = statistics.median(times)
            print(f"  {label:<22} {med:7.2f} s   {med / base:5.2f}x download-then-load")


if __name__ == "__main__":
    main()
