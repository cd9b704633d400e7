"""Apply policy decisions to a running reader (FUSE-free).

At mount: prefetch and pin what the rules say, learned-prefetch chunks first. On open:
choose the handle's read-ahead and drop-behind, prefetch on open (whole, head, or the
safetensors header then its tensors in file order). On every read: count prefetched
bytes that were used, record learned-prefetch traces, and re-decide when the access
pattern changes.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field

import trio

from mlfs.errors import MlfsError
from mlfs.manifest.model import FileEntry, Manifest
from mlfs.policy import (
    AccessTracker,
    FileContext,
    FileDecision,
    FormatError,
    LearnedPrefetch,
    PolicyEngine,
    RuleError,
    SystemContext,
    WorkloadContext,
    detect_workload,
    process_cmdline,
    safetensors_header_length,
    safetensors_tensor_ranges,
)
from mlfs.reader import ArtifactReader, OpenFile

log = logging.getLogger(__name__)

_REDECIDE_EVERY = 16  # reads between access-pattern checks on one handle


@dataclass
class _HandleState:
    decision: FileDecision
    tracker: AccessTracker = field(default_factory=AccessTracker)
    pattern: str = "unknown"


class MountPolicy:
    def __init__(
        self,
        engine: PolicyEngine,
        manifest: Manifest,
        workload: WorkloadContext | None = None,
        learned: LearnedPrefetch | None = None,
    ) -> None:
        self.engine = engine
        self.manifest = manifest
        self.workload = workload  # fixed by option/env; None = detect per process
        self.learned = learned
        self.reader: ArtifactReader | None = None
        self._prefetched: dict[str, str] = {}  # digest → rule id, until first read
        self._pinned_bytes = 0
        self._pid_workloads: dict[int, WorkloadContext] = {}

    # --------------------------------------------------------------- contexts
    def system(self) -> SystemContext:
        free_mem = None
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        free_mem = int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
        free_store = None
        if self.reader is not None:
            free_store = shutil.disk_usage(self.reader.store.root).free
            if self.reader.store.budget is not None:
                free_store = min(free_store, max(0, self.reader.store.budget - self.reader.store.usage))
        busy = self.reader.fetcher.limiter.borrowed_tokens if self.reader is not None else 0
        return SystemContext(free_memory=free_mem, free_store=free_store, fetch_concurrency=busy)

    def workload_for(self, pid: int | None) -> WorkloadContext | None:
        if self.workload is not None or pid is None:
            return self.workload
        cached = self._pid_workloads.get(pid)
        if cached is None:
            cached = detect_workload(process_cmdline(pid), os.environ)
            if len(self._pid_workloads) > 4096:
                self._pid_workloads.clear()
            self._pid_workloads[pid] = cached
        return cached

    def decide(self, entry: FileEntry, tracker: AccessTracker | None = None, pid: int | None = None,
               count: bool = True, system: SystemContext | None = None) -> FileDecision:
        return self.engine.decide(
            FileContext.from_entry(entry),
            access=tracker.context() if tracker is not None else None,
            workload=self.workload_for(pid),
            system=system or self.system(),
            count=count,
        )

    # ------------------------------------------------------------------ mount
    async def at_mount(self, reader: ArtifactReader) -> None:
        """Decide for every file; run learned and mount-time prefetch, apply pins."""
        self.reader = reader
        reader.listeners.append(self.on_read)
        plans: list[tuple[int, FileEntry, FileDecision]] = []
        system = self.system()  # one reading for all files: mount is one moment
        for entry in self.manifest.files:
            d = self.decide(entry, system=system)
            if d.pin:
                self._pin(entry, d)
            if d.prefetch_when == "mount":
                plans.append((d.fetch_priority, entry, d))
        if self.learned is not None:
            await self._learned_first(reader)
        plans.sort(key=lambda p: -p[0])
        # One window for all files, filled in file order: the next file starts while the
        # last chunks of the previous one are still in flight, and a loader reading the
        # files in that order finds each one ahead of it.
        width = max((d.stream_parallel for _p, _e, d in plans), default=1)
        shared = trio.Semaphore(width)
        async with trio.open_nursery() as n:
            for _prio, entry, d in plans:
                await self.prefetch(entry, d, (shared, n))

    async def _learned_first(self, reader: ArtifactReader) -> None:
        files = {f.path: f for f in self.manifest.files}
        chunks = [(files[c.path], c.index) for c in self.learned.load() if c.path in files]
        if chunks:
            log.info("learned prefetch: %d chunks recorded by an earlier mount", len(chunks))
            for e, i in chunks:
                self._mark_prefetched(e, i, "learned-prefetch")
            await reader.prefetch_chunks(chunks, parallel=8)

    def _pin(self, entry: FileEntry, d: FileDecision) -> None:
        budget = self.engine.pin_budget
        store = self.reader.store
        if budget is not None and store.budget is None:
            budget = None  # a percentage of an unbounded store: no limit to enforce
        if budget is not None and self._pinned_bytes + entry.size > budget:
            log.info("pin budget reached; %s is not pinned", entry.path)
            return
        store.pin(list(entry.chunks))
        self._pinned_bytes += entry.size
        self.engine.counters.pinned(d.rule_for("pin") or "?", entry.size)

    # ------------------------------------------------------------------- open
    def on_open(self, entry: FileEntry, handle: OpenFile, pid: int | None) -> None:
        handle.pid = pid
        d = self.decide(entry, pid=pid)
        state = _HandleState(d)
        handle.policy_state = state
        self._apply_stream(handle, d)
        if d.prefetch_when == "open" and self.reader is not None:
            self.reader.nursery.start_soon(self.prefetch, entry, d)

    def _apply_stream(self, handle: OpenFile, d: FileDecision) -> None:
        s = handle.settings
        cap = self.reader.read_ahead.max if self.reader is not None else d.stream_window_max
        s.max = min(cap, max(d.stream_window_start, d.stream_window_max))
        s.start = min(d.stream_window_start, s.max)
        s.drop_behind = d.drop_behind or d.cache_priority == "none"
        handle.window = min(handle.window, s.max)

    # ------------------------------------------------------------------- read
    def on_read(self, entry: FileEntry, offset: int, length: int, handle: OpenFile | None) -> None:
        if length <= 0:
            return
        cs = self.manifest.chunk_size
        if self._prefetched:
            for index in range(offset // cs, (offset + length - 1) // cs + 1):
                rule = self._prefetched.pop(entry.chunks[index], None)
                if rule is not None:
                    start, end = entry.chunk_range(index, cs)
                    self.engine.counters.prefetch_used(rule, end - start)
        if self.learned is not None:
            self.learned.record(entry.path, offset, length)
        state = handle.policy_state if handle is not None else None
        if isinstance(state, _HandleState):
            state.tracker.record(offset, length, handle.pid)
            if handle.reads % _REDECIDE_EVERY == 0:
                pattern = state.tracker.pattern()
                if pattern != state.pattern:
                    state.pattern = pattern
                    state.decision = self.decide(entry, state.tracker, handle.pid, count=False)
                    self._apply_stream(handle, state.decision)

    # --------------------------------------------------------------- prefetch
    async def prefetch(self, entry: FileEntry, d: FileDecision,
                       queue: tuple[trio.Semaphore, trio.Nursery] | None = None) -> None:
        """Prefetch what `d` says of `entry`; with `queue`, only enqueue into that shared window.

        Runs as a background task of the mount: whatever goes wrong stays here (logged),
        because an exception leaving it would tear the whole mount down.
        """
        try:
            await self._prefetch(entry, d, queue)
        except MlfsError as exc:
            log.info("prefetch of %s skipped: %s", entry.path, exc)
        except Exception:
            log.exception("prefetch of %s failed unexpectedly", entry.path)

    async def _prefetch(self, entry: FileEntry, d: FileDecision,
                        queue: tuple[trio.Semaphore, trio.Nursery] | None) -> None:
        reader = self.reader
        rule = d.rule_for("prefetch") or "?"
        indices = await self._prefetch_plan(entry, d)
        fetcher = reader.fetcher
        todo = [(entry, i) for i in indices
                if not fetcher.is_ready(entry.chunks[i]) and not fetcher.is_in_flight(entry.chunks[i])]
        # Claim the chunks before fetching: a reader may get to them while they are in
        # flight, and that read is exactly what the prefetch was for.
        for e, i in todo:
            self._mark_prefetched(e, i, rule)
        if queue is None:
            await reader.prefetch_chunks(todo, parallel=max(1, d.stream_parallel))
        else:
            await reader.enqueue_chunks(todo, *queue)

    def _mark_prefetched(self, entry: FileEntry, index: int, rule: str) -> None:
        start, end = entry.chunk_range(index, self.manifest.chunk_size)
        digest = entry.chunks[index]
        if digest not in self._prefetched:
            self._prefetched[digest] = rule
            self.engine.counters.prefetched(rule, end - start)

    async def _prefetch_plan(self, entry: FileEntry, d: FileDecision) -> list[int]:
        cs = self.manifest.chunk_size
        n = len(entry.chunks)
        if d.prefetch_what == "head":
            limit = min(entry.size, d.prefetch_bytes or cs)
            return list(range(0, (limit - 1) // cs + 1)) if limit else []
        if d.prefetch_what == "safetensors" and entry.size >= 8:
            reader = self.reader
            # Not urgent: at mount, a header read must not take the buffer of a chunk
            # fetched ahead for the loader (the first shard's, while later shards plan).
            first8 = await reader.read_range(entry, 0, 8, urgent=False)
            try:
                # The header is file content, so untrusted: every range it names is
                # checked against the manifest's size before a chunk list is built.
                header_len = safetensors_header_length(first8, entry.size)
                header = await reader.read_range(entry, 0, header_len, urgent=False)
                ranges = safetensors_tensor_ranges(header, entry.size)
            except FormatError as exc:
                log.info("%s: not a readable safetensors header (%s); prefetching it whole", entry.path, exc)
                return list(range(n))
            return _chunks_in_order(ranges, cs, n)
        return list(range(n))

    # ----------------------------------------------------------------- reload
    def reload(self) -> None:
        try:
            self.engine.reload()
            log.info("policy rules reloaded (%d rules)", len(self.engine.rules))
        except RuleError as exc:
            log.error("rule reload failed, keeping the old rules: %s", exc)

    def statistics(self) -> dict:
        return {"rules": self.engine.counters.to_json(), "pinned_bytes": self._pinned_bytes}


def _chunks_in_order(ranges: list[tuple[int, int]], chunk_size: int, count: int) -> list[int]:
    """Chunk indices covering `ranges`, in order of first use, each once, all below `count`."""
    order: list[int] = []
    seen: set[int] = set()
    for start, end in sorted(ranges):
        if end <= start:
            continue
        for index in range(start // chunk_size, min(count, (end - 1) // chunk_size + 1)):
            if index not in seen:
                seen.add(index)
                order.append(index)
        if len(seen) == count:
            break
    return order


async def save_learned_after(learned: LearnedPrefetch, seconds: float) -> None:
    await trio.sleep(seconds)
    await trio.to_thread.run_sync(learned.save)
