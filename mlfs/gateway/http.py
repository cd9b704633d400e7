"""ASGI plumbing: the parsed request and the ways to answer it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote_to_bytes

from mlfs.gateway.errors import S3Error
from mlfs.gateway.limits import Limits
from mlfs.gateway.sigv4 import Authenticated, _query_pairs

Scope = dict[str, Any]


@dataclass
class Request:
    method: str
    raw_path: bytes
    query_string: bytes
    query: dict[str, str]
    headers: dict[str, list[str]]
    bucket: str | None
    key: str | None
    receive: Any
    request_id: str = field(default_factory=lambda: secrets.token_hex(8).upper())
    auth: Authenticated | None = None
    limits: Limits = field(default_factory=Limits)
    client: str = ""

    @classmethod
    def from_scope(cls, scope: Scope, receive: Any) -> Request:
        headers: dict[str, list[str]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        raw_path = scope.get("raw_path") or scope["path"].encode()
        query_string = scope.get("query_string", b"")
        query: dict[str, str] = {}
        for k, v in _query_pairs(query_string):
            query.setdefault(k, v)
        bucket, key = split_path(raw_path)
        client = (scope.get("client") or ("",))[0]
        return cls(scope["method"], raw_path, query_string, query, headers, bucket, key, receive, client=client)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return ",".join(values) if values else None

    @property
    def resource(self) -> str:
        return "/" + "/".join(p for p in (self.bucket, self.key) if p)


def split_path(raw_path: bytes) -> tuple[str | None, str | None]:
    """(bucket, key) from a path-style URL; key is None for bucket-level requests."""
    path = raw_path.split(b"?", 1)[0]
    if not path.startswith(b"/"):
        raise S3Error("InvalidRequest", "Request path must be absolute.")
    bucket_raw, sep, key_raw = path[1:].partition(b"/")
    try:
        bucket = unquote_to_bytes(bucket_raw).decode("utf-8") or None
        key = unquote_to_bytes(key_raw).decode("utf-8") if sep and key_raw else None
    except UnicodeDecodeError:
        raise S3Error("InvalidArgument", "Object key is not valid UTF-8.") from None
    return bucket, key


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


class Responder:
    """Sends one response; tracks whether headers went out so errors can still be reported."""

    def __init__(self, send: Any, request_id: str, scope: Scope | None = None) -> None:
        self._send = send
        self.request_id = request_id
        # The connection's (client, server) addresses, to end it if a download stalls.
        self.peer = (tuple((scope or {}).get("client") or ()), tuple((scope or {}).get("server") or ()))
        self.started = False
        self.status = 0

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.started = True
        self.status = status
        raw = [(b"x-amz-request-id", self.request_id.encode()), (b"server", b"mlfs")]
        raw += [(k.lower().encode("latin-1"), _header_value(v)) for k, v in headers]
        await self._send({"type": "http.response.start", "status": status, "headers": raw})

    async def body(self, data: bytes, more: bool = False) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def simple(self, status: int, headers: list[tuple[str, str]] = (), body: bytes = b"") -> None:  # type: ignore[assignment]
        headers = list(headers)
        if not any(k.lower() == "content-length" for k, _ in headers):
            headers.append(("content-length", str(len(body))))
        await self.start(status, headers)
        await self.body(body)

    async def xml(self, doc: str, status: int = 200, headers: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n' + doc).encode()
        await self.simple(status, [("content-type", "application/xml"), *headers], body)

    async def error(self, err: S3Error, head: bool = False) -> None:
        if err.code == "NotModified":
            # Caches revalidate with the ETag of a 304 (RFC 9110 §15.4.5).
            await self.start(304, getattr(err, "headers", []))
            await self.body(b"")
            return
        body = b"" if head else err.xml(self.request_id)
        headers = [("content-type", "application/xml")]
        if head:
            headers.append(("content-length", "0"))
            headers.append(("x-amz-error-code", err.code))
        await self.simple(err.status, headers, body)


def _header_value(value: str) -> bytes:
    # Header values must not carry line breaks (response splitting); non-Latin-1 user
    # metadata is sent as UTF-8 bytes, as S3 does.
    value = value.replace("\r", " ").replace("\n", " ")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")
