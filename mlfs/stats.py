"""Plain counters that components keep and expose through their `statistics()`.

Metrics exporters and `mlfs status` read these snapshots; nothing here knows about
Prometheus or any output format.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Seconds; from a page-cache-hot local store up to a slow WAN fetch of a 16 MiB chunk.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Histogram:
    """Counts of observations per upper bound (not cumulative), plus their sum."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total)

    def plus(self, other: Histogram) -> Histogram:
        return Histogram(self.bounds, [a + b for a, b in zip(self.counts, other.counts, strict=True)],
                         self.total + other.total)
