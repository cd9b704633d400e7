"""The metrics HTTP endpoint: prometheus-client's own server, in its own thread."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from mlfs.errors import ConfigError

log = logging.getLogger(__name__)


def parse_metrics_addr(text: str) -> tuple[str, int]:
    """'127.0.0.1:9100' / '[::1]:9100' / ':9100' → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--metrics-addr {text!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsServer:
    """Serves one registry on HOST:PORT until `close()`."""

    def __init__(self, addr: str, registry: CollectorRegistry) -> None:
        self.host, self.port = parse_metrics_addr(addr)
        self.registry = registry
        self._server: Any = None
        self._thread: Any = None

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"--metrics-addr {self.host}:{self.port}: {exc.strerror or exc}") from None
        self.port = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
