"""Faults around a mount rather than in S3: a damaged chunk store, a daemon killed or
signalled mid-fetch, an unmount while a reader holds a file. Each case is a table row:
whatever happens, no wrong byte is served and the store keeps only verified chunks."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from mlfs.fuse.mountpoints import find_mount
from tests.faults.conftest import FaultArtifact, read_sequential, wrong_bytes
from tests.faults.proxy import Fault
from tests.faults.test_proxy_faults import DATA_GET, _assert_store_clean
from tests.mlfs_cli import daemon_pid, mlfs, mounted, wait_gone


def _chunk_paths(cache: Path, art: FaultArtifact) -> list[Path]:
    entry = next(f for f in json.loads(art.manifest.read_text())["files"] if f["path"] == "data.bin")
    return [cache / "chunks" / d[:2] / d for d in entry["chunks"]]


def _warm(art: FaultArtifact, tmp_path: Path, cache: Path) -> None:
    with mounted(art.manifest, tmp_path / "warm", art.server.env(), "--cache", cache) as mp:
        assert (mp / "data.bin").read_bytes() == art.data


def _flip(p: Path) -> None:
    with open(p, "r+b") as fh:
        fh.seek(100)
        b = fh.read(1)
        fh.seek(100)
        fh.write(bytes([b[0] ^ 0xFF]))


def _truncate(p: Path) -> None:
    os.truncate(p, p.stat().st_size // 2)


def _swap(a: Path, b: Path) -> None:
    # Extended attributes travel with the files, as they would with a careless mv.
    tmp = a.with_name("swap")
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)


def _replace_without_xattr(p: Path) -> None:
    data = p.read_bytes()
    p.unlink()
    p.write_bytes(data[::-1])


DAMAGE = {
    "corrupt chunk file": lambda chunks: _flip(chunks[1]),
    "truncated chunk file": lambda chunks: _truncate(chunks[2]),
    "swapped chunk files": lambda chunks: _swap(chunks[0], chunks[3]),
    "chunk file rewritten without its checksum": lambda chunks: _replace_without_xattr(chunks[4]),
}


@pytest.mark.expect_warnings
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_chunk_store(fault_artifact: FaultArtifact, tmp_path: Path, damage: str, fault_case) -> None:
    art = fault_artifact
    cache = tmp_path / "cache"
    _warm(art, tmp_path, cache)
    DAMAGE[damage](_chunk_paths(cache, art))
    before = art.server.get_count("faults")
    with mounted(art.manifest, tmp_path / "mnt", art.server.env(), "--cache", cache) as mp:
        got, err = read_sequential(mp / "data.bin")
    refetched = art.server.get_count("faults") - before
    assert err is None and len(got) == len(art.data)
    assert refetched >= 1, "the damaged chunk was served from the store without a refetch"
    _assert_store_clean(cache, art)
    fault_case.record(f"damage detected, {refetched} chunk GETs, all bytes exact", wrong_bytes=wrong_bytes(got, art.data))


def _read_in_background(path: Path) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        try:
            result["data"], result["errno"] = read_sequential(path)
        except OSError as exc:  # open itself failed
            result["data"], result["errno"] = b"", exc.errno

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


# What a reader of a mount whose daemon went away gets from the kernel: ECONNABORTED for
# a request queued when the FUSE device closed (fuse_abort_conn), ENOTCONN for one made
# after. Which of the two a reader meets is a race inside the kernel.
LOST_CONNECTION = (errno.ENOTCONN, errno.ECONNABORTED)


def _wait_for(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout}s"
        time.sleep(0.02)


def test_kill_9_mid_fetch(fault_artifact: FaultArtifact, proxy_for, tmp_path: Path, fault_case) -> None:
    art = fault_artifact
    proxy = proxy_for(Fault("stall", DATA_GET, count=1, after_bytes=50_000, stall_seconds=20))
    cache = tmp_path / "cache"
    mp = tmp_path / "mnt"
    mp.mkdir()
    mlfs("mount", art.manifest, mp, "--cache", cache, env=proxy.env())
    pid = daemon_pid(mp)
    thread, result = _read_in_background(mp / "data.bin")
    _wait_for(proxy.stalled.is_set, "a fetch stalled mid-body")
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    thread.join(30)
    assert not thread.is_alive(), "the reader hung after the daemon died"
    assert result["errno"] in LOST_CONNECTION, result["errno"]
    killed_wrong = wrong_bytes(result["data"], art.data)
    # The next mount cleans the dead mount and the dead writer's temp file, then serves.
    with mounted(art.manifest, mp, proxy.env(), "--cache", cache) as again:
        got, err = read_sequential(again / "data.bin")
    assert err is None
    _assert_store_clean(cache, art)
    fault_case.record(f"reader got {errno.errorcode[result['errno']]} after {len(result['data'])} exact bytes; "
                      "remount exact",
                      wrong_bytes=killed_wrong + wrong_bytes(got, art.data))


def test_sigterm_with_open_files_mid_fetch(fault_artifact: FaultArtifact, proxy_for, tmp_path: Path,
                                           fault_case) -> None:
    art = fault_artifact
    proxy = proxy_for(Fault("stall", DATA_GET, count=1, after_bytes=50_000, stall_seconds=3))
    cache = tmp_path / "cache"
    with mounted(art.manifest, tmp_path / "mnt", proxy.env(), "--cache", cache) as mp:
        pid = daemon_pid(mp)
        held = open(mp / "config.json", "rb")
        thread, result = _read_in_background(mp / "data.bin")
        _wait_for(proxy.stalled.is_set, "a fetch stalled mid-body")
        os.kill(pid, signal.SIGTERM)
        wait_gone(pid)
        thread.join(30)
        assert not thread.is_alive(), "the reader hung after SIGTERM"
        assert find_mount(mp) is None, "SIGTERM left a mount behind"
        with contextlib.suppress(OSError):
            held.close()
    # SIGTERM lets requests in flight finish, then closes the FUSE device: reads the
    # reader makes after that meet a lost connection.
    assert result["errno"] in (None, *LOST_CONNECTION, errno.ENOENT, errno.EBADF), result["errno"]
    _assert_store_clean(cache, art)
    outcome = "reader finished" if result["errno"] is None else f"reader got {errno.errorcode[result['errno']]}"
    fault_case.record(f"{outcome} after {len(result['data'])} exact bytes; unmounted cleanly",
                      wrong_bytes=wrong_bytes(result["data"], art.data))


def test_unmount_while_a_reader_holds_a_file(fault_artifact: FaultArtifact, tmp_path: Path, fault_case) -> None:
    art = fault_artifact
    with mounted(art.manifest, tmp_path / "mnt", art.server.env(), "--cache", tmp_path / "cache") as mp:
        fd = os.open(mp / "data.bin", os.O_RDONLY)
        try:
            first = os.read(fd, 300_000)
            result = mlfs("unmount", mp, env=art.server.env(), check=False)
            assert result.returncode == 1
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "busy" in lines[0].lower(), result.stderr
            assert find_mount(mp) is not None
            rest = b""
            while piece := os.read(fd, 1 << 20):
                rest += piece
        finally:
            os.close(fd)
        assert mlfs("unmount", mp, env=art.server.env()).returncode == 0
    got = first + rest
    assert len(got) == len(art.data)
    fault_case.record("unmount refused as busy; the reader finished exact; unmount after close",
                      wrong_bytes=wrong_bytes(got, art.data))
