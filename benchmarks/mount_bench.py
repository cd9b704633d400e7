"""Cold and warm sequential reads of a 1 GiB file through an mlfs mount, side by side with
raw parallel boto3 range GETs of the same object and a local page-cache read, in one run.

    python benchmarks/mount_bench.py [--size-mib 1024] [--runs 3]

Each figure is the median of --runs runs after one warm-up run (the machine's first
touch of fresh memory is slow). Nothing is asserted: the numbers are for reading.
"""

from __future__ import annotations

import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    MIB,
    bench_args,
    make_random_file,
    median_rate,
    read_sequential,
    seaweedfs_workspace,
    table,
    timed,
)
from tests.mlfs_cli import mlfs, mounted  # noqa: E402


def raw_parallel_get(client, bucket: str, key: str, size: int, threads: int = 16, part: int = 16 * MIB) -> int:
    def get(off: int) -> int:
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={off}-{min(off + part, size) - 1}")["Body"]
        n = 0
        while block := body.read(MIB):
            n += len(block)
        return n

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(get, range(0, size, part)))


def main() -> None:
    args = bench_args(__doc__)
    size = args.size_mib * MIB
    with seaweedfs_workspace("mlfs-bench-") as (work, server):
        env = server.env()
        client = server.client()
        local = work / "big.bin"
        make_random_file(local, size)
        client.upload_file(str(local), "bench", "big/v1/big.bin")
        manifest = work / "big.json"
        mlfs("generate", "s3://bench/big/v1/", "-o", manifest, "-q", env=env)

        raw = [timed(lambda: raw_parallel_get(client, "bench", "big/v1/big.bin", size)) for _ in range(args.runs + 1)][1:]

        cold, warm, store_warm = [], [], []
        for i in range(args.runs + 1):
            cache = work / f"cache{i}"
            with mounted(manifest, work / "mnt", env, "--cache", cache) as mp:
                c = timed(lambda: read_sequential(mp / "big.bin"))
                # Warm: re-reads served by the kernel page cache; the median of three.
                w = sorted((timed(lambda: read_sequential(mp / "big.bin")) for _ in range(3)),
                           key=lambda t: t[0])[1]
            with mounted(manifest, work / "mnt", env, "--cache", cache) as mp:
                s = timed(lambda: read_sequential(mp / "big.bin"))
            shutil.rmtree(cache)
            if i:  # run 0 is the warm-up
                cold.append(c)
                warm.append(w)
                store_warm.append(s)

        read_sequential(local)
        page = [timed(lambda: read_sequential(local)) for _ in range(args.runs + 1)][1:]

        r_raw, r_cold = median_rate(raw), median_rate(cold)
        r_page, r_warm = median_rate(page), median_rate(warm)
        r_store = median_rate(store_warm)
        print(f"\n1 file of {args.size_mib} MiB, median of {args.runs} runs, {time.strftime('%Y-%m-%d %H:%M')}")
        print(table([
            ("raw boto3 parallel range GETs", r_raw, "(16 threads x 16 MiB)"),
            ("mlfs cold (empty chunk store)", r_cold, f"{r_cold / r_raw:.2f}x raw"),
            ("mlfs warm (kernel page cache)", r_warm, f"{r_warm / r_page:.2f}x local page cache"),
            ("mlfs remount (chunk store hit)", r_store, f"{r_store / r_page:.2f}x local page cache"),
            ("local file, page cache", r_page, ""),
        ]))


if __name__ == "__main__":
    main()
