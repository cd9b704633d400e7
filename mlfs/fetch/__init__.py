"""Range fetcher: whole-chunk GETs, single-flight, bounded concurrency, retries."""

from mlfs.fetch.fetcher import ChunkFetcher, FetchStatistics, RetryPolicy

__all__ = ["ChunkFetcher", "FetchStatistics", "RetryPolicy"]
