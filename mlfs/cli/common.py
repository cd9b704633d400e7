"""Shared CLI plumbing: turn domain errors into one-line messages and exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

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


def run_with_progress(label: str, total: int, quiet: bool, work: Any, counter: Any,
                      show_rate: bool = False) -> Any:
    """Run `work()` in a thread while a progress bar on stderr follows `counter.total`.

    `show_rate` shows bytes and bytes/s instead of an ETA (for transfers). The result of
    `work()` is returned, and its exception re-raised, on the calling thread.
    """
    import threading
    import time

    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = work()
        except BaseException as exc:  # re-raised on the calling thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    if quiet:
        thread.join()
    else:
        start = time.monotonic()
        with click.progressbar(length=max(total, 1), label=label, file=sys.stderr, show_pos=False,
                               show_percent=True, show_eta=not show_rate,
                               item_show_func=(lambda text: text) if show_rate else None) as bar:
            seen = 0
            while thread.is_alive():
                thread.join(0.25 if show_rate else 0.2)
                if show_rate:
                    now = min(counter.total, total)
                    rate = now / max(time.monotonic() - start, 1e-3)
                    bar.update(now - seen, f"{now / 1e6:.1f}/{total / 1e6:.1f} MB {rate / 1e6:.1f} MB/s")
                else:
                    now = counter.total
                    bar.update(now - seen)
                seen = now
            if not show_rate:
                bar.update(max(total, 1) - seen)
    if "error" in result:
        raise result["error"]
    return result["value"]
