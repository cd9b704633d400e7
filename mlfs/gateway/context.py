"""The gateway's shared state for one process: storage, access policy, worker threads."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from mlfs.gateway.access import AccessPolicy
from mlfs.gateway.catalog import ObjectRecord
from mlfs.gateway.limits import Limits, RequestSlots
from mlfs.gateway.objects import ObjectStore

if TYPE_CHECKING:
    from mlfs.gateway.upstream import Upstream

log = logging.getLogger(__name__)
T = TypeVar("T")
_HASH_QUEUE = 10_000


class Service(Protocol):
    """An HTTP API mounted on the gateway under a path prefix such as "/api/registry/"."""

    prefix: str

    async def __call__(self, gw: Gateway, scope: dict[str, Any], receive: Any, send: Any) -> None: ...


class Gateway:
    def __init__(self, objects: ObjectStore, policy: AccessPolicy, threads: int = 16,
                 keepalive_seconds: float = 5.0, limits: Limits | None = None, region: str = "us-east-1") -> None:
        self.objects = objects
        self.policy = policy
        self.limiter = trio.CapacityLimiter(threads)
        self.limits = limits or Limits()
        self.slots = RequestSlots(self.limits)
        self.region = region
        self.upstream: Upstream | None = None
        # Non-S3 HTTP services sharing the gateway's port and store (registry,
        # preprocessing): a request whose path starts with a service's prefix is
        # handed to it as raw ASGI instead of being routed as S3.
        self.services: list[Service] = []
        self.keepalive_seconds = keepalive_seconds
        # Multipart objects whose parts were chunk-aligned get their whole-object
        # SHA-256 computed here, after the client has its answer.
        self._hash_send, self._hash_receive = trio.open_memory_channel[ObjectRecord](_HASH_QUEUE)

    def service_for(self, path: str) -> Service | None:
        for service in self.services:
            if path.startswith(service.prefix):
                return service
        return None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def hash_later(self, rec: ObjectRecord) -> None:
        # If the queue is full, the next start's sweep or the manifest endpoint hashes it.
        with contextlib.suppress(trio.WouldBlock):
            self._hash_send.send_nowait(rec)

    async def hash_worker(self) -> None:
        """Fill in missing whole-object SHA-256s, one object at a time."""
        for rec in await self.run(self.objects.catalog.objects_missing_sha256, _HASH_QUEUE):
            self.hash_later(rec)
        async for rec in self._hash_receive:
            try:
                await self.run(self._hash_if_current, rec)
            except Exception as exc:  # deleted or replaced while being hashed
                log.debug("hashing s3://%s/%s skipped: %s", rec.bucket, rec.key, exc)

    async def expire_uploads(self) -> None:
        """Abort multipart uploads started longer ago than the limit, now and then periodically."""
        expiry = self.limits.upload_expiry
        while True:
            for upload_id in await self.run(self.objects.catalog.uploads_started_before, time.time() - expiry):
                leftovers = await self.run(self.objects.catalog.finish_upload, upload_id)
                await self.run(self.objects.free, leftovers)
                log.info("multipart upload %s expired after %.0f s", upload_id, expiry)
            await self.run(self.objects.catalog.forget_completed_before, time.time() - expiry)
            await trio.sleep(min(3600.0, max(0.1, expiry / 4)))

    def _hash_if_current(self, rec: ObjectRecord) -> None:
        current = self.objects.catalog.get_object(rec.bucket, rec.key)
        if current is not None and current.sha256 is None and current.chunks == rec.chunks:
            self.objects.whole_sha256(current)
