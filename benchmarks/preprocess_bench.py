"""Preprocessing runner: images/s with 2 worker processes vs a plain single-process Pillow
loop doing the same steps on the same images, and a cached re-run vs the first run
(local directories, and a real `mlfs serve` holding the images).

    python benchmarks/preprocess_bench.py [--images 600] [--runs 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import drop_caches  # noqa: E402
from mlfs.preprocess.cache import ResultCache  # noqa: E402
from mlfs.preprocess.locations import LocalInput, LocalOutput, S3Input, S3Output  # noqa: E402
from mlfs.preprocess.pipeline import load_pipeline  # noqa: E402
from mlfs.preprocess.runner import Run  # noqa: E402
from mlfs.store.chunks import _MIN_FREE_FRACTION, ChunkStore  # noqa: E402

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def make_images(root: Path, count: int) -> None:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for i in range(count):
        w, h = 320 + (i % 7) * 8, 240 + (i % 5) * 8
        base = np.linspace(0, 200, w)[None, :, None] + rng.integers(0, 55, (h, w, 3))
        Image.fromarray(base.astype(np.uint8)).save(root / f"img-{i:05d}.jpg", quality=90)


def plain_loop(src: Path, out: Path) -> int:
    """imagenet-224 written directly: decode, shorter side 256, center crop 224, normalize, CHW, .npy."""
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for path in sorted(src.iterdir()):
        img = Image.open(path).convert("RGB")
        w, h = img.size
        size = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
        img = img.resize(size, Image.Resampling.BILINEAR)
        left, top = (img.width - 224) // 2, (img.height - 224) // 2
        arr = np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.float64)
        arr = ((arr / 255.0 - MEAN) / STD).astype(np.float32).transpose(2, 0, 1)
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        (out / (path.stem + ".npy")).write_bytes(buf.getvalue())
        n += 1
    return n


def runner(src: Path, out: Path, cache: Path, workers: int = 2) -> tuple[int, int]:
    stats = Run(load_pipeline("imagenet-224"), LocalInput(str(src)), LocalOutput(str(out)),
                ResultCache(ChunkStore(cache)), workers=workers).run()
    assert stats.failed == 0, stats.failures[:3]
    return stats.done + stats.cached, stats.decoded


def timed(fn, *args) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    # Every timed run starts with a cold page cache: its inputs (and a re-run's cached
    # results) come from the disk, as on a machine that has not just made them. The
    # write-back first also keeps earlier rounds' outputs from slowing whichever run
    # meets them (a gateway's fsyncs queue behind gigabytes of them); where the cache
    # cannot be dropped (not root), that write-back still happens.
    drop_caches()
    t0 = time.perf_counter()
    result = fn(*args)
    n = result[0] if isinstance(result, tuple) else result
    return time.perf_counter() - t0, n


def own_cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def creation_cost(where: Path, dirs: int = 8, files: int = 64) -> float:
    """CPU microseconds to create one empty file here: the worst of `dirs` new
    directories (the files stay until the end).

    On ext4 without a journal, a file created within minutes of many deletions pays for
    a scan past every recently deleted inode of its block group (measured: 0.1 to 0.5 ms
    instead of 20 µs). New directories are spread over block groups, so one probe
    directory can miss what the run's own directories will meet. The runner creates two
    files an image (cache chunk and output) where the plain loop creates one, so such a
    disk moves the ratio; this is printed with the figures so that a run can be judged.
    """
    worst = 0.0
    for d in range(dirs):
        sub = where / f"d{d}"
        sub.mkdir(parents=True)
        t0 = time.process_time()
        for i in range(files):
            os.close(os.open(sub / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        worst = max(worst, (time.process_time() - t0) / files * 1e6)
    return worst


def settled_creation_cost(work: Path, normal: float = 100.0, limit: float = 420.0) -> tuple[float, float]:
    """File creation cost here, after waiting (up to `limit` seconds) for it to fall to
    `normal` µs: an earlier run's cleanup (this benchmark's, or a test suite's) slows
    every creation for up to six minutes (one, plus five while the deleted inodes'
    table block is not yet written back), and would charge the side that creates more
    files for deletions that are neither side's work. Returns (cost, seconds waited)."""
    started = time.monotonic()
    for probe in range(1000):
        cost = creation_cost(work / f"creation-probe-{probe}")
        waited = time.monotonic() - started
        if cost <= normal or waited >= limit:
            return cost, waited
        time.sleep(10)
    return cost, waited


