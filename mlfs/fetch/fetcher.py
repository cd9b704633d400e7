"""Fetch manifest chunks into the chunk store, verified, at most once at a time each.

`ChunkFetcher.ensure(entry, index)` returns once chunk `index` of `entry` is in the store
and verified against the manifest's SHA-256. Concurrent callers for one chunk share a
single download (single-flight). Downloads are blocking boto3 calls in worker threads
under a `trio.CapacityLimiter`; retries and their backoff run on the trio side, so
deadlines and test clocks apply to them.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions
import trio
import urllib3.exceptions

from mlfs.errors import ChunkIntegrityError, FetchError, ObjectChanged
from mlfs.manifest.model import FileEntry
from mlfs.store.chunks import ChunkStore

log = logging.getLogger(__name__)

_READ_BLOCK = 1 << 20
_RETRYABLE_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException",
    "RequestTimeout", "RequestTimeTooSkewed", "503", "500", "502", "504",
}
_CONNECTION_ERRORS = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    # The body is read from urllib3's stream directly, so its errors arrive unwrapped
    # (a reset mid-body is a ProtocolError).
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
    urllib.error.URLError,
)


class _Retryable(Exception):
    """A transient failure; the message says what happened."""


def _env_attempts() -> int:
    try:
        return max(1, int(os.environ.get("AWS_MAX_ATTEMPTS", "5")))
    except ValueError:
        return 5


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = field(default_factory=_env_attempts)
    base_delay: float = 0.1
    max_delay: float = 5.0

    def delay(self, attempt: int) -> float:
        # Full jitter (AWS architecture blog): spreads retries of many readers apart.
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


@dataclass
class FetchStatistics:
    requests: int = 0
    bytes: int = 0
    retries: int = 0
    failures: int = 0
    shared_waits: int = 0  # callers that waited on another caller's download
    in_flight: int = 0


class _Flight:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: BaseException | None = None


class ChunkFetcher:
    def __init__(
        self,
        client: Any,
        store: ChunkStore,
        chunk_size: int,
        limiter: trio.CapacityLimiter,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.chunk_size = chunk_size
        self.limiter = limiter
        self.retry = retry or RetryPolicy()
        self._ready: set[str] = set()
        self._flights: dict[str, _Flight] = {}
        self._stats = FetchStatistics()
        self._local = threading.local()

    def is_ready(self, digest: str) -> bool:
        """True if the chunk is known to be in the store and verified (no I/O)."""
        return digest in self._ready

    def is_in_flight(self, digest: str) -> bool:
        return digest in self._flights

    def statistics(self) -> FetchStatistics:
        s = self._stats
        return FetchStatistics(s.requests, s.bytes, s.retries, s.failures, s.shared_waits, len(self._flights))

    async def ensure(self, entry: FileEntry, index: int) -> str:
        digest = entry.chunks[index]
        if digest in self._ready:
            return digest
        flight = self._flights.get(digest)
        if flight is not None:
            self._stats.shared_waits += 1
            await flight.done.wait()
            if flight.error is not None:
                raise _same_error(flight.error)
            return digest
        flight = self._flights[digest] = _Flight()
        try:
            # First use in this process: check the cached copy (cheap xxh3) or download.
            present = await trio.to_thread.run_sync(self.store.ensure_verified, digest, limiter=self.limiter)
            if not present:
                await self._download(entry, index)
            self._ready.add(digest)
            return digest
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[digest]
            flight.done.set()

    def forget(self, digest: str) -> None:
        """The chunk left the store (eviction); the next use must fetch it again."""
        self._ready.discard(digest)

    async def _download(self, entry: FileEntry, index: int) -> None:
        attempt = 0
        integrity_failures = 0
        while True:
            attempt += 1
            try:
                await trio.to_thread.run_sync(self._get_into_store, entry, index, limiter=self.limiter)
                return
            except _Retryable as exc:
                if attempt >= self.retry.max_attempts:
                    self._stats.failures += 1
                    raise FetchError(
                        f"{entry.source.describe()} chunk {index}: giving up after {attempt} attempts: {exc}"
                    ) from None
                log.info("retrying %s chunk %d (attempt %d): %s", entry.path, index, attempt, exc)
            except ChunkIntegrityError:
                # With If-Match, an answer proves the object is still the manifest's
                # version, so a mismatch is damage in transit and gets the full retry
                # budget. Without an ETag, one retry covers transit damage; a second
                # mismatch means the object itself no longer matches the manifest.
                integrity_failures += 1
                limit = self.retry.max_attempts if entry.source.etag else 2
                if integrity_failures >= limit:
                    self._stats.failures += 1
                    raise
            except FetchError:
                self._stats.failures += 1
                raise
            self._stats.retries += 1
            await trio.sleep(self.retry.delay(attempt))

    # ---------------------------------------------------------- worker thread
    def _get_into_store(self, entry: FileEntry, index: int) -> None:
        start, end = entry.chunk_range(index, self.chunk_size)
        digest = entry.chunks[index]
        where = f"{entry.source.describe()} bytes {start}-{end - 1}"
        self._stats.requests += 1
        try:
            body = self._open_range(entry, start, end, where)
            buf = self._buffer()
            readinto = _readinto_of(body)
            try:
                with self.store.writer(digest) as writer:
                    while n := readinto(buf):
                        writer.write(buf[:n])
                        if writer.size > end - start:
                            # Never store (or keep reading) more than the range asked for.
                            raise _Retryable(f"{where}: server sent more than {end - start} bytes")
                    if writer.size != end - start:
                        raise _Retryable(f"{where}: got {writer.size} bytes, expected {end - start}")
                    try:
                        writer.commit()
                    except ChunkIntegrityError:
                        raise ChunkIntegrityError(
                            f"{where}: SHA-256 mismatch (object differs from the manifest)"
                        ) from None
                    self._stats.bytes += writer.size
            finally:
                body.close()
        except _CONNECTION_ERRORS as exc:
            raise _Retryable(f"{where}: {exc}") from None

    def _buffer(self) -> memoryview:
        # One reused buffer per worker thread: fresh memory is slow to touch the first
        # time, and a 16 MiB chunk would otherwise allocate 16 new 1 MiB blocks.
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = memoryview(bytearray(_READ_BLOCK))
        return buf

    def _open_range(self, entry: FileEntry, start: int, end: int, where: str) -> Any:
        src = entry.source
        if src.is_s3:
            kwargs: dict[str, Any] = {"Bucket": src.bucket, "Key": src.key, "Range": f"bytes={start}-{end - 1}"}
            if src.etag:
                kwargs["IfMatch"] = src.etag
            try:
                response = self.client.get_object(**kwargs)
            except botocore.exceptions.ClientError as exc:
                raise _classify_client_error(exc, where) from None
            if "ContentRange" not in response and not (start == 0 and end == entry.size):
                # A server (or proxy) that ignores Range sends the whole object: drop it
                # unread rather than download the object once per chunk.
                response["Body"].close()
                raise _Retryable(f"{where}: server ignored the range request")
            return response["Body"]
        request = urllib.request.Request(str(src.url), headers={"Range": f"bytes={start}-{end - 1}"})
        if src.etag:
            request.add_header("If-Match", src.etag)
        try:
            resp = urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as exc:
            raise _classify_status(exc.code, str(exc.reason), where) from None
        if resp.status != 206 and not (resp.status == 200 and start == 0 and end == entry.size):
            resp.close()
            raise ObjectChanged(f"{where}: server ignored the range request (HTTP {resp.status})")
        return resp


def _classify_client_error(exc: botocore.exceptions.ClientError, where: str) -> Exception:
    err = exc.response.get("Error", {})
    code = str(err.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in _RETRYABLE_CODES:
        return _Retryable(f"{where}: {code}")
    return _classify_status(status, code or str(exc), where)


def _classify_status(status: int, what: str, where: str) -> Exception:
    if status == 412:
        return ObjectChanged(f"{where}: object changed since the manifest was made (ETag mismatch)")
    if status in (404, 416):
        return ObjectChanged(f"{where}: object is gone or shorter than the manifest says ({what})")
    if status == 429 or status >= 500:
        return _Retryable(f"{where}: HTTP {status} {what}")
    return FetchError(f"{where}: HTTP {status} {what}")


def _readinto_of(body: Any) -> Any:
    """`readinto` of a response body that fills the whole buffer unless at EOF."""
    raw = getattr(body, "_raw_stream", body)  # botocore StreamingBody wraps urllib3's response
    inner = getattr(raw, "readinto", None)
    if inner is None:
        def fallback(buf: memoryview) -> int:
            data = body.read(len(buf))
            buf[: len(data)] = data
            return len(data)
        return fallback

    def fill(buf: memoryview) -> int:
        got = 0
        while got < len(buf):
            n = inner(buf[got:])
            if not n:
                break
            got += n
        return got

    return fill


def _same_error(exc: BaseException) -> BaseException:
    if isinstance(exc, FetchError):
        return type(exc)(str(exc))
    if isinstance(exc, trio.Cancelled):
        # The downloading task was cancelled; waiters see a fetch failure, not a cancel.
        return FetchError("download was cancelled")
    return FetchError(f"download failed: {exc}")
