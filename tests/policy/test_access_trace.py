"""Access-pattern classification, trace parsing, and replaying a trace through the rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlfs.policy import AccessTracker, PolicyEngine, RuleError, WorkloadContext
from mlfs.policy.explain import format_replay
from mlfs.policy.trace import read_trace, replay
from tests.policy.helpers import CHUNK, HF_MODEL, make_manifest, write


def classify(reads: list[tuple[int, int]]) -> str:
    tracker = AccessTracker()
    for i, (offset, size) in enumerate(reads):
        tracker.record(offset, size, pid=1, now=float(i))
    return tracker.pattern()


def test_patterns() -> None:
    assert classify([]) == "unknown"
    assert classify([(0, 4096)]) == "sequential"
    assert classify([(8192, 4096)]) == "unknown"
    assert classify([(i * 4096, 4096) for i in range(6)]) == "sequential"
    # small reorderings from kernel read-ahead still count as sequential
    assert classify([(0, 4096), (8192, 4096), (4096, 4096), (12288, 4096), (16384, 4096)]) == "sequential"
    assert classify([(i * CHUNK, 4096) for i in range(6)]) == "strided"
    assert classify([(o * 977 * 4096, 4096) for o in (5, 1, 9, 3, 7, 2)]) == "random"


def test_context_counts_bytes_rate_and_processes() -> None:
    tracker = AccessTracker()
    for i in range(5):
        tracker.record(i * 100, 100, pid=10 + i % 2, now=i * 0.5)
    ctx = tracker.context()
    assert (ctx.bytes_read, ctx.processes, ctx.pattern) == (500, 2, "sequential")
    assert ctx.reads_per_second == pytest.approx(2.0)


def test_read_trace_reports_every_bad_line(tmp_path: Path) -> None:
    manifest = make_manifest({"a.bin": 10 * CHUNK})
    trace = write(tmp_path, "t.jsonl", """
        # comment lines and blank lines are skipped

        {"t": 0.0, "path": "a.bin", "offset": 0, "size": 10}
        {"t": 0.1, "path": "b.bin", "offset": 0, "size": 10}
        {"t": 0.2, "path": "a.bin", "offset": -1, "size": 10}
        {"t": 0.3, "path": "a.bin", "offset": 0, "size": 10, "fd": 3}
        not json
        {"t": 0.5, "path": "a.bin", "offset": 10, "size": 10, "pid": 7}
        {"t": 0.4, "path": "a.bin", "offset": 20, "size": 10, "pid": 7}
        """)
    with pytest.raises(RuleError) as info:
        read_trace(trace, manifest)
    got = [(p.line, p.message.split(";")[0].split(":")[0]) for p in info.value.problems]
    assert [line for line, _ in got] == [4, 5, 6, 7, 9]
    messages = " | ".join(p.message for p in info.value.problems)
    assert "'b.bin' is not a file of the manifest" in messages
    assert "unknown: fd" in messages and "goes back in time" in messages


def test_replay_shows_mount_decisions_then_changes(tmp_path: Path) -> None:
    manifest = make_manifest({**HF_MODEL, "data/train-0.parquet": 40 * CHUNK, "blob.raw": 40 * CHUNK})
    lines = ['{"t": 0.0, "path": "config.json", "offset": 0, "size": 700, "pid": 1}']
    lines += [f'{{"t": {0.1 + i / 100}, "path": "blob.raw", "offset": {i * CHUNK}, "size": {CHUNK}, "pid": 1}}'
              for i in range(4)]
    lines += [f'{{"t": {0.2 + i / 100}, "path": "blob.raw", "offset": {o * CHUNK}, "size": 4096, "pid": 2}}'
              for i, o in enumerate((30, 3, 17, 8))]
    trace = write(tmp_path, "t.jsonl", "\n".join(lines) + "\n")
    engine = PolicyEngine.load(manifest)
    steps = replay(engine, manifest, read_trace(trace, manifest), WorkloadContext("transformers", "inference"))
    mount = {s.path: s.decision for s in steps if s.event is None}
    assert mount["config.json"].prefetch_when == "mount"
    assert mount["data/train-0.parquet"].drop_behind
    blob = [s for s in steps if s.path == "blob.raw" and s.event is not None]
    assert blob[0].access.pattern == "sequential" and blob[0].decision.stream_window_max == 16
    # the second process reads at random: its own pattern, and both processes counted
    assert blob[-1].access.pattern == "random" and blob[-1].access.processes == 2
    assert blob[-1].decision.stream_window_max == 1
    # pid 2's first read is mid-file (pattern unknown: defaults), its second makes it random
    assert [s.changed for s in blob] == [True, False, False, False, True, True, False, False]
    table = format_replay(steps)
    assert "mount" in table and "sequential-reads-grow-window" in table and "random-reads-no-readahead" in table
    # header, mount rows, then changes: config.json's first read, blob.raw three times
    assert len(table.splitlines()) == 1 + len(manifest.files) + 4
    assert engine.counters.statistics() == {}  # replays do not count as mount decisions


def test_trace_lines_round_trip(tmp_path: Path) -> None:
    from mlfs.policy.trace import TraceEvent

    events = [TraceEvent(0.5, "a.bin", 0, 10, 42), TraceEvent(1.25, "a.bin", 10, 10)]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(e.to_json_line() for e in events))
    assert read_trace(path, make_manifest({"a.bin": 100})) == events
