"""Policy actions on a reader, with an in-process fake S3 (the FUSE tests use real ones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trio
from safetensors.numpy import save

from mlfs.fetch import ChunkFetcher, RetryPolicy
from mlfs.manifest.model import Manifest
from mlfs.mount_policy import MountPolicy
from mlfs.policy import FileDecision, PolicyEngine
from mlfs.reader import ArtifactReader
from mlfs.s3.boto_source import BotocoreSource
from mlfs.store import ChunkStore
from tests.unit.test_fetcher import CHUNK, FakeS3, entry_for


def test_safetensors_prefetch_fetches_header_then_tensors_in_file_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # Tensors of 1.5 chunks each, so tensor boundaries fall inside chunks.
    data = save({f"t{i}": rng.standard_normal(CHUNK * 3 // 8, dtype=np.float32) for i in range(10)})
    fake = FakeS3(data)
    store = ChunkStore(tmp_path)
    entry = entry_for(data, etag=None)
    manifest = Manifest("m", "v", [entry], chunk_size=CHUNK)
    engine = PolicyEngine.load(manifest)
    decision = FileDecision(prefetch_when="open", prefetch_what="safetensors", stream_parallel=1,
                            decided_by=(("prefetch", "test"),))

    async def main():
        fetcher = ChunkFetcher(BotocoreSource(fake), store, CHUNK, trio.CapacityLimiter(4), RetryPolicy(3, 0.1, 1))
        async with trio.open_nursery() as n:
            policy = MountPolicy(engine, manifest)
            policy.reader = ArtifactReader(manifest, store, fetcher, n)
            await policy.prefetch(entry, decision)
            n.cancel_scope.cancel()

    trio.run(main)
    starts = [int(c["Range"].removeprefix("bytes=").split("-")[0]) for c in fake.calls]
    assert starts[0] == 0, "the header (chunk 0) comes first"
    assert starts == sorted(starts), f"tensors not fetched in file order: {starts}"
    assert len(starts) == len(entry.chunks) and len(set(starts)) == len(starts)
    stats = engine.counters.to_json()["test"]
    assert stats["prefetched_bytes"] == len(data) - CHUNK  # chunk 0 was read for the header
