"""Wiring: configuration → objects. The only place that builds everything."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mlfs.config import MountOptions
from mlfs.errors import ConfigError, MountError
from mlfs.manifest.model import Manifest
from mlfs.s3.client import S3Settings, make_client
from mlfs.store.chunks import ChunkStore

if TYPE_CHECKING:
    from mlfs.mount_policy import MountPolicy

log = logging.getLogger(__name__)


def s3_settings(opts: MountOptions) -> S3Settings:
    return S3Settings(
        endpoint_url=opts.endpoint_url,
        region=opts.region,
        profile=opts.profile,
        max_pool=opts.max_threads + 6,  # + the fetcher's urgent threads, + spare
        own_retries=True,
    )


def mount_artifact(
    manifest_path: str | Path,
    mountpoint: str | Path,
    opts: MountOptions,
    foreground: bool,
    say: Callable[[str], None] = print,
) -> None:
    """Validate everything that can be validated, then mount (daemonising unless foreground).

    Every check that can fail on user input runs before the fork, so errors are printed
    by the process the user started and nothing is mounted.
    """
    from mlfs.daemon import daemonize
    from mlfs.fuse.mountpoints import check_mountpoint
    from mlfs.fuse.session import MountSession, SessionSettings
    from mlfs.log import configure
    from mlfs.registry.client import describe_resolution, load_mount_manifest

    opts.validate()
    # A file, or a models:/… or datasets:/… reference resolved through the registry.
    manifest = load_mount_manifest(manifest_path, endpoint_url=opts.endpoint_url, profile=opts.profile,
                                   region=opts.region)
    if (resolution := describe_resolution(manifest)) is not None:
        say(f"mlfs: {resolution}")
    path, cleaned = check_mountpoint(mountpoint)
    if cleaned:
        say(f"mlfs: cleaned a stale mount left at {path} by a process that died")
    opts.cache = opts.cache.absolute()
    if opts.log_file is not None:
        opts.log_file = opts.log_file.absolute()
    store = ChunkStore(opts.cache, opts.cache_size)
    policy = build_policy(manifest, opts)
    settings = SessionSettings(
        mountpoint=path,
        uid=opts.uid,
        gid=opts.gid,
        allow_other=opts.allow_other,
        max_threads=opts.max_threads,
        read_ahead_max=opts.read_ahead_max,
        buffers=opts.buffers,
        wait_prefetch=opts.wait_prefetch,
        kernel_flags=tuple(opts.kernel_flags),
    )
    if foreground:
        def report(error: str | None) -> None:
            if error is None:
                say(f"mlfs: mounted {manifest.name or manifest_path} at {path} (Ctrl-C to unmount)")
    else:
        log_file = opts.log_file or (opts.cache / "mount.log")
        report = daemonize(log_file)
        configure(logging.INFO, json_lines=False)
    # The S3 client is created after the fork: boto3 sessions and their connection
    # pools must not cross a fork.
    client = make_client(s3_settings(opts))
    session = MountSession(manifest, store, client, settings, policy)
    try:
        session.run(report)
    except MountError as exc:
        report(str(exc))
        raise
    except BaseException as exc:
        report(f"mount failed: {exc}")
        raise


def build_policy(manifest: Manifest, opts: MountOptions) -> MountPolicy | None:
    """Load and validate every rule layer; invalid rules stop the mount before it starts."""
    import os

    from mlfs.mount_policy import MountPolicy
    from mlfs.policy import LearnedPrefetch, PolicyEngine, parse_workload

    if not opts.policy:
        if opts.rules or opts.template or opts.learn_prefetch:
            raise ConfigError("--no-policy cannot be combined with --rules, --template or --learn-prefetch")
        return None
    engine = PolicyEngine.load(
        manifest,
        user_files=[str(p) for p in opts.rules],
        env=os.environ.get("MLFS_ENV") or None,
        templates=opts.template,
        store_size=opts.cache_size,
    )
    workload_text = opts.workload or os.environ.get("MLFS_WORKLOAD")
    workload = parse_workload(workload_text) if workload_text else None
    learned = LearnedPrefetch(opts.cache, manifest) if opts.learn_prefetch else None
    return MountPolicy(engine, manifest, workload, learned)


def status(mountpoint: str | Path) -> dict:
    from mlfs.fuse.mountpoints import find_mount
    from mlfs.runinfo import read_info

    info = find_mount(mountpoint)
    if info is None or not info.is_mlfs:
        raise MountError(f"{Path(mountpoint).absolute()} is not an mlfs mount")
    doc = read_info(mountpoint)
    if doc is None:
        raise MountError(f"no statistics published for {Path(mountpoint).absolute()} yet")
    return doc


def reload_rules(mountpoint: str | Path) -> int:
    import os
    import signal

    from mlfs.runinfo import verified_mount_pid

    pid = verified_mount_pid(status(mountpoint), Path(mountpoint).absolute())
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise MountError(f"the mlfs process of {mountpoint} (pid {pid}) is gone") from None
    return pid


def unmount(mountpoint: str | Path) -> str:
    from mlfs.fuse.mountpoints import unmount as do_unmount

    return do_unmount(mountpoint)

