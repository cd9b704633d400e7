"""`mlfs preprocess`: declarative image pipelines with results cached by content."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from mlfs.cli.common import run_command, setup_logging
from mlfs.errors import ConfigError

EXIT_SOME_FAILED = 2


@click.group()
def preprocess() -> None:
    """Run image pipelines over S3 prefixes or directories; results are cached by content."""


@preprocess.command()
def templates() -> None:
    """List the built-in pipeline templates."""
    from mlfs.preprocess.pipeline import describe_templates

    for name, description in describe_templates():
        click.echo(f"{name:<22} {description}")


@preprocess.command()
@click.argument("pipeline")
@click.option("--set", "overrides", multiple=True, metavar="STEP.PARAM=VALUE", help="Override a parameter (repeatable).")
def validate(pipeline: str, overrides: tuple[str, ...]) -> None:
    """Check a pipeline file (or template name) without reading any image."""
    from mlfs.preprocess.pipeline import load_pipeline

    def body() -> None:
        p = load_pipeline(pipeline, overrides)
        click.echo(f"{pipeline}: ok, {len(p.steps)} steps ({' → '.join(s.name for s in p.steps)}), {p.digest}")

    run_command(body)


def _s3_options(fn: Any) -> Any:
    fn = click.option("--profile", help="AWS profile.")(fn)
    fn = click.option("--region", help="AWS region.")(fn)
    return click.option("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL[_S3]).")(fn)


@preprocess.command()
@click.argument("pipeline")
@click.argument("src")
@click.option("--out", "dst", required=True, help="Destination: s3://BUCKET/PREFIX/ or a directory.")
@click.option("--workers", type=click.IntRange(1, 256), help="Worker processes (default: the CPU count).")
@click.option("--set", "overrides", multiple=True, metavar="STEP.PARAM=VALUE", help="Override a parameter (repeatable).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Chunk store for results (default: the gateway's store when SRC is on an mlfs serve "
                   "sharing this filesystem, else $MLFS_CACHE or ~/.cache/mlfs).")
@click.option("--name", help="Dataset name in the output manifest (default: from the --out prefix).")
@click.option("--version", "version", help="Dataset version in the output manifest (default: from the --out prefix).")
@_s3_options
@click.option("--json", "as_json", is_flag=True, help="Print the run's summary as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("-v", "--verbose", count=True)
def run(pipeline: str, src: str, dst: str, workers: int | None, overrides: tuple[str, ...], cache_dir: Path | None,
        name: str | None, version: str | None, endpoint_url: str | None, region: str | None, profile: str | None,
        as_json: bool, quiet: bool, verbose: int) -> None:
    """Run PIPELINE (a file or a template name) over every object of SRC, writing to --out."""
    setup_logging(verbose)

    def body() -> int:
        from mlfs.config import default_cache_dir
        from mlfs.preprocess.cache import ResultCache
        from mlfs.preprocess.locations import gateway_store, open_input, open_output
        from mlfs.preprocess.pipeline import load_pipeline
        from mlfs.preprocess.runner import Run
        from mlfs.s3.client import S3Settings, make_client
        from mlfs.store.chunks import ChunkStore

        p = load_pipeline(pipeline, overrides)
        if src.rstrip("/") == dst.rstrip("/"):
            raise ConfigError("--out must differ from SRC")
        settings = S3Settings(endpoint_url=endpoint_url, region=region, profile=profile, max_pool=64)
        clients: dict[str, Any] = {}

        def client() -> Any:
            if "c" not in clients:
                clients["c"] = make_client(settings)
            return clients["c"]

        source = open_input(src, client)
        output = open_output(dst, client)
        store_dir = cache_dir
        if store_dir is None and src.startswith("s3://"):
            store_dir = gateway_store(client())
        store_dir = store_dir or default_cache_dir()
        bar = None if quiet or not sys.stderr.isatty() else ProgressBar()
        results = ResultCache(ChunkStore(store_dir))
        r = Run(p, source, output, results, workers=workers,
                progress=bar, name=name, version=version)
        stats = r.run()
        if bar is not None:
            bar.close()
        for key, reason in stats.failures:
            click.echo(f"mlfs: failed: {key}: {reason}", err=True)
        rate = stats.processed / stats.seconds if stats.seconds else 0.0
        click.echo(f"{stats.total} inputs: done {stats.done}, cached {stats.cached}, failed {stats.failed} "
                   f"in {stats.seconds:.1f} s ({rate:.1f} images/s); decoded {stats.decoded}, "
                   f"written {stats.written}; results in {results.store.root}; manifest {stats.manifest}", err=True)
        if as_json:
            click.echo(json.dumps({**stats.to_json(), "cache": str(results.store.root), "pipeline": p.digest}))
        return EXIT_SOME_FAILED if stats.failed else 0

    sys.exit(run_command(body))


class ProgressBar:
    """One stderr line: processed/total, images/s, done/cached/failed; redrawn at most 5 times a second."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, stats: Any) -> None:
        now = time.monotonic()
        if now - self.last < 0.2 and stats.processed != stats.total:
            return
        self.last = now
        rate = stats.processed / max(now - self.started, 1e-6)
        width = 30
        filled = int(width * stats.processed / stats.total) if stats.total else width
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {stats.processed}/{stats.total} "
                         f"{rate:7.1f} images/s  done {stats.done} cached {stats.cached} failed {stats.failed} ")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


@preprocess.group()
def cache() -> None:
    """Inspect or clear the cached results."""


def _cache_target(fn: Any) -> Any:
    fn = click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
                      help="Chunk store (default: $MLFS_CACHE or ~/.cache/mlfs).")(fn)
    return click.option("--gateway", is_flag=True,
                        help="The cache of the mlfs serve at AWS_ENDPOINT_URL (over its REST API).")(fn)


@cache.command()
@_cache_target
@_s3_options
def stats(cache_dir: Path | None, gateway: bool, endpoint_url: str | None, region: str | None,
          profile: str | None) -> None:
    """Number and size of cached results (JSON)."""

    def body() -> None:
        if gateway:
            doc = _gateway_call("GET", "cache/stats", endpoint_url, region, profile)
        else:
            doc = _local_cache(cache_dir).stats()
        click.echo(json.dumps(doc))

    run_command(body)


@cache.command()
@_cache_target
@_s3_options
def clear(cache_dir: Path | None, gateway: bool, endpoint_url: str | None, region: str | None,
          profile: str | None) -> None:
    """Forget every cached result and free its chunks."""

    def body() -> None:
        if gateway:
            doc = _gateway_call("POST", "cache/clear", endpoint_url, region, profile)
            removed = doc["removed"]
        else:
            results = _local_cache(cache_dir)
            if results.store.authoritative:
                raise ConfigError(f"{results.store.root} is an mlfs gateway's store (its chunks may be objects "
                                  "too); clear it through the gateway: mlfs preprocess cache clear --gateway")
            removed = results.clear()
        click.echo(f"removed {removed} cached results")

    run_command(body)


def _local_cache(cache_dir: Path | None) -> Any:
    from mlfs.config import default_cache_dir
    from mlfs.preprocess.cache import ResultCache
    from mlfs.store.chunks import ChunkStore

    return ResultCache(ChunkStore(cache_dir or default_cache_dir()))


def _gateway_call(method: str, path: str, endpoint_url: str | None, region: str | None,
                  profile: str | None) -> Any:
    from mlfs.preprocess.client import call_service
    from mlfs.s3.client import S3Settings, make_client

    return call_service(make_client(S3Settings(endpoint_url=endpoint_url, region=region, profile=profile)),
                        method, path)
