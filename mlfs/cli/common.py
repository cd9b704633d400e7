"""Shared CLI plumbing: turn domain errors into one-line messages and exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

import click

from mlfs.errors import MlfsError

T = TypeVar("T")


def run_command(fn: Callable[[], T]) -> T:
    """Run a command body; user errors become `mlfs: <message>` and exit status 1."""
    try:
        return fn()
    except MlfsError as exc:
        click.echo(f"mlfs: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("mlfs: interrupted", err=True)
        sys.exit(130)


def setup_logging(verbose: int, json_lines: bool = False) -> None:
    from mlfs.log import configure

    configure(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING, json_lines)
