"""Per-rule counters: did a rule's prefetching pay off?

Fed from the read path, so every call is one lock and an integer add. 'prefetch_used'
over 'prefetched' is the number to watch: a rule that prefetches bytes nobody reads
costs bandwidth and cache space for nothing.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class RuleStats:
    matched: int = 0  # decisions in which the rule matched
    prefetched_bytes: int = 0  # bytes fetched ahead of reads because of the rule
    prefetch_used_bytes: int = 0  # of those, bytes a reader later read
    pinned_bytes: int = 0  # bytes pinned in the chunk store because of the rule


class RuleCounters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, RuleStats] = {}

    def _get(self, rule_id: str) -> RuleStats:
        stats = self._stats.get(rule_id)
        if stats is None:
            stats = self._stats[rule_id] = RuleStats()
        return stats

    def matched(self, rule_id: str, times: int = 1) -> None:
        with self._lock:
            self._get(rule_id).matched += times

    def prefetched(self, rule_id: str, nbytes: int) -> None:
        with self._lock:
            self._get(rule_id).prefetched_bytes += nbytes

    def prefetch_used(self, rule_id: str, nbytes: int) -> None:
        with self._lock:
            self._get(rule_id).prefetch_used_bytes += nbytes

    def pinned(self, rule_id: str, nbytes: int) -> None:
        """Add (or, with a negative count, remove on unpin) pinned bytes."""
        with self._lock:
            self._get(rule_id).pinned_bytes += nbytes

    def statistics(self) -> dict[str, RuleStats]:
        """A consistent snapshot: copies, safe to keep."""
        with self._lock:
            return {rule_id: RuleStats(**asdict(s)) for rule_id, s in self._stats.items()}

    def to_json(self) -> dict[str, Any]:
        return {rule_id: asdict(s) for rule_id, s in sorted(self.statistics().items())}

    def prometheus(self) -> str:
        """Text exposition lines (mlfs_rule_*_total{rule="id"})."""
        lines = []
        snapshot = sorted(self.statistics().items())
        for metric, attr in (("mlfs_rule_matched_total", "matched"),
                             ("mlfs_rule_prefetched_bytes_total", "prefetched_bytes"),
                             ("mlfs_rule_prefetch_used_bytes_total", "prefetch_used_bytes")):
            lines.append(f"# TYPE {metric} counter")
            lines += [f'{metric}{{rule="{rid}"}} {getattr(s, attr)}' for rid, s in snapshot]
        lines.append("# TYPE mlfs_rule_pinned_bytes gauge")
        lines += [f'mlfs_rule_pinned_bytes{{rule="{rid}"}} {s.pinned_bytes}' for rid, s in snapshot]
        return "\n".join(lines) + "\n"
