"""Per-rule counters are exact under concurrent updates and export as JSON and Prometheus."""

from __future__ import annotations

import threading

from mlfs.policy import RuleCounters


def test_counters_are_exact_under_threads() -> None:
    counters = RuleCounters()

    def work() -> None:
        for _ in range(2000):
            counters.matched("a")
            counters.prefetched("a", 10)
            counters.prefetch_used("a", 3)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counters.pinned("b", 100)
    counters.pinned("b", -40)
    assert counters.to_json() == {
        "a": {"matched": 16000, "prefetched_bytes": 160000, "prefetch_used_bytes": 48000, "pinned_bytes": 0},
        "b": {"matched": 0, "prefetched_bytes": 0, "prefetch_used_bytes": 0, "pinned_bytes": 60},
    }


def test_statistics_is_a_snapshot() -> None:
    counters = RuleCounters()
    counters.matched("a")
    snap = counters.statistics()
    counters.matched("a")
    assert snap["a"].matched == 1 and counters.statistics()["a"].matched == 2


def test_prometheus_lines() -> None:
    counters = RuleCounters()
    counters.prefetched("x", 5)
    text = counters.prometheus()
    assert 'mlfs_rule_prefetched_bytes_total{rule="x"} 5' in text
    assert "# TYPE mlfs_rule_pinned_bytes gauge" in text
