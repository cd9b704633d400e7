"""One mount's lifetime: mount, serve until unmounted or signalled, always clean up.

Resources are entered in order and left in reverse (limiter, fetcher, reader, FUSE
session), on success, error and signal alike. SIGTERM and SIGINT end in
`pyfuse3.terminate()` followed by `pyfuse3.close(unmount=True)`, so a signalled
daemon never leaves a dead mount behind.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from mlfs.errors import MountError
from mlfs.fetch.fetcher import ChunkFetcher
from mlfs.fuse.inodes import InodeTable
from mlfs.fuse.mountpoints import find_mount, tune_kernel_read_ahead
from mlfs.fuse.operations import MlfsOperations
from mlfs.manifest.model import Manifest
from mlfs.reader import ArtifactReader, ReadAheadSettings
from mlfs.store.chunks import ChunkStore

log = logging.getLogger(__name__)


@dataclass
class SessionSettings:
    mountpoint: Path
    uid: int
    gid: int
    allow_other: bool = False
    max_threads: int = 16
    read_ahead_max: int = 8
    kernel_read_ahead_kib: int = 8192
    wait_prefetch: bool = False


class MountSession:
    def __init__(self, manifest: Manifest, store: ChunkStore, client: Any, settings: SessionSettings) -> None:
        self.manifest = manifest
        self.store = store
        self.client = client
        self.settings = settings
        self.table = InodeTable(manifest)
        self.reader: ArtifactReader | None = None
        self.fetcher: ChunkFetcher | None = None
        self.ops: MlfsOperations | None = None
        # Hooks for layers above (policy engine): called inside the trio run.
        self.on_started: Callable[[MountSession, trio.Nursery], Awaitable[None]] | None = None
        self.on_reload: Callable[[], None] | None = None

    def fuse_options(self) -> set[str]:
        opts = set(pyfuse3.default_options) | {"fsname=mlfs", "subtype=mlfs", "ro"}
        if self.settings.allow_other:
            opts.add("allow_other")
        return opts

    def run(self, report_ready: Callable[[str | None], None]) -> None:
        """Mount, call `report_ready(None)` once live (or with the error), serve, unmount."""
        try:
            trio.run(self._main, report_ready)
        finally:
            self.store.close()

    async def _main(self, report_ready: Callable[[str | None], None]) -> None:
        s = self.settings
        limiter = trio.CapacityLimiter(s.max_threads)
        self.fetcher = ChunkFetcher(self.client, self.store, self.manifest.chunk_size, limiter)
        async with trio.open_nursery() as nursery:
            self.reader = ArtifactReader(
                self.manifest, self.store, self.fetcher, nursery,
                ReadAheadSettings(start=1, max=s.read_ahead_max),
            )
            self.ops = MlfsOperations(self.table, self.reader, s.uid, s.gid)
            try:
                pyfuse3.init(self.ops, str(s.mountpoint), self.fuse_options())
            except RuntimeError as exc:
                error = MountError(f"cannot mount at {s.mountpoint}: {exc}")
                report_ready(str(error))
                raise error from None
            try:
                nursery.start_soon(self._watch_signals)
                nursery.start_soon(self._tune_read_ahead)
                if self.on_started is not None:
                    await self.on_started(self, nursery)
                entries = self.reader.prefetch_entries()
                if entries:
                    if s.wait_prefetch:
                        await self.reader.prefetch(entries)
                    else:
                        nursery.start_soon(self.reader.prefetch, entries)
                report_ready(None)
                log.info("mounted %s %s at %s", self.manifest.name, self.manifest.version, s.mountpoint)
                await pyfuse3.main()
            finally:
                nursery.cancel_scope.cancel()
                # close() unmounts; with files still open the kernel detaches lazily.
                pyfuse3.close(unmount=True)
                log.info("unmounted %s", s.mountpoint)

    async def _tune_read_ahead(self) -> None:
        # The kernel takes its read-ahead size from our INIT reply, which pyfuse3 sends
        # with the default (128 KiB) once the main loop runs; a stat of the mountpoint
        # returns only after INIT, so the sysfs setting written then sticks.
        s = self.settings
        if not s.kernel_read_ahead_kib:
            return
        with trio.move_on_after(30):
            await trio.to_thread.run_sync(os.stat, s.mountpoint, cancellable=True)
            info = find_mount(s.mountpoint)
            if info is None or not tune_kernel_read_ahead(info, s.kernel_read_ahead_kib):
                log.info("could not raise the kernel read-ahead for %s (needs root)", s.mountpoint)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    if self.on_reload is not None:
                        self.on_reload()
                    continue
                log.info("signal %d: unmounting", signum)
                pyfuse3.terminate()
                return
