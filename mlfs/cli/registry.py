"""`mlfs registry scan`: index and register the artifact versions of an existing bucket."""

from __future__ import annotations

import click

from mlfs.cli.common import run_command, setup_logging


@click.group()
def registry() -> None:
    """Registry maintenance."""


@registry.command()
@click.argument("url", metavar="s3://BUCKET[/PREFIX]")
@click.option("--registry", "registry_url", help="Registry URL [$MLFS_REGISTRY_URL, else the S3 endpoint].")
@click.option("--endpoint-url", help="S3 endpoint [$AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL].")
@click.option("--region", help="S3 region [$AWS_REGION].")
@click.option("--profile", help="AWS profile [$AWS_PROFILE].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("-v", "--verbose", count=True)
def scan(url, registry_url, endpoint_url, region, profile, as_json, verbose) -> None:
    """Index every models/, model-data/ and datasets/ version under URL and register it."""
    setup_logging(verbose)

    def body() -> None:
        import json
        import sys

        from mlfs.registry.client import RegistryClient
        from mlfs.registry.scan import scan as do_scan
        from mlfs.s3.client import S3Settings, make_client, split_s3_url

        bucket, prefix = split_s3_url(url)
        client = RegistryClient(registry_url, endpoint_url, profile, region)
        s3 = make_client(S3Settings(endpoint_url=endpoint_url, region=region, profile=profile))
        result = do_scan(s3, client, bucket, prefix, say=lambda m: None if as_json else click.echo(m, err=True))
        if as_json:
            click.echo(json.dumps({"registered": result.registered,
                                   "failed": [{"uri": u, "reason": r} for u, r in result.failed]}, indent=1))
        else:
            click.echo(f"mlfs: {len(result.registered)} versions registered, {len(result.failed)} not", err=True)
        if result.failed:
            sys.exit(1)

    run_command(body)
