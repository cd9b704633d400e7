"""`mlfs serve`: the embedded S3 gateway."""

from __future__ import annotations

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
@click.option("-v", "--verbose", count=True, help="More logging (-v debug).")
@click.option("--log-json", is_flag=True, help="Log JSON lines.")
def serve(data_dir: Path, listen: str, credentials: Path | None, anonymous_read: tuple[str, ...],
          upstream: str | None, threads: int, verbose: int, log_json: bool) -> None:
    """Serve an S3-compatible API whose objects live in the mlfs chunk store."""
    setup_logging(verbose + 1, log_json)

    def body() -> None:
        from mlfs.gateway.access import load_access_policy
        from mlfs.gateway.server import GatewayConfig, serve_forever

        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--listen {listen!r}: expected HOST:PORT")
        if upstream is not None and not upstream.startswith("s3://"):
            raise ConfigError(f"--upstream {upstream!r}: expected s3://BUCKET[/PREFIX]")
        policy = load_access_policy(credentials, anonymous_read=anonymous_read)
        from mlfs.preprocess.service import extend as preprocessing
        from mlfs.registry.service import extend as registry

        serve_forever(GatewayConfig(data_dir=data_dir, host=host.strip("[]"), port=int(port), policy=policy,
                                    upstream=upstream, threads=threads, extensions=[preprocessing, registry]))

    run_command(body)
