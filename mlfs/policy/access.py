"""Classify how one reader reads one file: sequential, strided or random.

The same classifier serves the mount (per open file) and `mlfs rules test` (replaying
a trace), so a replay shows the decisions a mount would have made.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from mlfs.policy.context import AccessContext

# Kernel read-ahead and page-sized reads reorder a sequential stream a little;
# a gap this small still counts as 'next to the previous read'.
SEQUENTIAL_SLACK = 128 * 1024
MAX_PIDS = 64


class AccessTracker:
    """Remembers the last few reads of one file (not thread-safe: one per reader)."""

    def __init__(self, window: int = 8, clock: Callable[[], float] = time.monotonic) -> None:
        self._reads: deque[tuple[float, int, int]] = deque(maxlen=window)  # (t, offset, size)
        self._pids: set[int] = set()
        self._bytes = 0
        self._clock = clock

    def record(self, offset: int, size: int, pid: int | None = None, now: float | None = None) -> None:
        self._reads.append((self._clock() if now is None else now, offset, size))
        self._bytes += size
        if pid is not None and len(self._pids) < MAX_PIDS:
            self._pids.add(pid)

    def pattern(self) -> str:
        reads = list(self._reads)
        if len(reads) < 2:
            # One read from the start of the file is how every sequential reader begins.
            return "sequential" if reads and reads[0][1] == 0 else "unknown"
        gaps = [cur[1] - (prev[1] + prev[2]) for prev, cur in zip(reads, reads[1:], strict=False)]
        sequential = sum(1 for g in gaps if -SEQUENTIAL_SLACK <= g <= SEQUENTIAL_SLACK)
        if sequential * 4 >= len(gaps) * 3:
            return "sequential"
        strides = {cur[1] - prev[1] for prev, cur in zip(reads, reads[1:], strict=False)}
        if len(gaps) >= 2 and len(strides) == 1:
            return "strided"
        return "random"

    def context(self) -> AccessContext:
        reads = self._reads
        rate = 0.0
        if len(reads) >= 2:
            span = reads[-1][0] - reads[0][0]
            rate = (len(reads) - 1) / span if span > 0 else float(len(reads))
        return AccessContext(
            pattern=self.pattern(),
            bytes_read=self._bytes,
            reads_per_second=rate,
            processes=max(1, len(self._pids)),
        )
