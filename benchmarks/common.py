"""Shared benchmark helpers: timing with warm-up and medians, readers, reporting."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
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
