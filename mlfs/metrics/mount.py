"""Metrics of one mount, read from `MountSession.statistics()` at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector


class MountCollector(Collector):
    def __init__(self, statistics: Callable[[], dict[str, Any]]) -> None:
        self._statistics = statistics

    def collect(self) -> Iterator[Any]:
        doc = self._statistics()
        fetch = doc.get("fetch") or {}
        store = doc.get("store") or {}
        files = doc.get("files") or {}
        manifest = doc.get("manifest") or {}

        yield InfoMetricFamily("mlfs_mount", "The artifact this mount serves.", value={
            "mountpoint": str(doc.get("mountpoint", "")), "manifest": str(manifest.get("name") or ""),
            "version": str(manifest.get("version") or "")})
        yield _counter("mlfs_served_bytes", "Bytes returned to readers of the mount.", files.get("bytes_served", 0))
        yield _counter("mlfs_fetched_bytes", "Verified bytes downloaded from S3.", fetch.get("bytes", 0))
        yield _counter("mlfs_fetch_requests", "Range GET requests sent to S3 (attempts).", fetch.get("requests", 0))
        yield _counter("mlfs_fetch_retries", "Chunk fetch attempts that were retried.", fetch.get("retries", 0))
        errors = CounterMetricFamily("mlfs_fetch_errors", "Chunk fetches that failed, by kind.", labels=["kind"])
        for kind in ("unavailable", "http", "object_changed", "integrity"):
            errors.add_metric([kind], (fetch.get("errors") or {}).get(kind, 0))
        yield errors
        yield _counter("mlfs_integrity_failures", "Fetched chunks whose SHA-256 did not match the manifest.",
                       fetch.get("integrity_failures", 0))
        yield _counter("mlfs_store_hits", "Chunk uses served from the chunk store.", fetch.get("store_hits", 0))
        yield _counter("mlfs_store_misses", "Chunk uses that needed a download.", fetch.get("store_misses", 0))
        yield _counter("mlfs_store_evictions", "Chunks evicted from the store by this process.",
                       store.get("evicted_chunks", 0))
        yield GaugeMetricFamily("mlfs_store_size_bytes", "Bytes of chunks in the store.", value=store.get("bytes", 0))
        if store.get("budget") is not None:
            yield GaugeMetricFamily("mlfs_store_budget_bytes", "Store size budget.", value=store["budget"])
        latency = fetch.get("latency")
        if latency:
            yield _histogram("mlfs_fetch_duration_seconds", "Time to fetch and verify one chunk.", latency)
        yield GaugeMetricFamily("mlfs_read_ahead_window_chunks", "Largest read-ahead window of an open file.",
                                value=files.get("read_ahead_window_max", 0))
        yield GaugeMetricFamily("mlfs_open_files", "Files open on the mount.", value=files.get("open_files", 0))
        rules = (doc.get("policy") or {}).get("rules") or {}
        used = CounterMetricFamily("mlfs_prefetched_used_bytes", "Prefetched bytes later read, per rule.",
                                   labels=["rule"])
        unused = GaugeMetricFamily("mlfs_prefetched_unused_bytes", "Prefetched bytes not read (yet), per rule.",
                                   labels=["rule"])
        fetched = CounterMetricFamily("mlfs_prefetched_bytes", "Bytes prefetched, per rule.", labels=["rule"])
        for rule, s in sorted(rules.items()):
            fetched.add_metric([rule], s.get("prefetched_bytes", 0))
            used.add_metric([rule], s.get("prefetch_used_bytes", 0))
            unused.add_metric([rule], max(0, s.get("prefetched_bytes", 0) - s.get("prefetch_used_bytes", 0)))
        yield fetched
        yield used
        yield unused


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    # prometheus-client appends _total to counter names.
    return CounterMetricFamily(name, doc, value=value)


def cumulative_buckets(bounds: list[float], counts: list[int]) -> list[tuple[str, int]]:
    """Per-bucket counts (as `mlfs.stats.Histogram` keeps them) → Prometheus's cumulative ones."""
    running = 0
    buckets = []
    for bound, count in zip([*bounds, float("inf")], counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return buckets


def _histogram(name: str, doc: str, h: dict[str, Any]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=cumulative_buckets(h["bounds"], h["counts"]),
                                 sum_value=h["total"])


def metrics_service(addr: str) -> Callable[..., Any]:
    """A mount-lifetime task serving the session's metrics on `addr`."""
    import trio
    from prometheus_client import CollectorRegistry

    from mlfs.metrics.server import MetricsServer

    async def serve(session: Any, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        registry = CollectorRegistry()
        registry.register(MountCollector(session.statistics))
        server = MetricsServer(addr, registry)
        server.start()
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            server.close()

    return serve
