"""Metrics of `mlfs serve`: requests by S3 operation and status, and their latency."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from mlfs.gateway.app import route
from mlfs.gateway.errors import S3Error
from mlfs.gateway.http import Request
from mlfs.metrics.mount import cumulative_buckets
from mlfs.stats import Histogram


def operation_of(scope: dict[str, Any]) -> str:
    """The S3 operation a request asks for: the gateway's own routing decides."""
    try:
        handler, _ = route(Request.from_scope(scope, None))
    except S3Error:
        return "invalid"
    return handler.__name__


class RequestMetrics:
    """ASGI middleware counting every request the gateway answers."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._lock = threading.Lock()  # scrapes read from the metrics server's thread
        self._requests: dict[tuple[str, int], int] = {}
        self._latency: dict[str, Histogram] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        operation = operation_of(scope)
        status = 0

        async def record_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.monotonic()
        try:
            await self.app(scope, receive, record_status)
        finally:
            elapsed = time.monotonic() - started
            with self._lock:
                key = (operation, status)  # status 0: no response was started
                self._requests[key] = self._requests.get(key, 0) + 1
                self._latency.setdefault(operation, Histogram()).observe(elapsed)

    def statistics(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": dict(self._requests),
                    "latency": {op: h.copy() for op, h in self._latency.items()}}


class GatewayCollector(Collector):
    def __init__(self, metrics: RequestMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        stats = self.metrics.statistics()
        requests = CounterMetricFamily("mlfs_gateway_requests", "S3 requests answered, by operation and status.",
                                       labels=["operation", "status"])
        for (op, status), n in sorted(stats["requests"].items()):
            requests.add_metric([op, str(status)], n)
        yield requests
        latency = HistogramMetricFamily("mlfs_gateway_request_duration_seconds", "Time to answer an S3 request.",
                                        labels=["operation"])
        for op, h in sorted(stats["latency"].items()):
            latency.add_metric([op], cumulative_buckets(list(h.bounds), h.counts), h.total)
        yield latency


def metrics_extension(addr: str) -> Any:
    """Wraps the gateway app and serves its metrics on `addr` for `mlfs serve --metrics-addr`."""
    from prometheus_client import CollectorRegistry

    from mlfs.metrics.server import MetricsServer

    def wrap(app: Any) -> Any:
        metrics = RequestMetrics(app)
        registry = CollectorRegistry()
        registry.register(GatewayCollector(metrics))
        MetricsServer(addr, registry).start()
        return metrics

    return wrap
