"""Gateway vs SeaweedFS S3, same run, same client: 1 GiB PUT and GET, small-object ops/s.

    python benchmarks/gateway_bench.py [--size-mib 1024] [--small 1000] [--rounds 2] [--json out.json]

Both servers run on this machine on loopback ports with data in a temp dir. The client
is boto3 as mlfs uses it (path style, no extra checksums). Large transfers use
s3transfer with 16 MiB parts and 4 threads (upload_file / download_fileobj), plus a
PUT with the AWS CLI's default 8 MiB parts and a single-stream GET; small objects are 4 KiB PUTs then GETs from 8 threads. Each figure
is the best of --rounds runs, rounds alternating between the servers, because the VM
is noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3.s3.transfer  # noqa: E402

from tests.gateway.server import start_gateway  # noqa: E402
from tests.servers import S3Server, start_seaweedfs  # noqa: E402

MiB = 1024 * 1024
TRANSFER = boto3.s3.transfer.TransferConfig(
    multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=4, use_threads=True)


class Discard:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


# The AWS CLI / boto3 default part size: not a multiple of the gateway's 16 MiB chunks,
# so the gateway re-cuts the parts when the upload completes (a second write).
TRANSFER_8MIB = boto3.s3.transfer.TransferConfig(
    multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=4, use_threads=True)


def big_put(server: S3Server, bucket: str, src: Path, config=TRANSFER, key: str = "big") -> float:  # type: ignore[no-untyped-def]
    client = server.client()
    start = time.perf_counter()
    client.upload_file(str(src), bucket, key, Config=config)
    return src.stat().st_size / MiB / (time.perf_counter() - start)


def big_get(server: S3Server, bucket: str, size: int) -> float:
    client = server.client()
    sink = Discard()
    start = time.perf_counter()
    client.download_fileobj(bucket, "big", sink, Config=TRANSFER)
    assert sink.size == size
    return size / MiB / (time.perf_counter() - start)


def big_get_single_stream(server: S3Server, bucket: str, size: int) -> float:
    client = server.client()
    start = time.perf_counter()
    body = client.get_object(Bucket=bucket, Key="big")["Body"]
    got = 0
    while block := body.read(MiB):
        got += len(block)
    assert got == size
    return size / MiB / (time.perf_counter() - start)


def small_ops(server: S3Server, bucket: str, count: int, threads: int = 8) -> tuple[float, float]:
    client = server.client()
    payload = os.urandom(4096)
    keys = [f"small/{i:05d}" for i in range(count)]
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=payload), keys))
        put_rate = count / (time.perf_counter() - start)
        start = time.perf_counter()
        sizes = list(pool.map(lambda k: len(client.get_object(Bucket=bucket, Key=k)["Body"].read()), keys))
        get_rate = count / (time.perf_counter() - start)
    assert sizes == [4096] * count
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda k: client.delete_object(Bucket=bucket, Key=k), keys))
    return put_rate, get_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    size = args.size_mib * MiB
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="mlfs-bench-") as tmp:
        work = Path(tmp)
        src = work / "big.bin"
        block = os.urandom(MiB)
        with open(src, "wb") as fh:
            for i in range(args.size_mib):
                fh.write(block[i % 256:] + block[: i % 256])  # distinct blocks, cheap to make
        servers = {"gateway": start_gateway(work / "gateway"), "seaweedfs": start_seaweedfs(work / "seaweedfs")}
        try:
            for server in servers.values():
                server.client().create_bucket(Bucket="bench")
            for rnd in range(args.rounds):
                order = list(servers.items()) if rnd % 2 == 0 else list(reversed(servers.items()))
                for name, server in order:
                    r = results.setdefault(name, {})
                    r.setdefault("put_MiB_s", []).append(big_put(server, "bench", src))
                    r.setdefault("put_8MiB_parts_MiB_s", []).append(big_put(server, "bench", src, TRANSFER_8MIB, "big8"))
                    server.client().delete_object(Bucket="bench", Key="big8")
                    r.setdefault("get_MiB_s", []).append(big_get(server, "bench", size))
                    r.setdefault("get_single_stream_MiB_s", []).append(big_get_single_stream(server, "bench", size))
                    put_rate, get_rate = small_ops(server, "bench", args.small)
                    r.setdefault("small_put_ops_s", []).append(put_rate)
                    r.setdefault("small_get_ops_s", []).append(get_rate)
                    print(f"round {rnd + 1} {name}: " + ", ".join(f"{k}={v[-1]:.0f}" for k, v in r.items()), flush=True)
        finally:
            for server in servers.values():
                server.stop()
    print()
    print(f"{'metric':28s} {'gateway':>10s} {'seaweedfs':>10s} {'ratio':>7s}   (best of {args.rounds}; median in brackets)")
    summary = {}
    for metric in results["gateway"]:
        g, s = max(results["gateway"][metric]), max(results["seaweedfs"][metric])
        summary[metric] = {"gateway": g, "seaweedfs": s, "ratio": g / s,
                           "gateway_median": statistics.median(results["gateway"][metric]),
                           "seaweedfs_median": statistics.median(results["seaweedfs"][metric])}
        print(f"{metric:28s} {g:10.0f} {s:10.0f} {g / s:6.2f}x   [{summary[metric]['gateway_median']:.0f} / "
              f"{summary[metric]['seaweedfs_median']:.0f}]")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
