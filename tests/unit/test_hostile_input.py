"""Hostile input handled in-process: lying file headers, symlink trees, mount options,
run-directory ownership. The real mounts of the same cases are in tests/fuse/."""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path

import pytest
import trio

from mlfs.config import MountOptions, parse_o_options
from mlfs.errors import ConfigError, ManifestError, MountError
from mlfs.fetch import ChunkFetcher, RetryPolicy
from mlfs.fuse.inodes import InodeTable
from mlfs.manifest.model import Manifest
from mlfs.manifest.validate import parse_manifest
from mlfs.mount_policy import MountPolicy
from mlfs.policy import FileDecision, FormatError, PolicyEngine, safetensors_tensor_ranges
from mlfs.reader import ArtifactReader
from mlfs.s3.boto_source import BotocoreSource
from mlfs.store import ChunkStore
from tests.unit.test_fetcher import CHUNK, FakeS3, entry_for


def lying_safetensors(size: int, end: int) -> bytes:
    """A `size`-byte file whose header claims a tensor ending at data offset `end`."""
    header = json.dumps({"t": {"dtype": "F32", "shape": [end // 4], "data_offsets": [0, end]}}).encode()
    header += b" " * (-len(header) % 8)
    body = struct.pack("<Q", len(header)) + header
    return body + os.urandom(size - len(body))


def test_tensor_ranges_past_the_file_are_refused() -> None:
    data = lying_safetensors(64 * 1024, 1 << 62)
    with pytest.raises(FormatError, match="past the end of the 65536-byte file"):
        safetensors_tensor_ranges(data, file_size=len(data))


def test_header_longer_than_the_file_is_refused() -> None:
    from mlfs.policy import safetensors_header_length

    with pytest.raises(FormatError, match="runs past the end"):
        safetensors_header_length(struct.pack("<Q", 1 << 20), file_size=4096)


def _plan(tmp_path: Path, data: bytes, decision: FileDecision, fail_plan: bool = False) -> list[str]:
    """Run the policy's prefetch of `data` as the mount runs it on open; returns the
    ranges fetched. An exception leaving the prefetch would tear a mount down: here it
    fails the test."""
    fake = FakeS3(data)
    store = ChunkStore(tmp_path / "store")
    entry = entry_for(data, etag=None)
    manifest = Manifest("m", "v", [entry], chunk_size=CHUNK)
    policy = MountPolicy(PolicyEngine.load(manifest), manifest)

    async def main() -> None:
        fetcher = ChunkFetcher(BotocoreSource(fake), store, CHUNK, trio.CapacityLimiter(4), RetryPolicy(2, 0.01, 0.01))
        async with trio.open_nursery() as n:
            policy.reader = ArtifactReader(manifest, store, fetcher, n)
            if fail_plan:
                async def broken(*_a):
                    raise IndexError("list index out of range")
                policy._prefetch_plan = broken
            await policy.prefetch(entry, decision)
            n.cancel_scope.cancel()

    trio.run(main)
    return [c["Range"] for c in fake.calls]


SAFETENSORS = FileDecision(prefetch_when="open", prefetch_what="safetensors", stream_parallel=1,
                           decided_by=(("prefetch", "test"),))


def test_lying_header_plan_stays_within_the_file(tmp_path: Path) -> None:
    # Offsets up to 1 GiB in a 4-chunk file: the old plan listed 16,384 chunk indices,
    # most of them past the file's last chunk (an IndexError in the mount's nursery).
    data = lying_safetensors(4 * CHUNK, 1 << 30)
    calls = _plan(tmp_path, data, SAFETENSORS)
    fetched = {int(r.removeprefix("bytes=").split("-")[0]) // CHUNK for r in calls}
    assert fetched == {0, 1, 2, 3}, "a lying header is prefetched whole, within the file"


@pytest.mark.expect_warnings
def test_unexpected_error_in_a_background_plan_stays_in_its_task(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    data = lying_safetensors(2 * CHUNK, 16)
    _plan(tmp_path, data, SAFETENSORS, fail_plan=True)
    assert any("prefetch of f.bin failed unexpectedly" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------- symlinks
def _manifest(links: list[tuple[str, str]], files: tuple[str, ...] = ("a/b/f",)) -> dict:
    digest = "0" * 64
    return {
        "schema": "mlfs.manifest/1", "name": "n", "version": "v", "chunk_size": 1 << 20,
        "files": [{"path": p, "size": 1, "sha256": digest, "chunks": [digest],
                   "source": {"bucket": "b", "key": p}} for p in files],
        "symlinks": [{"path": p, "target": t} for p, t in links],
    }


@pytest.mark.parametrize("links", [
    # The example: a lexically harmless target through a symlinked component.
    [("a/b/s", "../.."), ("a/b/p", "s/../../../etc/passwd")],
    # The same one level deeper, and through a chain of two links.
    [("a/b/c/s", "../../.."), ("a/b/c/p", "s/../x")],
    [("a/l1", "b"), ("a/b/l2", "../../"), ("a/p", "l1/l2/../etc")],
    # Links listed before the links they pass through.
    [("top", "a/b/up"), ("a/b/up", "../../..")],
])
def test_symlink_escaping_through_symlinks_is_refused(links: list[tuple[str, str]]) -> None:
    with pytest.raises(ManifestError, match="escapes the mount"):
        parse_manifest(_manifest(links))


@pytest.mark.parametrize("links", [
    [("a/b/s", "../.."), ("a/b/p", "s/a/b/f")],
    [("a/b/s", ".."), ("a/b/p", "s/../b/f")],
    [("x", "a/b"), ("y", "x/../../a/b/f")],
    [("a/b/dangling", "nowhere/../f")],
])
def test_symlinks_staying_inside_are_accepted(links: list[tuple[str, str]]) -> None:
    assert len(parse_manifest(_manifest(links)).symlinks) == len(links)


def test_symlink_loops_are_refused() -> None:
    with pytest.raises(ManifestError, match="loops"):
        parse_manifest(_manifest([("a/x", "y"), ("a/y", "x/z")]))


# ---------------------------------------------------------------- file modes
def test_setuid_setgid_sticky_bits_are_stripped() -> None:
    doc = _manifest([])
    doc["files"][0]["mode"] = 0o7755
    table = InodeTable(parse_manifest(doc))
    node = next(n for n in table.nodes.values() if n.entry is not None)
    assert stat.S_IMODE(node.mode) == 0o555


# ------------------------------------------------------------- mount options
@pytest.mark.parametrize("option", ["nosuidx", "exec", "defaults", "sync", "user", "colour=blue"])
def test_unknown_mount_options_are_refused(option: str) -> None:
    with pytest.raises(ConfigError, match="unknown mount option"):
        parse_o_options([option], MountOptions())


@pytest.mark.parametrize("option", ["rw", "suid", "dev"])
def test_options_weakening_the_mount_are_refused(option: str) -> None:
    with pytest.raises(ConfigError, match="not supported"):
        parse_o_options([option], MountOptions())


def test_kernel_flags_are_carried_to_the_mount() -> None:
    opts = MountOptions()
    parse_o_options(["ro,nosuid,nodev,noexec", "noatime"], opts)
    assert opts.kernel_flags == ["noexec", "noatime"]


# ------------------------------------------------------------- run directory
def test_run_dir_writable_by_others_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlfs import runinfo

    shared = tmp_path / "run"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("MLFS_RUN_DIR", str(shared))
    with pytest.raises(MountError, match="writable by others"):
        runinfo.read_info("/mnt/x")


def test_run_dir_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlfs import runinfo

    theirs = tmp_path / "run"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 12345, 12345)
    monkeypatch.setenv("MLFS_RUN_DIR", str(theirs))
    with pytest.raises(MountError, match="belongs to uid 12345"):
        runinfo.write_info("/mnt/x", {})


def test_reload_refuses_a_pid_that_is_not_the_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlfs import runinfo

    monkeypatch.setenv("MLFS_RUN_DIR", str(tmp_path / "run"))
    runinfo.write_info("/mnt/x", {})  # published by this process, which holds no FUSE device
    doc = runinfo.read_info("/mnt/x")
    assert doc["pid"] == os.getpid()
    with pytest.raises(MountError, match="holds no FUSE connection"):
        runinfo.verified_mount_pid(doc, "/mnt/x")
    with pytest.raises(MountError, match="was reused"):
        runinfo.verified_mount_pid(dict(doc, pid_start=doc["pid_start"] + 1), "/mnt/x")
    with pytest.raises(MountError, match="no valid mount process"):
        runinfo.verified_mount_pid({"pid": 1}, "/mnt/x")


# ------------------------------------------------------- parsers' odd corners
@pytest.mark.parametrize("text", ["!!python/object:os.system", "rules:\n  - id: 2001-13-45",
                                  "a: !!binary 'zz'", "x: &a [*a]", "[" * 5000])
def test_odd_yaml_is_a_rule_problem_not_a_crash(text: str) -> None:
    from mlfs.policy.parse import parse_rule_text

    parsed, report = parse_rule_text(text)
    assert parsed is None or report.problems
    assert report.problems and all("\n" not in str(p) for p in report.problems)


def test_deeply_nested_json_is_a_one_line_error() -> None:
    with pytest.raises(ManifestError, match="nested too deeply"):
        parse_manifest(b"[" * 100_000)
    with pytest.raises(FormatError, match="nested too deeply"):
        safetensors_tensor_ranges(struct.pack("<Q", 100_000) + b"[" * 100_000)
