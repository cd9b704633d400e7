"""Wiring: configuration → objects. The only place that builds everything."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mlfs.config import MountOptions
from mlfs.errors import ConfigError, MlfsError, MountError
from mlfs.manifest.model import Manifest
from mlfs.s3.client import S3Settings
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
    command: list[str] | None = None,
    metrics_addr: str | None = None,
    mkdir: bool = False,
    json_logs: bool = False,
) -> int:
    """Validate everything that can be validated, then mount (daemonising unless foreground).

    Errors are printed by the process the user started and nothing is mounted: checks
    of the user's input run before the fork, and the S3 check and the mount itself
    report back through the readiness pipe. With `command`, the mount stays in the
    foreground, runs it once ready and unmounts when it exits; the return value is then
    its exit status (0 otherwise).
    """
    import os

    from mlfs.command import MountedCommand
    from mlfs.control import serve_control
    from mlfs.daemon import daemonize, notify_systemd
    from mlfs.fuse.mountpoints import check_mountpoint
    from mlfs.fuse.session import MountSession, SessionSettings
    from mlfs.log import configure
    from mlfs.registry.client import describe_resolution, load_mount_manifest
    from mlfs.s3.probe import probe_s3
    from mlfs.s3.source import open_source

    opts.validate()
    if metrics_addr is not None:
        # Imported only here: it brings prometheus_client, which other mounts do not need.
        from mlfs.metrics import parse_metrics_addr

        parse_metrics_addr(metrics_addr)
    run = MountedCommand(command) if command is not None else None
    # A container's main process, and a mount that runs a command, stay in the foreground.
    foreground = foreground or run is not None or os.getpid() == 1
    if run is not None:
        opts.wait_prefetch = True
    # A file, or a models:/… or datasets:/… reference resolved through the registry.
    manifest = load_mount_manifest(manifest_path, endpoint_url=opts.endpoint_url, profile=opts.profile,
                                   region=opts.region)
    if (resolution := describe_resolution(manifest)) is not None:
        say(f"mlfs: {resolution}")
    if mkdir:
        try:
            Path(mountpoint).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MountError(f"cannot create mountpoint {mountpoint}: {exc.strerror}") from None
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
        def said(error: str | None) -> None:
            if error is None and run is None:
                say(f"mlfs: mounted {manifest.name or manifest_path} at {path} (Ctrl-C to unmount)")
        note = say
    else:
        # Forked before any S3 work: the one client the mount uses is made (and checked)
        # in the process that keeps it, and what fails from here on reaches the user's
        # terminal through the readiness pipe, with nothing mounted.
        detached = daemonize(opts.log_file or (opts.cache / "mount.log"))
        configure(logging.INFO, json_lines=json_logs)
        said, note = detached.report, detached.note

    def report(error: str | None) -> None:
        said(error)
        if error is None:
            notify_systemd(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving {manifest.name} {manifest.version}")

    try:
        source = open_source(s3_settings(opts))
        # Unreachable S3, a wrong endpoint or refused credentials are reported now, by
        # the command the user ran, and nothing gets mounted.
        try:
            probe_s3(manifest, source=source)
        except MountError:
            # A store that already holds every chunk (a warmed node) serves the mount offline.
            if not all(store.contains(d) for f in manifest.files for d in f.chunks):
                raise
            note("mlfs: S3 cannot be used, but the cache holds every chunk: mounting from the cache")
    except MlfsError as exc:
        report(str(exc))
        raise
    session = MountSession(manifest, store, source, settings, policy)
    session.command = run
    session.policy_for = lambda m: build_policy(m, opts, learn=False)
    session.services.append(serve_control)
    if metrics_addr is not None:
        from mlfs.metrics.mount import metrics_service

        session.services.append(metrics_service(metrics_addr))
    try:
        session.run(report)
    except MlfsError as exc:
        report(str(exc))
        raise
    except BaseException as exc:
        report(f"mount failed: {exc}")
        raise
    finally:
        notify_systemd("STOPPING=1")
    return run.status if run is not None and run.status is not None else 0


def build_policy(manifest: Manifest, opts: MountOptions, learn: bool = True) -> MountPolicy | None:
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
    learned = LearnedPrefetch(opts.cache, manifest) if opts.learn_prefetch and learn else None
    return MountPolicy(engine, manifest, workload, learned)


def status(mountpoint: str | Path) -> dict:
    """Statistics of one mount: live from its process, else the copy it last published."""
    from mlfs.control import ControlSocketGone, request_status
    from mlfs.fuse.mountpoints import is_stale

    _mlfs_mount(mountpoint)
    try:
        return request_status(mountpoint)
    except ControlSocketGone:
        # Only now look at the mount itself: a statfs would hang on a stopped daemon.
        if is_stale(mountpoint):
            raise MountError(f"{Path(mountpoint).absolute()} is a stale mount (its mlfs process died; "
                             f"mlfs unmount {Path(mountpoint).absolute()} cleans it)") from None
    return _published(mountpoint)


def _mlfs_mount(mountpoint: str | Path) -> None:
    from mlfs.fuse.mountpoints import find_mount

    info = find_mount(mountpoint)
    if info is None or not info.is_mlfs:
        raise MountError(f"{Path(mountpoint).absolute()} is not an mlfs mount")


def _published(mountpoint: str | Path) -> dict:
    """The statistics the mount last wrote to the run directory (pid included)."""
    from mlfs.runinfo import read_info

    _mlfs_mount(mountpoint)
    doc = read_info(mountpoint)
    if doc is None:
        raise MountError(f"no statistics published for {Path(mountpoint).absolute()} yet")
    return doc


def all_statuses() -> list[dict]:
    """Statistics of every live mlfs mount on the machine (stale ones say so)."""
    from mlfs.fuse.mountpoints import mlfs_mounts

    out = []
    for info in mlfs_mounts():
        try:
            out.append(status(info.mountpoint))
        except MountError as exc:
            out.append({"mountpoint": info.mountpoint, "error": str(exc)})
    return out


def switch(mountpoint: str | Path, manifest_ref: str, endpoint_url: str | None = None,
           profile: str | None = None, region: str | None = None) -> dict:
    """Make the mount at `mountpoint` serve another manifest; returns the mount's answer."""
    from mlfs.control import request_switch
    from mlfs.registry.client import load_mount_manifest

    _mlfs_mount(mountpoint)
    # The same loader as `mlfs mount`: every reference a mount accepts works here too.
    manifest = load_mount_manifest(manifest_ref, endpoint_url=endpoint_url, profile=profile, region=region)
    answer = request_switch(mountpoint, manifest, str(manifest_ref))
    if not answer.get("ok"):
        raise MountError(f"switch refused, still serving the previous version: {answer.get('error')}")
    return answer


def reload_rules(mountpoint: str | Path) -> int:
    import os
    import signal

    from mlfs.runinfo import verified_mount_pid

    # The published copy, not a live request: a stopped or hung process must not hang
    # this command, and the PID is checked against the FUSE connection anyway.
    pid = verified_mount_pid(_published(mountpoint), Path(mountpoint).absolute())
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise MountError(f"the mlfs process of {mountpoint} (pid {pid}) is gone") from None
    return pid


def unmount(mountpoint: str | Path) -> str:
    from mlfs.fuse.mountpoints import unmount as do_unmount

    return do_unmount(mountpoint)

