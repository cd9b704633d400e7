"""`mlfs status [MOUNTPOINT]`: what every mount serves and how it is doing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from mlfs.cli.common import run_command


@click.command()
@click.argument("mountpoint", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one mount's document, or {\"mounts\": [...]}).")
def status(mountpoint: Path | None, as_json: bool) -> None:
    """Every mlfs mount (or MOUNTPOINT's): manifest, version, cache, fetch rate, top files, errors."""

    def body() -> None:
        from mlfs.app import all_statuses
        from mlfs.app import status as one_status

        docs = [one_status(mountpoint)] if mountpoint is not None else all_statuses()
        if as_json:
            click.echo(json.dumps(docs[0] if mountpoint is not None else {"mounts": docs}, indent=1))
            return
        if not docs:
            click.echo("no mlfs mounts")
            return
        click.echo(table(docs))
        if mountpoint is not None:
            click.echo(details(docs[0]))

    run_command(body)


def table(docs: list[dict[str, Any]]) -> str:
    rows = [("MOUNTPOINT", "MANIFEST", "VERSION", "CACHE USED/BUDGET", "FETCH RATE", "SERVED", "OPEN", "ERRORS")]
    for d in docs:
        if "error" in d and "manifest" not in d:
            rows.append((d["mountpoint"], "-", "-", "-", "-", "-", "-", d["error"]))
            continue
        m = d.get("manifest") or {}
        store = d.get("store") or {}
        budget = store.get("budget")
        rows.append((
            d.get("mountpoint", "?"), m.get("name") or "-", m.get("version") or "-",
            f"{human(store.get('bytes', 0))}/{human(budget) if budget else 'none'}",
            f"{human(d.get('fetch_rate_bytes_per_second', 0))}/s",
            human(d.get("bytes_served", 0)), str(d.get("open_files", 0)), str(len(d.get("recent_errors", []))),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def details(d: dict[str, Any]) -> str:
    lines = [f"cache {d.get('cache', '?')}, fetched {human(d.get('bytes_fetched', 0))} "
             f"in {(d.get('fetch') or {}).get('requests', 0)} requests"]
    if s3 := d.get("s3"):
        lines.append(f"S3 {s3.get('endpoint', '?')} ({s3.get('client', '?')} client)")
    if d.get("top_files"):
        lines.append("top files by bytes read:")
        lines += [f"  {human(f['bytes']):>10}  {f['path']}" for f in d["top_files"]]
    if d.get("recent_errors"):
        lines.append("recent errors:")
        lines += [f"  {e['level']}: {e['message']}" for e in d["recent_errors"]]
    return "\n".join(lines)


def human(n: float | None) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
