"""`mlfs cache ls|du|verify|gc|warm`: look after a chunk store."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mlfs.cli.common import run_command
from mlfs.cli.status import human

_cache_option = click.option("--cache", type=click.Path(file_okay=False, path_type=Path),
                             help="Chunk store directory [$MLFS_CACHE or ~/.cache/mlfs].")


@click.group()
def cache() -> None:
    """Inspect, verify, trim and pre-fill a chunk store."""


@cache.command("ls")
@click.argument("manifests", nargs=-1, required=True)
@_cache_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls(manifests: tuple[str, ...], cache: Path | None, as_json: bool) -> None:
    """How much of each MANIFEST the store holds."""

    def body() -> None:
        from dataclasses import asdict

        from mlfs.cache_admin import holding, open_store
        from mlfs.manifest.validate import load_manifest

        store = open_store(cache)
        rows = [holding(store, load_manifest(m)) for m in manifests]
        if as_json:
            click.echo(json.dumps([asdict(r) for r in rows], indent=1))
            return
        for ref, r in zip(manifests, rows, strict=True):
            click.echo(f"{r.name} {r.version}  {r.chunks_present}/{r.chunks} chunks  "
                       f"{human(r.bytes_present)}/{human(r.bytes)}  {ref}")

    run_command(body)


@cache.command("du")
@_cache_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def du(cache: Path | None, as_json: bool) -> None:
    """Size of the store, its chunk count and the disk space left."""

    def body() -> None:
        from mlfs.cache_admin import open_store, usage

        doc = usage(open_store(cache))
        if as_json:
            click.echo(json.dumps(doc, indent=1))
            return
        click.echo(f"{human(doc['bytes'])} in {doc['chunks']} chunks; disk free {human(doc['disk_free'])} "
                   f"of {human(doc['disk_total'])}; {doc['quarantined']} quarantined")

    run_command(body)


@cache.command("verify")
@_cache_option
def verify(cache: Path | None) -> None:
    """Re-hash every chunk with SHA-256; bad ones are quarantined (exit 1)."""

    def body() -> None:
        from mlfs.cache_admin import open_store
        from mlfs.cache_admin import verify as do_verify

        store = open_store(cache)
        with click.progressbar(length=store.usage, label="verifying", file=click.get_text_stream("stderr")) as bar:
            bad = do_verify(store, bar.update)
        for digest in bad:
            click.echo(f"mlfs: chunk {digest} did not match its SHA-256; quarantined", err=True)
        if bad:
            raise SystemExit(1)
        click.echo("mlfs: every chunk matches its SHA-256", err=True)

    run_command(body)


@cache.command("gc")
@_cache_option
@click.option("--to", "target", required=True, help="Evict least recently used chunks down to this size (e.g. 10G, 0).")
def gc(cache: Path | None, target: str) -> None:
    """Evict least recently used chunks until the store fits SIZE."""

    def body() -> None:
        from mlfs.cache_admin import gc as do_gc
        from mlfs.cache_admin import open_store
        from mlfs.config import parse_size

        before, after = do_gc(open_store(cache), parse_size(target, "--to"))
        click.echo(f"mlfs: {human(before)} → {human(after)} (freed {human(before - after)})", err=True)

    run_command(body)


@cache.command("warm")
@click.argument("manifest")
@_cache_option
@click.option("--endpoint-url", help="S3 endpoint [$AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL].")
@click.option("--region", help="S3 region [$AWS_REGION].")
@click.option("--profile", help="AWS profile [$AWS_PROFILE].")
@click.option("--max-threads", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Concurrent S3 range GETs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def warm(manifest: str, cache: Path | None, endpoint_url: str | None, region: str | None,
         profile: str | None, max_threads: int, quiet: bool) -> None:
    """Fetch every chunk of MANIFEST into the store (node warm-up before workloads start)."""

    def body() -> None:
        from mlfs.cache_admin import holding, manifest_chunks, open_store
        from mlfs.cache_admin import warm as do_warm
        from mlfs.manifest.validate import load_manifest
        from mlfs.s3.client import S3Settings

        m = load_manifest(manifest)
        store = open_store(cache, create=True)
        settings = S3Settings(endpoint_url=endpoint_url, region=region, profile=profile,
                              max_pool=max_threads + 4, own_retries=True)
        total = sum(manifest_chunks(m).values())
        with click.progressbar(length=total, label=f"warming {m.name} {m.version}", hidden=quiet,
                               file=click.get_text_stream("stderr")) as bar:
            failures = do_warm(m, store, settings, max_threads, bar.update)
        if failures:
            click.echo(f"mlfs: {len(failures)} chunks could not be fetched; first: {failures[0]}", err=True)
            raise SystemExit(1)
        h = holding(store, m)
        click.echo(f"mlfs: {m.name} {m.version}: {h.chunks_present}/{h.chunks} chunks in {store.root}", err=True)

    run_command(body)
