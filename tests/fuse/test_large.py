"""A 1 GiB object read cold through the mount: exact bytes, each chunk fetched once."""

from __future__ import annotations

import threading
from pathlib import Path

import xxhash

from tests.fuse.conftest import GIB, Artifact
from tests.mlfs_cli import MOUNT_PROBE_GETS, mounted


def test_one_gib_cold_with_sixteen_readers_fetches_each_chunk_once(
    artifact: Artifact, big_object: tuple[Path, str], tmp_path: Path
) -> None:
    manifest, want = big_object
    before = artifact.server.get_count("bigdata")
    results: list[str] = []
    errors: list[BaseException] = []

    def reader(mp: Path, step: int) -> None:
        try:
            h = xxhash.xxh3_128()
            with open(mp / "big.bin", "rb", buffering=0) as fh:
                while block := fh.read(step):
                    h.update(block)
            results.append(h.hexdigest())
        except BaseException as exc:
            errors.append(exc)

    with mounted(manifest, tmp_path / "mnt", artifact.env, "--cache", tmp_path / "cache") as mp:
        threads = [threading.Thread(target=reader, args=(mp, [1 << 20, 128 << 10, 4 << 20][i % 3]))
                   for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
    assert not errors, errors
    assert results == [want] * 16
    assert artifact.server.get_count("bigdata") - before - MOUNT_PROBE_GETS == GIB // (16 << 20)
