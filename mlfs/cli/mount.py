"""`mlfs mount` and `mlfs unmount`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mlfs.cli.common import run_command, setup_logging
from mlfs.config import MountOptions, parse_o_options, parse_size


class _MountCommand(click.Command):
    """`mlfs mount ... -- CMD ARGS...`: everything after the first `--` is the command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            at = args.index("--")
            ctx.meta["mlfs.command"] = args[at + 1:]
            args = args[:at]
        return super().parse_args(ctx, args)


@click.command(cls=_MountCommand)
@click.argument("paths", nargs=-1, metavar="[MANIFEST] MOUNTPOINT [-- CMD ARGS...]")
@click.option("--manifest", "manifest_opt", help="Manifest file (alternative to the positional MANIFEST).")
@click.option("--foreground", "-f", is_flag=True, help="Stay in the foreground; Ctrl-C unmounts.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help="Chunk store directory [$MLFS_CACHE or ~/.cache/mlfs].")
@click.option("--cache-size", help="Chunk store budget, e.g. 20G (LRU eviction); default keeps 5% of the disk free.")
@click.option("--allow-other", is_flag=True, default=None, help="Let other users access the mount.")
@click.option("--uid", type=int, help="Owner uid of all files [current user].")
@click.option("--gid", type=int, help="Owner gid of all files [current group].")
@click.option("--endpoint-url", help="S3 endpoint [$AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL].")
@click.option("--region", help="S3 region [$AWS_REGION].")
@click.option("--profile", help="AWS profile [$AWS_PROFILE].")
@click.option("--max-threads", type=int, help="Concurrent S3 range GETs [8].")
@click.option("--read-ahead-max", type=int, help="Chunks fetched ahead of a sequential reader, also the cap for policy windows [16].")
@click.option("--wait-prefetch", is_flag=True, default=None, help="Return only after prefetched files are local.")
@click.option("--rules", "rules_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Policy rule file (repeatable; the last layer, see rules/README.md).")
@click.option("--template", "templates", multiple=True, help="Policy template to apply (repeatable).")
@click.option("--workload", help="FRAMEWORK[:PHASE] for policy conditions [$MLFS_WORKLOAD, else detected].")
@click.option("--learn-prefetch", is_flag=True, default=None,
              help="Record what is read after mount; later mounts of the artifact prefetch it first.")
@click.option("--no-policy", is_flag=True, default=False, help="Apply no policy rules at all.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), help="Daemon log [CACHE/mount.log].")
@click.option("--mkdir", is_flag=True, help="Create MOUNTPOINT (and its parents) if missing.")
@click.option("--metrics-addr", metavar="HOST:PORT", help="Serve Prometheus metrics at http://HOST:PORT/metrics.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Log lines as text or as one JSON object per line.")
@click.option("-o", "options", multiple=True, metavar="KEY=VALUE[,...]", help="Any flag above as a mount option.")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def mount(paths, manifest_opt, foreground, cache, cache_size, allow_other, uid, gid,
          endpoint_url, region, profile, max_threads, read_ahead_max, rules_files, templates, workload,
          learn_prefetch, no_policy, wait_prefetch, log_file, mkdir, metrics_addr, log_format,
          options, verbose) -> None:
    """Mount MANIFEST read-only at MOUNTPOINT; bytes are fetched lazily and verified.

    With `-- CMD ARGS...`, stay in the foreground, run CMD once the mount is ready,
    unmount when it exits and exit with its status.
    """
    command = click.get_current_context().meta.get("mlfs.command")
    setup_logging(verbose, log_format == "json")

    def body() -> None:
        from mlfs.app import mount_artifact
        from mlfs.errors import ConfigError

        if len(paths) == 2 and not manifest_opt:
            manifest, mountpoint = paths
        elif len(paths) == 1 and manifest_opt:
            manifest, mountpoint = manifest_opt, paths[0]
        elif len(paths) == 2:
            raise ConfigError("give the manifest once: positionally or with --manifest")
        else:
            raise ConfigError("usage: mlfs mount [--manifest] MANIFEST MOUNTPOINT")
        opts = MountOptions()
        parse_o_options(options, opts)
        # Explicit flags win over -o options.
        flags = {
            "cache": cache, "cache_size": parse_size(cache_size, "--cache-size") if cache_size else None,
            "allow_other": allow_other, "uid": uid, "gid": gid, "endpoint_url": endpoint_url,
            "region": region, "profile": profile, "max_threads": max_threads,
            "read_ahead_max": read_ahead_max, "wait_prefetch": wait_prefetch, "log_file": log_file,
        }
        for key, value in flags.items():
            if value is not None:
                setattr(opts, key, value)
        opts.rules.extend(rules_files)
        opts.template.extend(templates)
        if workload:
            opts.workload = workload
        if learn_prefetch:
            opts.learn_prefetch = True
        if no_policy:
            opts.policy = False
        return mount_artifact(manifest, mountpoint, opts, foreground, say=lambda m: click.echo(m, err=True),
                              command=command, metrics_addr=metrics_addr, mkdir=mkdir,
                              json_logs=log_format == "json")

    sys.exit(run_command(body))


@click.command()
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
def unmount(mountpoint: Path) -> None:
    """Unmount an mlfs mount; also cleans a stale mount left by a killed daemon."""

    def body() -> None:
        from mlfs.app import unmount as do_unmount

        click.echo(f"mlfs: {do_unmount(mountpoint)}", err=True)

    run_command(body)


@click.command()
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
def reload(mountpoint: Path) -> None:
    """Reload a mount's policy rules (same as sending it SIGHUP)."""

    def body() -> None:
        from mlfs.app import reload_rules

        pid = reload_rules(mountpoint)
        click.echo(f"mlfs: asked the mount process {pid} to reload its rules", err=True)

    run_command(body)


@click.command()
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.argument("manifest")
@click.option("--endpoint-url", help="S3 endpoint that resolves models:/ references [$AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL].")
@click.option("--region", help="S3 region [$AWS_REGION].")
@click.option("--profile", help="AWS profile [$AWS_PROFILE].")
def switch(mountpoint: Path, manifest: str, endpoint_url: str | None, region: str | None, profile: str | None) -> None:
    """Serve MANIFEST at MOUNTPOINT from now on, without unmounting.

    Files open before the switch keep reading the old version; new opens see the new
    one. A manifest that fails validation leaves the old version in place.
    """

    def body() -> None:
        from mlfs.app import switch as do_switch

        answer = do_switch(mountpoint, manifest, endpoint_url=endpoint_url, profile=profile, region=region)
        click.echo(f"mlfs: {mountpoint} now serves {answer.get('name')} {answer.get('version')}", err=True)

    run_command(body)
