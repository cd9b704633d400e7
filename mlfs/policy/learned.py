"""Learned prefetch: remember which chunks a workload read right after mount.

The first N seconds after a mount are when a model server or a training job loads
what it needs; the set is the same from one start to the next. A mount (with the
flag on) records the chunks read in that window; the next mount of the same artifact
prefetches that set first, in the order it was read.

Stored as <cache_dir>/learned/<name>@<version>-<digest>.json, where the digest covers
the manifest's file list (paths, sizes, SHA-256), so a changed artifact never uses a
stale trace. Format:

    {"schema": "mlfs.learned/1", "name": ..., "version": ..., "files_digest": ...,
     "window_seconds": 30.0,
     "chunks": [{"path": "model.safetensors", "index": 0, "sha256": "...", "t": 0.12}, ...]}

Entries are checked against the manifest on load; ones that no longer fit are dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from mlfs.manifest.model import FileEntry, Manifest

SCHEMA = "mlfs.learned/1"
DEFAULT_WINDOW_SECONDS = 30.0
MAX_CHUNKS = 200_000  # bounds memory and file size even for a job that reads everything
MAX_FILE_BYTES = 64 * 1024 * 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnedChunk:
    path: str
    index: int
    sha256: str
    t: float  # seconds after the recording started


def files_digest(manifest: Manifest) -> str:
    h = hashlib.sha256()
    for f in sorted(manifest.files, key=lambda f: f.path):
        h.update(f"{f.path}\x00{f.size}\x00{f.sha256}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def learned_path(cache_dir: str | Path, manifest: Manifest) -> Path:
    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:64] or "_"

    name = f"{safe(manifest.name)}@{safe(manifest.version)}-{files_digest(manifest)[:16]}.json"
    return Path(cache_dir) / "learned" / name


class LearnedPrefetch:
    """Records reads during the window after `start()`; saves and loads the chunk list."""

    def __init__(
        self,
        cache_dir: str | Path,
        manifest: Manifest,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manifest = manifest
        self.path = learned_path(cache_dir, manifest)
        self.window_seconds = window_seconds
        self._clock = clock
        self._files: dict[str, FileEntry] = {f.path: f for f in manifest.files}
        self._lock = threading.Lock()
        self._started: float | None = None
        self._seen: dict[tuple[str, int], LearnedChunk] = {}

    def start(self, now: float | None = None) -> None:
        """Begin the recording window (call when the mount is ready)."""
        with self._lock:
            self._started = self._clock() if now is None else now
            self._seen.clear()

    def recording(self, now: float | None = None) -> bool:
        started = self._started
        if started is None:
            return False
        return (self._clock() if now is None else now) - started <= self.window_seconds

    def record(self, path: str, offset: int, size: int, now: float | None = None) -> None:
        """Note a read; cheap no-op outside the window or for unknown paths."""
        now = self._clock() if now is None else now
        entry = self._files.get(path)
        if entry is None or size <= 0 or not self.recording(now):
            return
        chunk_size = self.manifest.chunk_size
        first = offset // chunk_size
        last = min((offset + size - 1) // chunk_size, len(entry.chunks) - 1)
        with self._lock:
            for index in range(first, last + 1):
                if len(self._seen) >= MAX_CHUNKS:
                    return
                key = (path, index)
                if key not in self._seen:
                    self._seen[key] = LearnedChunk(path, index, entry.chunks[index], now - (self._started or now))

    def recorded(self) -> list[LearnedChunk]:
        with self._lock:
            return sorted(self._seen.values(), key=lambda c: c.t)

    def save(self) -> Path | None:
        """Write what was recorded (atomically); None when nothing was read in the window."""
        chunks = self.recorded()
        if not chunks:
            return None
        doc = {
            "schema": SCHEMA,
            "name": self.manifest.name,
            "version": self.manifest.version,
            "files_digest": files_digest(self.manifest),
            "window_seconds": self.window_seconds,
            "chunks": [asdict(c) for c in chunks],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".learned-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, separators=(",", ":"))
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.path

    def load(self) -> list[LearnedChunk]:
        """Chunks to prefetch first, in the order they were read; [] when nothing usable."""
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("learned prefetch %s: cannot read: %s; ignoring it", self.path, exc.strerror)
            return []
        try:
            doc = json.loads(raw)
            if len(raw) > MAX_FILE_BYTES or not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
                raise ValueError("not a learned prefetch file")
            if doc.get("files_digest") != files_digest(self.manifest):
                raise ValueError("recorded for a different file list")
            items = doc["chunks"]
            if not isinstance(items, list):
                raise ValueError("'chunks' is not a list")
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            log.warning("learned prefetch %s: %s; ignoring it", self.path, exc)
            return []
        out = []
        for item in items[:MAX_CHUNKS]:
            chunk = self._valid(item)
            if chunk is not None:
                out.append(chunk)
        return out

    def _valid(self, item: object) -> LearnedChunk | None:
        if not isinstance(item, dict):
            return None
        entry = self._files.get(item.get("path"))  # type: ignore[arg-type]
        index, t = item.get("index"), item.get("t")
        if entry is None or not isinstance(index, int) or isinstance(index, bool):
            return None
        if not 0 <= index < len(entry.chunks) or entry.chunks[index] != item.get("sha256"):
            return None
        return LearnedChunk(entry.path, index, entry.chunks[index], float(t) if isinstance(t, int | float) else 0.0)
