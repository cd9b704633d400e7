"""`mlfs serve`: the embedded S3 gateway."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import click

from mlfs.cli.common import run_command, setup_logging
from mlfs.errors import ConfigError


@click.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=lambda: os.environ.get("MLFS_SERVE_DATA", "./mlfs-data"), show_default="./mlfs-data",
              help="Data directory: chunk store in DATA/store, metadata in DATA/meta.sqlite3.")
@click.option("--listen", default="127.0.0.1:9000", show_default=True, help="HOST:PORT to listen on.")
@click.option("--credentials", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="TOML file with users, keys and per-bucket rights (root comes from MLFS_ROOT_ACCESS_KEY/SECRET_KEY).")
@click.option("--anonymous-read", multiple=True, metavar="BUCKET",
              help="Allow unauthenticated GET/HEAD/list on BUCKET (repeatable).")
@click.option("--upstream", metavar="s3://BUCKET[/PREFIX]",
              help="Cache-through mode: fetch objects missing here from this upstream S3 (AWS_* settings apply).")
@click.option("--threads", default=16, show_default=True, help="Worker threads for disk and metadata work.")
@click.option("--region", default="us-east-1", show_default=True,
              help="Region that request signatures must name.")
@click.option("--max-requests", default=1024, show_default=True, type=click.IntRange(min=1),
              help="Requests in flight at once; more are answered 503 SlowDown.")
@click.option("--max-requests-per-client", default=64, show_default=True, type=click.IntRange(min=1),
              help="Requests in flight from one client address; more are answered 503 SlowDown.")
@click.option("--min-rate", default=4096, show_default=True, type=click.IntRange(min=0), metavar="BYTES",
              help="Minimum average transfer rate (bytes/s) of request bodies and downloads; 0 = none.")
@click.option("--min-rate-grace", default=10.0, show_default=True, type=click.FloatRange(min=0), metavar="SECONDS",
              help="How long a transfer may run before --min-rate applies.")
@click.option("--body-timeout", default=None, type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Abandon an upload or download whose next block takes this long  [default: 30].")
@click.option("--upstream-max-size", default=5 * 1024**3, show_default=True, type=click.IntRange(min=0),
              metavar="BYTES", help="Largest object a cache-through miss fetches.")
@click.option("--upstream-fetches", default=4, show_default=True, type=click.IntRange(min=1),
              help="Cache-through downloads at once (anonymous misses never wait for one).")
@click.option("--upload-expiry", default=7 * 24 * 3600, show_default=True, metavar="SECONDS",
              type=click.FloatRange(min=0, min_open=True),
              help="Abort multipart uploads started longer ago than this.")
@click.option("-v", "--verbose", count=True, help="More logging (-v debug).")
@click.option("--log-json", is_flag=True, help="Log JSON lines (same as --log-format json).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Log lines as text or as one JSON object per line.")
@click.option("--metrics-addr", metavar="HOST:PORT", help="Serve Prometheus metrics at http://HOST:PORT/metrics.")
def serve(data_dir: Path, listen: str, credentials: Path | None, anonymous_read: tuple[str, ...],
          upstream: str | None, threads: int, region: str, max_requests: int, max_requests_per_client: int,
          min_rate: int, min_rate_grace: float, body_timeout: float | None, upstream_max_size: int, upstream_fetches: int,
          upload_expiry: float, verbose: int, log_json: bool, log_format: str, metrics_addr: str | None) -> None:
    """Serve an S3-compatible API whose objects live in the mlfs chunk store."""
    setup_logging(verbose + 1, log_json or log_format == "json")

    def body() -> None:
        from mlfs.gateway.access import load_access_policy
        from mlfs.gateway.limits import Limits
        from mlfs.gateway.server import GatewayConfig, serve_forever

        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--listen {listen!r}: expected HOST:PORT")
        if upstream is not None and not upstream.startswith("s3://"):
            raise ConfigError(f"--upstream {upstream!r}: expected s3://BUCKET[/PREFIX]")
        policy = load_access_policy(credentials, anonymous_read=anonymous_read)
        from mlfs.preprocess.service import extend as preprocessing
        from mlfs.registry.service import extend as registry

        middleware = []
        if metrics_addr is not None:
            from mlfs.metrics import parse_metrics_addr
            from mlfs.metrics.gateway import metrics_extension

            parse_metrics_addr(metrics_addr)
            middleware.append(metrics_extension(metrics_addr))
        limits = Limits(max_requests=max_requests, per_client_requests=max_requests_per_client,
                        min_rate=float(min_rate), rate_grace=min_rate_grace, upstream_max_size=upstream_max_size,
                        upstream_fetches=upstream_fetches, upload_expiry=upload_expiry)
        if body_timeout is not None:
            limits = dataclasses.replace(limits, body_stall=body_timeout)
        serve_forever(GatewayConfig(data_dir=data_dir, host=host.strip("[]"), port=int(port), policy=policy,
                                    upstream=upstream, threads=threads, extensions=[preprocessing, registry],
                                    limits=limits, region=region, middleware=middleware))

    run_command(body)
