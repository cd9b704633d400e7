"""Cache-through mode (`mlfs serve --upstream s3://BUCKET[/PREFIX]`).

The upstream bucket appears in the gateway under its own name. A GET or HEAD that
misses there fetches `PREFIX + key` from the upstream S3 (boto3 in a worker thread:
this process runs trio, so no second event loop), stores it as a normal gateway object
(chunks, MD5, SHA-256) and serves it; later reads are local. Listings show what is
cached. Concurrent misses on one key share one download.

Misses run under their own limiter (`Limits.upstream_fetches`), not the worker threads
that serve local requests, and fetch at most `Limits.upstream_max_size` bytes. An
anonymous caller never waits for a fetch slot: when all are busy it gets 503 SlowDown,
so unauthenticated traffic cannot queue up downloads.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import trio
from botocore.exceptions import BotoCoreError

from mlfs.errors import MlfsError
from mlfs.gateway.catalog import ObjectRecord
from mlfs.gateway.context import Gateway
from mlfs.gateway.errors import S3Error
from mlfs.gateway.objects import CHUNK_SIZE, READ_BLOCK
from mlfs.s3.client import S3Settings, make_client, split_s3_url

log = logging.getLogger(__name__)
_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}\Z")
_KEPT_HEADERS = {
    "CacheControl": "cache-control", "ContentDisposition": "content-disposition",
    "ContentEncoding": "content-encoding", "ContentLanguage": "content-language",
}


class Upstream:
    def __init__(self, gw: Gateway, url: str) -> None:
        self.gw = gw
        self.bucket, self.prefix = split_s3_url(url)
        self._client: Any = None
        self._inflight: dict[str, trio.Event] = {}
        self._fetches = trio.CapacityLimiter(gw.limits.upstream_fetches)
        self.max_size = gw.limits.upstream_max_size

    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(S3Settings())
        return self._client

    async def fetch(self, bucket: str, key: str, anonymous: bool = False) -> ObjectRecord | None:
        """The object after fetching it from upstream, or None if upstream has no such key."""
        if bucket != self.bucket:
            return None
        while key in self._inflight:
            await self._inflight[key].wait()
            rec = await self.gw.run(self.gw.objects.catalog.get_object, bucket, key)
            if rec is not None:
                return rec
        if anonymous and self._fetches.available_tokens == 0:
            raise S3Error("SlowDown", "Please reduce your request rate.")
        done = self._inflight[key] = trio.Event()
        try:
            return await trio.to_thread.run_sync(self._download, key, limiter=self._fetches)
        finally:
            del self._inflight[key]
            done.set()

    def _download(self, key: str) -> ObjectRecord | None:
        self.gw.objects.catalog.create_bucket(self.bucket)
        try:
            response = self.client().get_object(Bucket=self.bucket, Key=self.prefix + key)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            if isinstance(exc, MlfsError | BotoCoreError) or code:
                log.error("upstream GET s3://%s/%s%s failed: %s", self.bucket, self.prefix, key, exc)
            else:
                log.exception("upstream GET s3://%s/%s%s failed", self.bucket, self.prefix, key)
            raise S3Error("ServiceUnavailable", "The upstream object store could not be reached.") from None
        if response["ContentLength"] > self.max_size:
            response["Body"].close()
            log.info("upstream s3://%s/%s%s is %d bytes, over the %d-byte cache-through limit",
                     self.bucket, self.prefix, key, response["ContentLength"], self.max_size)
            raise S3Error("EntityTooLarge", "The upstream object is larger than this gateway caches.")
        sink = self.gw.objects.sink()
        try:
            body = response["Body"]
            while block := body.read(READ_BLOCK):
                if sink.size + len(block) > self.max_size:
                    raise S3Error("ServiceUnavailable", "The upstream object is longer than it said.")
                sink.write(block)
            sink.finish()
            if sink.size != response["ContentLength"]:
                raise S3Error("ServiceUnavailable", "The upstream object ended early.")
            etag = response.get("ETag", "").strip('"')
            if _PLAIN_MD5.match(etag) and etag != sink.md5:
                raise S3Error("ServiceUnavailable", "The upstream object does not match its ETag.")
            metadata = {f"x-amz-meta-{k}": v for k, v in response.get("Metadata", {}).items()}
            metadata.update({h: response[f] for f, h in _KEPT_HEADERS.items() if response.get(f)})
            # Keeping upstream's ETag keeps If-Match and manifests made against upstream valid.
            rec = ObjectRecord(self.bucket, key, sink.size, etag or sink.md5, sink.sha256,
                               response.get("ContentType") or "binary/octet-stream", metadata, {},
                               time.time(), CHUNK_SIZE, sink.chunks)
            self.gw.objects.commit_object(sink, rec)
            log.info("cached s3://%s/%s%s (%d bytes) from upstream", self.bucket, self.prefix, key, sink.size)
            return rec
        except BaseException:
            sink.abort()
            raise
