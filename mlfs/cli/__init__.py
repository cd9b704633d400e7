"""The `mlfs` command line: click commands only (parse, call, print, exit codes).

Each command group lives in its own module and is registered here.
"""

from __future__ import annotations

import click

from mlfs import __version__
from mlfs.cli.cache import cache
from mlfs.cli.common import run_command
from mlfs.cli.generate import generate
from mlfs.cli.models import datasets, lineage, models
from mlfs.cli.mount import mount, reload, switch, unmount
from mlfs.cli.preprocess import preprocess
from mlfs.cli.push import push
from mlfs.cli.registry import registry
from mlfs.cli.rules import rules
from mlfs.cli.serve import serve
from mlfs.cli.status import status


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlfs")
def main() -> None:
    """Mount ML artifacts from S3 as lazy, verified, read-only files."""


main.add_command(generate)
main.add_command(mount)
main.add_command(unmount)
main.add_command(status)
main.add_command(reload)
main.add_command(switch)
main.add_command(rules)
main.add_command(serve)
main.add_command(preprocess)
main.add_command(cache)
main.add_command(push)
main.add_command(models)
main.add_command(datasets)
main.add_command(lineage)
main.add_command(registry)

__all__ = ["main", "run_command"]
