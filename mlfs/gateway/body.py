"""Request bodies: plain or aws-chunked, delivered in large blocks, lengths enforced.

A body that is shorter or longer than declared, or whose signed SHA-256 does not match,
raises an S3Error before anything is committed; the caller aborts the upload.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator

import trio

from mlfs.gateway.chunked import AwsChunkedDecoder
from mlfs.gateway.errors import S3Error
from mlfs.gateway.http import Request
from mlfs.gateway.limits import TransferClock
from mlfs.gateway.sigv4 import STREAMING_SIGNED, STREAMING_SIGNED_TRAILER

BLOCK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")


class ClientGone(Exception):
    """The client disconnected before sending the whole body."""


class RequestBody:
    def __init__(self, request: Request, limit: int) -> None:
        self.request = request
        self.limit = limit
        auth = request.auth
        payload = auth.payload_hash if auth else (request.header("x-amz-content-sha256") or "")
        encoding = (request.header("content-encoding") or "").lower()
        self.chunked = payload.startswith("STREAMING-") or "aws-chunked" in encoding
        self.expected_sha256 = payload if _HEX64.match(payload) else None
        self._decoder: AwsChunkedDecoder | None = None
        if self.chunked:
            signed = payload in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER)
            signer = auth.signer if (auth and signed) else None
            if signed and signer is None:
                raise S3Error("AccessDenied", "Signed aws-chunked bodies need a signed request.")
            self._decoder = AwsChunkedDecoder(signer, request.header("x-amz-trailer"))
            declared = request.header("x-amz-decoded-content-length")
        else:
            declared = request.header("content-length")
        self.declared: int | None = None
        if declared is not None:
            try:
                self.declared = int(declared)
            except ValueError:
                raise S3Error("InvalidArgument", "Content length is not a number.") from None
            if self.declared < 0:
                raise S3Error("InvalidArgument", "Content length is negative.")
        elif self.chunked or request.header("transfer-encoding") is None:
            raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.")
        if self.declared is not None and self.declared > limit:
            raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size.")
        self.received = 0

    async def blocks(self) -> AsyncIterator[bytes]:
        """Decoded body in blocks of about BLOCK bytes; checks the total length at the end."""
        pending: list[bytes] = []
        pending_size = 0
        # A body that stalls, or arrives slower than the minimum rate, is abandoned (the
        # upload aborts, the socket closes). It is checked here, per body read, rather
        # than by the HTTP server, whose read timeout would also cut long downloads.
        clock = TransferClock(self.request.limits)
        while True:
            try:
                with trio.fail_after(clock.time_left(self.request.limits.body_stall)):
                    message = await self.request.receive()
            except trio.TooSlowError:
                raise S3Error("RequestTimeout", "Your socket connection to the server was not read from or written to within the timeout period.") from None
            if message["type"] == "http.disconnect":
                raise ClientGone()
            data = message.get("body", b"")
            clock.advance(len(data))
            pieces = self._decoder.feed(data) if self._decoder else ([data] if data else [])
            for piece in pieces:
                self.received += len(piece)
                if self.received > self.limit or (self.declared is not None and self.received > self.declared):
                    raise S3Error("IncompleteBody", "The request body is longer than declared.")
                pending.append(piece)
                pending_size += len(piece)
            if pending_size >= BLOCK:
                yield b"".join(pending)
                pending, pending_size = [], 0
            if not message.get("more_body", False):
                break
        if self._decoder is not None and not self._decoder.done:
            raise S3Error("IncompleteBody", "The aws-chunked body ended early.")
        if self.declared is not None and self.received != self.declared:
            raise S3Error("IncompleteBody", "You did not provide the number of bytes specified by the Content-Length HTTP header.")
        if pending:
            yield b"".join(pending)

    async def read_all(self) -> bytes:
        """Whole (small) body, with its signed SHA-256 checked."""
        data = b"".join([block async for block in self.blocks()])
        self.check_sha256(hashlib.sha256(data).hexdigest())
        return data

    def check_sha256(self, actual: str | None) -> None:
        if self.expected_sha256 is not None and actual != self.expected_sha256:
            raise S3Error("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed.")
