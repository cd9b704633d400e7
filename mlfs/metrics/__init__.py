"""Prometheus metrics for mounts and the gateway (`--metrics-addr HOST:PORT`).

Collectors read the components' `statistics()` snapshots at scrape time, so the read
path keeps plain integer counters and pays nothing for metrics nobody scrapes.
"""

from mlfs.metrics.server import MetricsServer, parse_metrics_addr

__all__ = ["MetricsServer", "parse_metrics_addr"]
