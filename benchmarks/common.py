"""Shared benchmark helpers: timing with warm-up and medians, readers, reporting."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

MIB = 1 << 20


def make_random_file(path: Path, size: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 64 * MIB)
            fh.write(rng.bytes(n))
            left -= n


def read_sequential(path: Path, block: int = MIB) -> int:
    """Read a file front to back into one reused buffer; returns bytes read."""
    buf = bytearray(block)
    view = memoryview(buf)
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while n := os.readv(fd, [view]):
            total += n
    finally:
        os.close(fd)
    return total


def drop_caches() -> bool:
    """Write back and drop the page cache (root only); False where that is not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def mbps(seconds: float, nbytes: int) -> float:
    return nbytes / seconds / 1e6


def median_rate(runs: list[tuple[float, int]]) -> float:
    return statistics.median(mbps(s, n) for s, n in runs)


def table(rows: list[tuple[str, float, str]]) -> str:
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {name:<{width}}  {rate:9.1f} MB/s  {note}" for name, rate, note in rows)


def bench_args(doc: str | None) -> argparse.Namespace:
    """The options every benchmark takes: artifact size and number of measured runs."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    return ap.parse_args()


@contextlib.contextmanager
def seaweedfs_workspace(prefix: str) -> Iterator[tuple[Path, object]]:
    """A temp dir and a SeaweedFS server in it with an empty bucket `bench`; both removed after."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.servers import start_seaweedfs

    work = Path(tempfile.mkdtemp(prefix=prefix))
    server = start_seaweedfs(work / "seaweedfs")
    try:
        server.client().create_bucket(Bucket="bench")
        yield work, server
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
