"""`mlfs generate`: build a manifest from S3, a local mirror, or an MLArtifactFS manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mlfs.cli.common import run_command, run_with_progress, setup_logging


def _check_options(chunk_size: str, block_size: str, workers: int, s3_url: str | None, local_dir: Path | None,
                   from_file: Path | None, output: str | None, prefetch: tuple[str, ...],
                   no_prefetch: bool) -> tuple[int, int | None]:
    """Refuse every bad option before any listing or hashing starts; returns the chunk
    and block sizes (None: no block digests)."""
    from mlfs.config import parse_size
    from mlfs.errors import ConfigError
    from mlfs.manifest import DEFAULT_BLOCK_SIZE
    from mlfs.manifest.validate import MAX_CHUNK_SIZE, MIN_BLOCK_SIZE, MIN_CHUNK_SIZE
    from mlfs.s3.client import split_s3_url

    size = parse_size(chunk_size, "--chunk-size")
    if not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
        raise ConfigError(f"--chunk-size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes "
                          f"(64K to 1G), not {size}")
    if block_size == "auto":
        block = DEFAULT_BLOCK_SIZE if size > DEFAULT_BLOCK_SIZE and size % DEFAULT_BLOCK_SIZE == 0 else 0
    else:
        block = parse_size(block_size, "--block-size") if block_size not in ("0", "none") else 0
    # A block as large as the chunk adds nothing: the chunk's own digest covers it.
    if block and block < size and (block < MIN_BLOCK_SIZE or size % block):
        raise ConfigError(f"--block-size must be 0 (none) or at least {MIN_BLOCK_SIZE} bytes and divide "
                          f"the chunk size {size}, not {block}")
    if not 1 <= workers <= 256:
        raise ConfigError(f"--workers must be between 1 and 256, not {workers}")
    if prefetch and no_prefetch:
        raise ConfigError("--prefetch and --no-prefetch contradict each other")
    if from_file is not None:
        if s3_url or local_dir:
            raise ConfigError("--from takes no s3:// URL and no --local")
        if not from_file.is_file():
            raise ConfigError(f"--from {from_file}: no such file")
    else:
        if not s3_url:
            raise ConfigError("give an s3://BUCKET/PREFIX/ URL (or --from FILE)")
        split_s3_url(s3_url)
        if local_dir is not None and not local_dir.is_dir():
            raise ConfigError(f"--local {local_dir}: no such directory")
    if output not in (None, "-"):
        parent = Path(output).absolute().parent
        if not parent.is_dir():
            raise ConfigError(f"--output {output}: directory {parent} does not exist")
        if Path(output).is_dir():
            raise ConfigError(f"--output {output} is a directory")
    return size, (block if block and block < size else None)


@click.command()
@click.argument("s3_url", required=False, metavar="[s3://BUCKET/PREFIX/]")
@click.option("-o", "--output", help="Write the manifest here (default: stdout).")
@click.option("--local", "local_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Hash this local mirror of the prefix instead of downloading (checked against S3 HEAD).")
@click.option("--from", "from_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Convert an MLArtifactFS-style manifest (reads each object once for chunk digests).")
@click.option("--name", help="Artifact name [second-to-last prefix component].")
@click.option("--version", "version_", help="Artifact version [last prefix component].")
@click.option("--chunk-size", default="16M", show_default=True, help="Chunk size.")
@click.option("--block-size", default="auto", show_default=True,
              help="Also record a SHA-256 per block of this size (e.g. 256K), so that a random read "
                   "fetches and verifies one block instead of its whole chunk; 0 records none. auto: "
                   "256K, or none when an mlfs gateway supplies the digests (it knows chunk digests only).")
@click.option("--prefetch", multiple=True, help="Glob of files to fetch at mount (repeatable) [*.json, *.txt, ...].")
@click.option("--no-prefetch", is_flag=True, help="Prefetch nothing at mount.")
@click.option("--endpoint-url", help="S3 endpoint [$AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL].")
@click.option("--region", help="S3 region [$AWS_REGION].")
@click.option("--profile", help="AWS profile [$AWS_PROFILE].")
@click.option("--rehash", is_flag=True,
              help="Always read and hash the objects, even from an mlfs gateway that knows their digests.")
@click.option("--workers", default=8, show_default=True, help="Objects read in parallel.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("-v", "--verbose", count=True)
def generate(s3_url, output, local_dir, from_file, name, version_, chunk_size, block_size, prefetch, no_prefetch,
             endpoint_url, region, profile, rehash, workers, quiet, verbose) -> None:
    """Build a manifest of an artifact: every file, its size and its SHA-256 digests."""
    setup_logging(verbose)

    def body() -> None:
        from mlfs.manifest import DEFAULT_CHUNK_SIZE
        from mlfs.manifest import generate as gen
        from mlfs.s3.client import S3Settings, make_client, split_s3_url

        size, block = _check_options(chunk_size, block_size, workers, s3_url, local_dir, from_file, output,
                                     prefetch, no_prefetch)
        client = make_client(S3Settings(endpoint_url=endpoint_url, region=region, profile=profile,
                                        max_pool=max(10, workers + 2)))
        counter = gen.ByteCounter()
        links = []
        meta: dict[str, Any] = {}
        if from_file is not None:
            refs, meta = gen.refs_from_artifactfs(gen.read_json_file(from_file), str(from_file))
            files = run_with_progress("hashing", sum(r.size for r in refs), quiet,
                                   lambda: gen.hash_refs(client, refs, size, workers, counter, block), counter)
            default_name, default_version = meta["name"], meta["version"]
        else:
            bucket, prefix = split_s3_url(s3_url)
            default_name, default_version = gen.name_version_from_prefix(prefix)
            if local_dir is not None:
                total = sum(p.stat().st_size for p in local_dir.rglob("*") if p.is_file() and not p.is_symlink()) \
                    if local_dir.is_dir() else 0
                files, links = run_with_progress("hashing",
                    total, quiet,
                    lambda: gen.entries_from_local(client, local_dir, bucket, prefix, size, workers, counter, block),
                    counter)
            else:
                from mlfs.manifest.from_gateway import fetch_gateway_manifest

                # The gateway knows chunk digests only: block digests asked for by size
                # mean reading the objects; by default its digests win without them.
                known = None if rehash or size != DEFAULT_CHUNK_SIZE or (block and block_size != "auto") \
                    else fetch_gateway_manifest(client, bucket, prefix)
                if known is not None:
                    if not quiet:
                        click.echo("mlfs: digests from the mlfs gateway (no re-hashing)", err=True)
                    files, links, block = known.files, known.symlinks, None
                else:
                    refs = gen.refs_from_s3(client, bucket, prefix)
                    files = run_with_progress("hashing", sum(r.size for r in refs), quiet,
                                           lambda: gen.hash_refs(client, refs, size, workers, counter, block), counter)
        globs = [] if no_prefetch else (list(prefetch) or meta.get("prefetch") or None)
        manifest = gen.build_manifest(
            name or default_name, version_ or default_version, files, links, globs, size,
            meta.get("metadata"), block,
        )
        gen.write_manifest(manifest, output)
        if output not in (None, "-"):
            click.echo(f"mlfs: wrote {output}: {len(manifest.files)} files, "
                       f"{manifest.total_size / 1e6:.1f} MB", err=True)

    run_command(body)
