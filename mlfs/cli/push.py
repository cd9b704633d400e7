"""`mlfs push`: upload a model or dataset directory and register it as a version."""

from __future__ import annotations

from pathlib import Path

import click

from mlfs.cli.common import run_command, run_with_progress, setup_logging


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model (or dataset) name.")
@click.option("--version", "version_", required=True, help="Version directory name, e.g. v1.")
@click.option("--bucket", default="models", show_default=True, help="Target bucket.")
@click.option("--prefix", default="model-data", show_default=True,
              help="Layout root: model-data or models (models), datasets (datasets).")
@click.option("--alias", "aliases", multiple=True,
              help="Alias to point at the new version (repeatable); a stage name (production, staging) "
                   "moves the version to that stage and archives the previous one.")
@click.option("--trained-on", multiple=True, metavar="datasets:/N/V",
              help="Dataset version the model was trained on (repeatable; recorded as lineage).")
@click.option("--description", default="", help="Version description.")
@click.option("--registry", "registry_url", help="Registry URL [$MLFS_REGISTRY_URL, else the S3 endpoint].")
@click.option("--endpoint-url", help="S3 endpoint [$AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL].")
@click.option("--region", help="S3 region [$AWS_REGION].")
@click.option("--profile", help="AWS profile [$AWS_PROFILE].")
@click.option("--workers", default=8, show_default=True, help="Files hashed and sent in parallel.")
@click.option("--json", "as_json", is_flag=True, help="Print the registered version as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("-v", "--verbose", count=True)
def push(directory, name, version_, bucket, prefix, aliases, trained_on, description, registry_url,
         endpoint_url, region, profile, workers, as_json, quiet, verbose) -> None:
    """Upload DIRECTORY to s3://BUCKET/PREFIX/NAME/VERSION/ and register the version."""
    setup_logging(verbose)

    def body() -> None:
        import os

        from mlfs.manifest.generate import ByteCounter
        from mlfs.registry.client import RegistryClient
        from mlfs.registry.push import PushPlan, list_directory
        from mlfs.registry.push import push as do_push
        from mlfs.s3.client import S3Settings, make_client

        # A push is many requests in a row: a busy server's transient 5xx answers get a
        # few more attempts than one call's default (AWS_MAX_ATTEMPTS still decides).
        os.environ.setdefault("AWS_MAX_ATTEMPTS", "8")
        plan = PushPlan(directory, name, version_, bucket, prefix, list(aliases), list(trained_on), description,
                        workers)
        registry = RegistryClient(registry_url, endpoint_url, profile, region)
        s3 = make_client(S3Settings(endpoint_url=endpoint_url, region=region, profile=profile,
                                    max_pool=max(16, workers * 4 + 2), transfers=True))
        total = sum(f.size for f in list_directory(directory))
        counter = ByteCounter()
        result = run_with_progress("pushing", total, quiet, lambda: do_push(plan, s3, registry, counter), counter,
                                   show_rate=True)
        if as_json:
            import json

            click.echo(json.dumps(result.version, indent=1))
            return
        v = result.version
        click.echo(f"mlfs: pushed {len(result.uploaded)} files ({result.bytes_uploaded / 1e6:.1f} MB), "
                   f"copied {len(result.copied)} server-side, {len(result.skipped)} already there", err=True)
        where = f" [{', '.join(v['aliases'])}]" if v["aliases"] else ""
        click.echo(f"{v['kind']} {v['name']} version {v['version']} ({v['label']}) {v['uri']} "
                   f"stage {v['stage']}{where} formats {','.join(v['formats']) or '-'}")

    run_command(body)


