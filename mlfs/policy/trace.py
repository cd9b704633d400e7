"""Recorded access traces and their replay through a PolicyEngine (`mlfs rules test`).

Trace format: JSON lines, one read per line, in time order:

    {"t": 0.013, "path": "model-00001-of-00002.safetensors", "offset": 0, "size": 8, "pid": 4242}

`t` seconds since the trace began (number), `path` a file of the manifest, `offset`
and `size` bytes (integers >= 0), `pid` optional (integer). Blank lines and lines
starting with '#' are skipped. Unknown keys are errors, like everywhere in rules.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mlfs.manifest.model import Manifest
from mlfs.policy.access import AccessTracker
from mlfs.policy.context import AccessContext, FileContext
from mlfs.policy.decision import FileDecision
from mlfs.policy.engine import PolicyEngine
from mlfs.policy.errors import Problem, RuleError
from mlfs.policy.workload import WorkloadContext

MAX_TRACE_LINES = 10_000_000
_KEYS = {"t", "path", "offset", "size", "pid"}


@dataclass(frozen=True)
class TraceEvent:
    t: float
    path: str
    offset: int
    size: int
    pid: int | None = None

    def to_json_line(self) -> str:
        """The trace line for this read (how a mount records a trace for `mlfs rules test`)."""
        doc: dict[str, object] = {"t": round(self.t, 6), "path": self.path, "offset": self.offset, "size": self.size}
        if self.pid is not None:
            doc["pid"] = self.pid
        return json.dumps(doc) + "\n"


@dataclass(frozen=True)
class ReplayStep:
    event: TraceEvent | None  # None for the mount-time decision of a file
    path: str
    access: AccessContext | None
    decision: FileDecision
    changed: bool  # the decision differs from the previous one for this path


def read_trace(path: str | Path, manifest: Manifest | None = None) -> list[TraceEvent]:
    """Parse a trace file; RuleError lists every bad line (file:line: what was expected)."""
    problems: list[Problem] = []
    events: list[TraceEvent] = []
    known = {f.path for f in manifest.files} if manifest is not None else None
    name = str(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                if lineno > MAX_TRACE_LINES:
                    problems.append(Problem(name, lineno, f"more than {MAX_TRACE_LINES} lines"))
                    break
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                event = _event(text, known, name, lineno, problems)
                if event is None:
                    continue
                if events and event.t < events[-1].t:
                    problems.append(Problem(name, lineno, f"t={event.t} goes back in time (previous {events[-1].t})"))
                events.append(event)
    except OSError as exc:
        raise RuleError(Problem(name, 0, f"cannot read trace: {exc.strerror}")) from None
    if problems:
        raise RuleError(problems)
    return events


def _event(text: str, known: set[str] | None, name: str, lineno: int, problems: list[Problem]) -> TraceEvent | None:
    def bad(msg: str) -> None:
        problems.append(Problem(name, lineno, msg))

    try:
        doc = json.loads(text)
    except ValueError as exc:
        bad(f"not a JSON object: {exc}")
        return None
    if not isinstance(doc, dict):
        bad("expected a JSON object {t, path, offset, size, pid?}")
        return None
    unknown = set(doc) - _KEYS
    missing = {"t", "path", "offset", "size"} - set(doc)
    if unknown or missing:
        bad(f"expected keys t, path, offset, size (and optional pid); "
            f"{'unknown: ' + ', '.join(sorted(unknown)) if unknown else 'missing: ' + ', '.join(sorted(missing))}")
        return None
    t, path, offset, size, pid = doc["t"], doc["path"], doc["offset"], doc["size"], doc.get("pid")
    if isinstance(t, bool) or not isinstance(t, int | float) or t < 0:
        bad(f"t must be a number of seconds >= 0, got {t!r}")
    elif not isinstance(path, str) or not path:
        bad(f"path must be a non-empty string, got {path!r}")
    elif known is not None and path not in known:
        bad(f"path {path!r} is not a file of the manifest")
    elif not _count(offset) or not _count(size):
        bad(f"offset and size must be integers >= 0, got {offset!r} and {size!r}")
    elif pid is not None and not _count(pid):
        bad(f"pid must be an integer, got {pid!r}")
    else:
        return TraceEvent(float(t), path, offset, size, pid)
    return None


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def replay(
    engine: PolicyEngine,
    manifest: Manifest,
    events: Iterable[TraceEvent],
    workload: WorkloadContext | None = None,
) -> list[ReplayStep]:
    """Mount-time decisions for every file, then one decision per read in the trace."""
    files = {f.path: FileContext.from_entry(f) for f in manifest.files}
    last: dict[str, FileDecision] = {}
    steps: list[ReplayStep] = []
    for path, ctx in files.items():
        decision = engine.decide(ctx, workload=workload, count=False)
        last[path] = decision
        steps.append(ReplayStep(None, path, None, decision, changed=True))
    trackers: dict[tuple[str, int | None], AccessTracker] = {}
    pids: dict[str, set[int | None]] = {}
    for event in events:
        if event.path not in files:
            raise RuleError(f"trace: {event.path!r} is not a file of manifest {manifest.name!r}")
        tracker = trackers.setdefault((event.path, event.pid), AccessTracker())
        tracker.record(event.offset, event.size, event.pid, now=event.t)
        readers = pids.setdefault(event.path, set())
        readers.add(event.pid)
        # Per-reader pattern, but 'processes' counts every reader of the file.
        access = dataclasses.replace(tracker.context(), processes=len(readers))
        decision = engine.decide(files[event.path], access=access, workload=workload, count=False)
        changed = decision != last.get(event.path)
        last[event.path] = decision
        steps.append(ReplayStep(event, event.path, access, decision, changed))
    return steps
