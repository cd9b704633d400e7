"""Content-addressed, verified chunk store shared by mounts and the gateway."""

from mlfs.store.chunks import ChunkStore, ChunkWriter, StoreStatistics

__all__ = ["ChunkStore", "ChunkWriter", "StoreStatistics"]
