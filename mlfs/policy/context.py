"""What a rule can look at: the file, how it is being read, who reads it, the machine.

Each condition names one property (`file.size`, `access.pattern`, ...). A property
whose context is not known at decision time (no access yet at mount) has no value,
and a condition on it does not match: rules about reads apply once there are reads.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from mlfs.manifest.model import FileEntry
from mlfs.policy.formats import FORMATS, detect_format, extension
from mlfs.policy.workload import FRAMEWORKS, PHASES, WorkloadContext

PATTERNS = ("sequential", "random", "strided", "unknown")


@dataclass(frozen=True)
class FileContext:
    path: str
    size: int
    format: str = "unknown"

    @classmethod
    def from_entry(cls, entry: FileEntry, head: bytes | None = None) -> FileContext:
        return cls(path=entry.path, size=entry.size, format=detect_format(entry.path, head))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def extension(self) -> str:
        return extension(self.path)


@dataclass(frozen=True)
class AccessContext:
    """How one open file has been read so far (see `AccessTracker`)."""

    pattern: str = "unknown"
    bytes_read: int = 0
    reads_per_second: float = 0.0
    processes: int = 1


@dataclass(frozen=True)
class SystemContext:
    """Machine state; None means 'not measured', and conditions on it do not match."""

    free_memory: int | None = None
    free_store: int | None = None
    fetch_concurrency: int | None = None  # range fetches in flight right now


class Situation(NamedTuple):
    file: FileContext
    access: AccessContext | None
    workload: WorkloadContext | None
    system: SystemContext | None


# Kinds decide which operators apply and how a condition's value is parsed.
TEXT, NAME, BYTES, NUMBER = "text", "name", "bytes", "number"


@dataclass(frozen=True)
class Property:
    name: str
    kind: str
    get: Callable[[Situation], Any]
    choices: tuple[str, ...] = ()
    help: str = ""


def _from(context: str, attr: str) -> Callable[[Situation], Any]:
    def get(s: Situation) -> Any:
        ctx = getattr(s, context)
        return None if ctx is None else getattr(ctx, attr)

    return get


PROPERTIES: dict[str, Property] = {
    p.name: p
    for p in (
        Property("file.path", TEXT, _from("file", "path"), help="path inside the mount"),
        Property("file.name", TEXT, _from("file", "name"), help="last path component"),
        Property("file.extension", TEXT, _from("file", "extension"), help="lower-case, with dot: '.json'"),
        Property("file.size", BYTES, _from("file", "size")),
        Property("file.format", NAME, _from("file", "format"), FORMATS),
        Property("access.pattern", NAME, _from("access", "pattern"), PATTERNS),
        Property("access.bytes_read", BYTES, _from("access", "bytes_read")),
        Property("access.reads_per_second", NUMBER, _from("access", "reads_per_second")),
        Property("access.processes", NUMBER, _from("access", "processes"), help="processes with the file open"),
        Property("workload.framework", NAME, _from("workload", "framework"), FRAMEWORKS),
        Property("workload.phase", NAME, _from("workload", "phase"), PHASES),
        Property("system.free_memory", BYTES, _from("system", "free_memory")),
        Property("system.free_store", BYTES, _from("system", "free_store")),
        Property("system.fetch_concurrency", NUMBER, _from("system", "fetch_concurrency")),
    )
}