def local_bench(work: Path, images: int, runs: int) -> None:
    src = work / "src"
    make_images(src, images)
    os.sync()
    creation, waited = settled_creation_cost(work)
    plain, pooled, cached = [], [], []
    plain_cpu: list[tuple[float, float]] = []  # (user, system) seconds an image
    cold = drop_caches()  # True where each timed run can start with a cold page cache
    timed(plain_loop, src, work / "warm")  # warm-up: imports, first allocations
    for r in range(runs):
        # Interleaved, so both peers see the same machine load.
        before = own_cpu()
        plain.append(timed(plain_loop, src, work / f"plain-{r}"))
        plain_cpu.append(tuple((b - a) / images for a, b in zip(before, own_cpu(), strict=True)))
        pooled.append(timed(runner, src, work / f"runner-{r}", work / f"cache-{r}"))
        # Nothing is deleted until the end: on a journal-less ext4 every file created
        # soon after thousands were deleted pays for a scan past the deleted inodes,
        # which would charge whichever side creates more files for the harness's cleanup.
    for r in range(runs):
        # The cached re-runs come after every cold round, so that the cold rounds
        # alternate the two peers and nothing else (each re-run reads 360 MB of results).
        cached.append(timed(runner, src, work / f"runner-{r}", work / f"cache-{r}"))
    rate = lambda rs: statistics.median(n / s for s, n in rs)  # noqa: E731
    p, w, c = rate(plain), rate(pooled), rate(cached)
    # Each round's runner against the plain loop run just before it: the spread shows
    # how much the machine's state moved the ratio during the run.
    pairs = sorted(ps / rs for (ps, _), (rs, _) in zip(plain, pooled, strict=True))
    user, system = (statistics.median(x[i] for x in plain_cpu) * 1e3 for i in (0, 1))
    print(f"local directories, {images} JPEGs ~330x250 → imagenet-224 (.npy), median of {runs}, "
          f"{'page cache dropped before each timed run' if cold else 'page cache NOT dropped (not root)'}:")
    print(f"  (creating a file here costs {creation:.0f} µs of CPU, after waiting {waited:.0f} s for it to settle; "
          f"with no recent mass deletions, ~20-60 µs)")
    disk = shutil.disk_usage(work)
    if disk.free < disk.total * 0.1:
        print(f"  (warning: only {disk.free / disk.total:.0%} of this disk is free; below "
              f"{_MIN_FREE_FRACTION:.0%} the result cache evicts as it stores)")
    print(f"  (the plain loop used {user:.2f} ms of user and {system:.2f} ms of system CPU an image; system time "
          f"above ~0.5 ms means this VM was slow to hand it fresh memory)")
    print(f"  plain Pillow loop, 1 process   {p:8.1f} images/s")
    print(f"  runner, 2 workers, cold cache  {w:8.1f} images/s   {w / p:5.2f}x the plain loop "
          f"(rounds: {pairs[0]:.2f}x to {pairs[-1]:.2f}x)")
    print("  each round, images/s (plain loop → runner): " + ", ".join(
        f"{n / ps:.0f} → {m / rs:.0f}" for (ps, n), (rs, m) in zip(plain, pooled, strict=True)))
    print(f"  runner, cached re-run          {c:8.1f} images/s   {c / w:5.1f}x the first run")


def gateway_bench(work: Path, images: int, runs: int) -> None:
    from tests.gateway.server import start_gateway

    server = start_gateway(work / "gw")
    try:
        client = server.client()
        client.create_bucket(Bucket="bench")
        src = work / "gw-src"
        make_images(src, images)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda p: client.upload_file(str(p), "bench", f"datasets/raw/v1/{p.name}"),
                          sorted(src.iterdir())))
        store = ChunkStore(server.data_dir / "store")
        firsts, agains = [], []
        for r in range(runs):
            pipeline = load_pipeline("imagenet-224", [f"normalize.scale={255 + r}"])  # a new pipeline each round

            def go(pipeline=pipeline, r=r) -> tuple[int, int]:  # type: ignore[no-untyped-def]
                stats = Run(pipeline, S3Input(client, "s3://bench/datasets/raw/v1/"),
                            S3Output(client, f"s3://bench/datasets/out{r}/v1/"), ResultCache(store), workers=2).run()
                return stats.done + stats.cached, stats.decoded

            firsts.append(timed(go))
            agains.append(timed(go))
        first = statistics.median(s for s, _ in firsts)
        again = statistics.median(s for s, _ in agains)
        print(f"mlfs serve holding {images} JPEGs → imagenet-224 outputs on the gateway, median of {runs}:")
        print(f"  first run {first:7.2f} s ({images / first:7.1f} images/s); cached re-run {again:6.2f} s "
              f"({images / again:7.1f} images/s): {first / again:5.1f}x")
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", help="scratch directory on the disk to measure [the system's temp directory]")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlfs-pp-bench-", dir=args.dir))
    try:
        local_bench(work, args.images, args.runs)
        gateway_bench(work, args.images, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
