"""One mount's lifetime: mount, serve until unmounted or signalled, always clean up.

Resources are entered in order and left in reverse (limiter, fetcher, reader, FUSE
session), on success, error and signal alike. SIGTERM and SIGINT end in
`pyfuse3.terminate()` followed by `pyfuse3.close(unmount=True)`, so a signalled
daemon never leaves a dead mount behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from mlfs.command import FORWARDED_SIGNALS, MountedCommand
from mlfs.errors import MlfsError, MountError
from mlfs.fetch.fetcher import ChunkFetcher, FetchStatistics
from mlfs.fuse.inodes import InodeTable
from mlfs.fuse.mountpoints import find_mount, tune_kernel_read_ahead
from mlfs.fuse.operations import MlfsOperations
from mlfs.manifest.model import Manifest
from mlfs.mount_policy import MountPolicy, save_learned_after
from mlfs.reader import ArtifactReader, ReadAheadSettings
from mlfs.runinfo import remove_info, write_info
from mlfs.s3.source import RangeSource
from mlfs.store.chunks import ChunkStore

log = logging.getLogger(__name__)


@dataclass
class SessionSettings:
    mountpoint: Path
    uid: int
    gid: int
    allow_other: bool = False
    max_threads: int = 8
    read_ahead_max: int = 16
    buffers: int = 12
    kernel_read_ahead_kib: int = 8192
    wait_prefetch: bool = False
    learn_seconds: float = 30.0
    stats_interval: float = 2.0
    kernel_flags: tuple[str, ...] = ()  # extra mount(8) flags, e.g. noexec


class MountSession:
    def __init__(
        self,
        manifest: Manifest,
        store: ChunkStore,
        source: RangeSource,
        settings: SessionSettings,
        policy: MountPolicy | None = None,
    ) -> None:
        self.manifest = manifest
        self.policy = policy
        self.store = store
        self.source = source
        self.settings = settings
        self.table = InodeTable(manifest)
        self.reader: ArtifactReader | None = None
        self.fetcher: ChunkFetcher | None = None
        self.ops: MlfsOperations | None = None
        self.command: MountedCommand | None = None  # run while mounted, then unmount
        # Builds the policy of a manifest switched to (`mlfs switch`); None: no policy.
        self.policy_for: Callable[[Manifest], MountPolicy | None] | None = None
        # Extra tasks living as long as the mount (metrics server, control socket);
        # each is called with the session and a trio task_status.
        self.services: list[Callable[..., Any]] = []
        self.switched_at: float | None = None
        self._retired_fetchers: list[ChunkFetcher] = []
        self._limiter: trio.CapacityLimiter | None = None
        self._nursery: trio.Nursery | None = None

    def fuse_options(self) -> set[str]:
        # nosuid and nodev always, explicitly: the manifest is untrusted, and nothing in an
        # artifact should ever gain privileges or reach a device.
        opts = set(pyfuse3.default_options) | {"fsname=mlfs", "subtype=mlfs", "ro", "nosuid", "nodev"}
        opts |= set(self.settings.kernel_flags)
        if self.settings.allow_other:
            opts.add("allow_other")
        return opts

    def run(self, report_ready: Callable[[str | None], None]) -> None:
        """Mount, call `report_ready(None)` once live (or with the error), serve, unmount."""
        try:
            trio.run(self._main, report_ready)
        except BaseExceptionGroup as group:
            # Nurseries wrap task errors in groups; a domain error inside is what the
            # user needs to see, as itself.
            domain = group.subgroup(lambda e: isinstance(e, MlfsError))
            if domain is not None:
                raise _first_leaf(domain) from None
            raise
        finally:
            self.store.close()

    async def _main(self, report_ready: Callable[[str | None], None]) -> None:
        s = self.settings
        limiter = self._limiter = trio.CapacityLimiter(s.max_threads)
        self.fetcher = ChunkFetcher(self.source, self.store, self.manifest.chunk_size, limiter,
                                    buffers=s.buffers)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.reader = ArtifactReader(
                self.manifest, self.store, self.fetcher, nursery,
                ReadAheadSettings(start=1, max=s.read_ahead_max),
            )
            self.ops = MlfsOperations(self.table, self.reader, s.uid, s.gid)
            if self.policy is not None:
                self.ops.on_open = self.policy.on_open
            try:
                pyfuse3.init(self.ops, str(s.mountpoint), self.fuse_options())
            except RuntimeError as exc:
                error = MountError(f"cannot mount at {s.mountpoint}: {exc}")
                report_ready(str(error))
                raise error from None
            try:
                nursery.start_soon(self._watch_signals)
                nursery.start_soon(self._tune_read_ahead)
                if s.wait_prefetch:
                    await self._prefetch_at_mount()
                else:
                    nursery.start_soon(self._prefetch_at_mount)
                learned = self.policy.learned if self.policy is not None else None
                if learned is not None:
                    learned.start()
                    nursery.start_soon(save_learned_after, learned, s.learn_seconds)
                nursery.start_soon(self._publish_statistics)
                for service in self.services:
                    await nursery.start(service, self)
                report_ready(None)
                if self.command is not None:
                    nursery.start_soon(self._run_command)
                log.info("mounted %s %s at %s", self.manifest.name, self.manifest.version, s.mountpoint)
                await pyfuse3.main()
            finally:
                nursery.cancel_scope.cancel()
                # close() unmounts; with files still open the kernel detaches lazily.
                pyfuse3.close(unmount=True)
                self._finish()
                log.info("unmounted %s", s.mountpoint)

    async def _prefetch_at_mount(self) -> None:
        # A background task of the mount: an error here must not take the mount down.
        try:
            entries = self.reader.prefetch_entries()
            if self.policy is not None:
                await self.policy.at_mount(self.reader)
            if entries:
                await self.reader.prefetch(entries)
        except MlfsError as exc:
            log.info("mount-time prefetch stopped: %s", exc)
        except Exception:
            log.exception("mount-time prefetch failed unexpectedly")

    async def _run_command(self) -> None:
        await self.command.run()
        pyfuse3.terminate()

    async def switch(self, manifest: Manifest) -> None:
        """Serve `manifest` from now on, without unmounting.

        Files already open keep reading the version they opened; lookups and opens see
        the new tree at once. Unchanged paths keep their inode numbers (and the kernel
        keeps their cached pages); names that changed are invalidated in the kernel.
        Chunks both versions share are found in the store, not fetched again.
        """
        s = self.settings
        old_table = self.table
        table = InodeTable(manifest, previous=old_table)
        fetcher = self.fetcher
        if manifest.chunk_size != fetcher.chunk_size:
            self._retired_fetchers.append(fetcher)
            fetcher = ChunkFetcher(self.source, self.store, manifest.chunk_size, self._limiter)
        reader = ArtifactReader(manifest, self.store, fetcher, self._nursery,
                                ReadAheadSettings(start=1, max=s.read_ahead_max))
        policy = self.policy_for(manifest) if self.policy_for is not None else None
        # One synchronous step: no request is served between these assignments.
        self.ops.replace_tree(table, reader)
        self.ops.on_open = policy.on_open if policy is not None else None
        self.table, self.reader, self.fetcher, self.manifest, self.policy = table, reader, fetcher, manifest, policy
        self.switched_at = time.time()
        entries, dirs = table.changes_since(old_table)
        for parent, name in entries:
            await trio.to_thread.run_sync(_invalidate_entry, parent, name)
        for inode in dirs:
            await trio.to_thread.run_sync(_invalidate_inode, inode)
        log.info("switched %s to %s %s (%d names changed)", s.mountpoint, manifest.name,
                 manifest.version, len(entries))
        self._nursery.start_soon(self._prefetch_at_mount)

    def fetch_statistics(self) -> FetchStatistics | None:
        """Fetch counters of this mount, over every fetcher it has used."""
        if self.fetcher is None:
            return None
        total = self.fetcher.statistics()
        for old in self._retired_fetchers:
            total = total.plus(old.statistics())
        return total

    def statistics(self) -> dict[str, Any]:
        fetch = self.fetch_statistics()
        store = dataclasses.asdict(self.store.statistics())  # counts the store's files: once
        files = self.ops.statistics() if self.ops else {}
        doc: dict[str, Any] = {
            "pid": os.getpid(),
            "mountpoint": str(self.settings.mountpoint),
            "manifest": {"name": self.manifest.name, "version": self.manifest.version},
            "cache": str(self.store.root),
            "s3": {"endpoint": self.source.endpoint, "client": self.source.kind},
            "fetch": dataclasses.asdict(fetch) if fetch else {},
            "store": store,
            "open_files": files.get("open_files", 0),
            "files": files,
            "switched_at": self.switched_at,
        }
        if self.policy is not None:
            doc["policy"] = self.policy.statistics()
        return doc

    async def _publish_statistics(self) -> None:
        said = None
        while True:
            try:
                write_info(self.settings.mountpoint, self.statistics())
            except (OSError, MountError) as exc:
                # Said once: the mount serves on without status/reload support.
                if str(exc) != said:
                    said = str(exc)
                    log.warning("cannot publish mount statistics (status and reload will not work): %s", exc)
            await trio.sleep(self.settings.stats_interval)

    def _finish(self) -> None:
        learned = self.policy.learned if self.policy is not None else None
        if learned is not None:
            try:
                learned.save()
            except OSError as exc:
                log.info("cannot save the learned prefetch list: %s", exc)
        remove_info(self.settings.mountpoint)

    async def _tune_read_ahead(self) -> None:
        # The kernel takes its read-ahead size from our INIT reply, which pyfuse3 sends
        # with the default (128 KiB) once the main loop runs; a stat of the mountpoint
        # returns only after INIT, so the sysfs setting written then sticks.
        s = self.settings
        if not s.kernel_read_ahead_kib:
            return
        with trio.move_on_after(30):
            await trio.to_thread.run_sync(os.stat, s.mountpoint, abandon_on_cancel=True)
            info = find_mount(s.mountpoint)
            if info is None or not tune_kernel_read_ahead(info, s.kernel_read_ahead_kib):
                log.info("could not raise the kernel read-ahead for %s (needs root)", s.mountpoint)

    async def _watch_signals(self) -> None:
        watched = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
        if self.command is not None:
            watched |= set(FORWARDED_SIGNALS)
        with trio.open_signal_receiver(*watched) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    if self.policy is not None:
                        self.policy.reload()
                    continue
                # With a command running, it decides: its exit ends the mount.
                if self.command is not None and self.command.forward(signum):
                    log.info("signal %d: forwarded to %s", signum, self.command.argv[0])
                    continue
                if signum not in (signal.SIGTERM, signal.SIGINT):
                    continue
                log.info("signal %d: unmounting", signum)
                pyfuse3.terminate()
                return


def _invalidate_entry(parent: int, name: bytes) -> None:
    # ENOENT: the kernel had nothing cached under that name.
    with contextlib.suppress(OSError):
        pyfuse3.invalidate_entry(parent, name)


def _invalidate_inode(inode: int) -> None:
    with contextlib.suppress(OSError):  # not cached by the kernel
        pyfuse3.invalidate_inode(inode, attr_only=True)


def _first_leaf(group: BaseException) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group
