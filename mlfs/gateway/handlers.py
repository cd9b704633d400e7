"""S3 operations. Each handler gets the gateway context, the request and a responder.

Blocking work (SQLite, chunk files, hashing) runs in worker threads through
`gw.run`, under one CapacityLimiter, so the event loop only shuffles bytes.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import logging
import secrets
import time
import xml.etree.ElementTree as ET
from email.utils import parsedate_tz
from urllib.parse import parse_qsl, unquote

import trio

from mlfs.gateway import xmlout
from mlfs.gateway.body import RequestBody
from mlfs.gateway.catalog import ObjectRecord, PartRecord, UploadRecord
from mlfs.gateway.context import Gateway
from mlfs.gateway.errors import S3Error
from mlfs.gateway.http import Request, Responder, http_date
from mlfs.gateway.names import check_bucket, check_key
from mlfs.gateway.objects import CHUNK_SIZE, EMPTY_SHA256, READ_BLOCK, ObjectSink
from mlfs.gateway.xmlout import quote_etag

log = logging.getLogger(__name__)

MAX_OBJECT = 5 * 1024**3
MAX_PART = 5 * 1024**3
MIN_PART = 5 * 1024**2
MAX_PARTS = 10000
MAX_XML = 2 * 1024**2
SMALL_BODY = 1024**2
MAX_META = 2048
MAX_KEYS = 1000
STORED_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires")
RESPONSE_OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-language": "content-language",
    "response-expires": "expires",
    "response-cache-control": "cache-control",
    "response-content-disposition": "content-disposition",
    "response-content-encoding": "content-encoding",
}


# ------------------------------------------------------------------ buckets
async def list_buckets(gw: Gateway, req: Request, resp: Responder) -> None:
    buckets = await gw.run(gw.objects.catalog.buckets)
    user = req.auth.user if req.auth else None
    visible = [b for b in buckets if user is not None and user.can_read(b[0])]
    await resp.xml(xmlout.list_buckets(visible))


async def create_bucket(gw: Gateway, req: Request, resp: Responder) -> None:
    bucket = check_bucket(req.bucket or "")
    await _small_body(req)  # CreateBucketConfiguration (region) carries nothing we use
    if not await gw.run(gw.objects.catalog.create_bucket, bucket):
        raise S3Error("BucketAlreadyOwnedByYou", "Your previous request to create the named bucket succeeded.", bucket)
    await resp.simple(200, [("location", f"/{bucket}")])


async def delete_bucket(gw: Gateway, req: Request, resp: Responder) -> None:
    outcome = await gw.run(gw.objects.catalog.delete_bucket, req.bucket)
    if outcome == "missing":
        raise S3Error("NoSuchBucket", "The specified bucket does not exist.", req.resource)
    if outcome == "not-empty":
        raise S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty.", req.resource)
    await resp.simple(204)


async def head_bucket(gw: Gateway, req: Request, resp: Responder) -> None:
    await require_bucket(gw, req.bucket)
    await resp.simple(200, [("x-amz-bucket-region", "us-east-1")])


async def bucket_location(gw: Gateway, req: Request, resp: Responder) -> None:
    await require_bucket(gw, req.bucket)
    await resp.xml(xmlout.location())


async def bucket_versioning(gw: Gateway, req: Request, resp: Responder) -> None:
    await require_bucket(gw, req.bucket)
    await resp.xml(xmlout.versioning())


async def list_objects(gw: Gateway, req: Request, resp: Responder) -> None:
    bucket = req.bucket or ""
    await require_bucket(gw, bucket)
    q = req.query
    v2 = q.get("list-type") == "2"
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    url = q.get("encoding-type") == "url"
    try:
        max_keys = max(0, min(MAX_KEYS, int(q.get("max-keys", MAX_KEYS))))
    except ValueError:
        raise S3Error("InvalidArgument", "max-keys must be an integer.") from None
    if v2:
        token = q.get("continuation-token")
        start_after = q.get("start-after")
        after = _decode_token(token) if token is not None else (start_after or "")
    else:
        after = q.get("marker", "")
    listing = await gw.run(gw.objects.catalog.list_objects, bucket, prefix, delimiter, after, max_keys)
    if v2:
        next_token = _encode_token(listing.resume_after) if listing.truncated else None
        doc = xmlout.list_objects_v2(bucket, prefix, delimiter, max_keys, listing, url, token, next_token, start_after)
    else:
        doc = xmlout.list_objects_v1(bucket, prefix, delimiter, after, max_keys, listing, url)
    await resp.xml(doc)


async def list_uploads(gw: Gateway, req: Request, resp: Responder) -> None:
    await require_bucket(gw, req.bucket)
    prefix = req.query.get("prefix", "")
    uploads = await gw.run(gw.objects.catalog.list_uploads, req.bucket, prefix)
    await resp.xml(xmlout.list_uploads(req.bucket or "", prefix, uploads))


async def delete_objects(gw: Gateway, req: Request, resp: Responder) -> None:
    await require_bucket(gw, req.bucket)
    body = await _small_body(req)
    _check_content_md5(req, hashlib.md5(body).digest())
    root = _parse_xml(body)
    quiet = (_child_text(root, "Quiet") or "").lower() == "true"
    keys = [_child_text(obj, "Key") or "" for obj in _children(root, "Object")]
    if len(keys) > 1000:
        raise S3Error("MalformedXML", "At most 1000 keys can be deleted at once.")
    deleted, errors = [], []
    for key in keys:
        try:
            check_key(key)
            await gw.run(gw.objects.delete_object, req.bucket, key)
            deleted.append(key)
        except S3Error as err:
            errors.append((key, err.code, err.message))
    await resp.xml(xmlout.delete_result(deleted, errors, quiet))


# ------------------------------------------------------------------ objects
async def put_object(gw: Gateway, req: Request, resp: Responder) -> None:
    bucket, key = req.bucket or "", check_key(req.key or "")
    metadata, content_type = _stored_headers(req)
    tags = _parse_tag_header(req.header("x-amz-tagging"))
    body = RequestBody(req, MAX_OBJECT)
    sink = gw.objects.sink()

    def commit() -> ObjectRecord:
        body.check_sha256(sink.sha256)
        _check_content_md5(req, sink.md5_digest)
        rec = ObjectRecord(bucket, key, sink.size, sink.md5, sink.sha256 if sink.chunks else EMPTY_SHA256,
                           content_type, metadata, tags, time.time(), CHUNK_SIZE, sink.chunks)
        gw.objects.commit_object(sink, rec)
        return rec

    def store_small(data: bytes) -> ObjectRecord:
        # Small bodies are stored in a single trip to a worker thread: thread hops,
        # not bytes, are what small-object throughput is made of.
        sink.write(data)
        sink.finish()
        return commit()

    try:
        if body.declared is not None and body.declared <= SMALL_BODY:
            data = b"".join([block async for block in body.blocks()])
            rec = await gw.run(store_small, data)
        else:
            await require_bucket(gw, bucket)
            await _receive_into(gw, body, sink)
            rec = await gw.run(commit)
    except BaseException:
        with trio.CancelScope(shield=True):
            await gw.run(sink.abort)
        raise
    await resp.simple(200, [("etag", quote_etag(rec.etag))])


async def copy_object(gw: Gateway, req: Request, resp: Responder) -> None:
    bucket, key = req.bucket or "", check_key(req.key or "")
    src = await _copy_source(gw, req)
    directive = (req.header("x-amz-metadata-directive") or "COPY").upper()
    tag_directive = (req.header("x-amz-tagging-directive") or "COPY").upper()
    if directive == "REPLACE":
        metadata, content_type = _stored_headers(req)
    else:
        metadata, content_type = src.metadata, src.content_type
        if (src.bucket, src.key) == (bucket, key):
            raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata.")
    tags = _parse_tag_header(req.header("x-amz-tagging")) if tag_directive == "REPLACE" else src.tags
    await _small_body(req)
    rec = ObjectRecord(bucket, key, src.size, src.etag, src.sha256, content_type, metadata, tags,
                       time.time(), src.chunk_size, src.chunks)
    await gw.run(gw.objects.copy_object, rec)
    await resp.xml(xmlout.copy_result("CopyObjectResult", rec.etag, rec.modified))


async def get_object(gw: Gateway, req: Request, resp: Responder) -> None:
    head = req.method == "HEAD"
    check_key(req.key or "")
    rec, small = await gw.run(_lookup_small, gw, req.bucket, req.key, not head)
    if rec is None:
        rec = await _object_or_fetch(gw, req)
    _check_conditions(req, rec)
    headers = _object_headers(rec)
    for param, header in RESPONSE_OVERRIDES.items():
        if param in req.query:
            headers = [(k, v) for k, v in headers if k != header] + [(header, req.query[param])]
    start, end, status = 0, rec.size, 200
    wanted = _parse_range(req.header("range"), rec.size)
    if wanted is not None:
        start, end = wanted
        status = 206
        headers.append(("content-range", f"bytes {start}-{end - 1}/{rec.size}"))
    headers.append(("content-length", str(end - start)))
    if head:
        await resp.start(status, headers)
        await resp.body(b"")
        return
    if small is not None:
        await resp.start(status, headers)
        await resp.body(small[start:end])
        return
    await send_object(gw, rec, start, end, status, headers, resp)


def _lookup_small(gw: Gateway, bucket: str, key: str, read: bool) -> tuple[ObjectRecord | None, bytes | None]:
    """The object's record and, if it is small, its bytes: a small GET is one thread trip."""
    rec = gw.objects.catalog.get_object(bucket, key)
    if rec is None or not read or rec.size > SMALL_BODY:
        return rec, None
    reader = gw.objects.reader(rec)
    try:
        return rec, reader.read(0, rec.size) if rec.size else b""
    finally:
        reader.close()


async def send_object(gw: Gateway, rec: ObjectRecord, start: int, end: int, status: int,
                      headers: list[tuple[str, str]], resp: Responder) -> None:
    """Stream [start, end) of an object; the next block is read while one is being sent."""
    reader = gw.objects.reader(rec)
    try:
        # The first block is read before the headers go out, so a damaged chunk still
        # gets a proper error response instead of a cut-off body.
        first = await gw.run(reader.read, start, min(READ_BLOCK, end - start)) if end > start else b""
        await resp.start(status, headers)
        if start + len(first) >= end:
            await resp.body(first)
            return
        send_channel, receive_channel = trio.open_memory_channel[bytes](1)

        async def read_blocks(offset: int) -> None:
            async with send_channel:
                while offset < end:
                    block = await gw.run(reader.read, offset, min(READ_BLOCK, end - offset))
                    offset += len(block)
                    await send_channel.send(block)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_blocks, start + len(first))
            await resp.body(first, True)
            async with receive_channel:
                async for block in receive_channel:
                    await resp.body(block, True)
        await resp.body(b"")
    finally:
        reader.close()


async def delete_object(gw: Gateway, req: Request, resp: Responder) -> None:
    key = check_key(req.key or "")
    await require_bucket(gw, req.bucket)
    await gw.run(gw.objects.delete_object, req.bucket, key)
    await resp.simple(204)


async def get_tagging(gw: Gateway, req: Request, resp: Responder) -> None:
    rec = await _existing_object(gw, req)
    await resp.xml(xmlout.tagging(rec.tags))


async def put_tagging(gw: Gateway, req: Request, resp: Responder) -> None:
    await _existing_object(gw, req)
    root = _parse_xml(await _small_body(req))
    tags: dict[str, str] = {}
    for tag in root.iter():
        if _local(tag.tag) == "Tag":
            k, v = _child_text(tag, "Key"), _child_text(tag, "Value")
            if k is None:
                raise S3Error("MalformedXML", "A tag has no key.")
            tags[k] = v or ""
    _check_tags(tags)
    if not await gw.run(gw.objects.catalog.set_tags, req.bucket, req.key, tags):
        raise S3Error("NoSuchKey", "The specified key does not exist.", req.resource)
    await resp.simple(200)


async def delete_tagging(gw: Gateway, req: Request, resp: Responder) -> None:
    await _existing_object(gw, req)
    await gw.run(gw.objects.catalog.set_tags, req.bucket, req.key, {})
    await resp.simple(204)


# ---------------------------------------------------------------- multipart
async def create_upload(gw: Gateway, req: Request, resp: Responder) -> None:
    bucket, key = req.bucket or "", check_key(req.key or "")
    metadata, content_type = _stored_headers(req)
    tags = _parse_tag_header(req.header("x-amz-tagging"))
    await require_bucket(gw, bucket)
    await _small_body(req)
    upload = UploadRecord(secrets.token_urlsafe(24), bucket, key, time.time(), content_type, metadata, tags)
    await gw.run(gw.objects.catalog.create_upload, upload)
    await resp.xml(xmlout.initiate_upload(bucket, key, upload.upload_id))


async def upload_part(gw: Gateway, req: Request, resp: Responder) -> None:
    upload = await _upload(gw, req)
    number = _part_number(req)
    if "x-amz-copy-source" in req.headers:
        await _upload_part_copy(gw, req, resp, upload, number)
        return
    body = RequestBody(req, MAX_PART)
    sink = gw.objects.sink(want_sha256=body.expected_sha256 is not None)
    try:
        await _receive_into(gw, body, sink)
        body.check_sha256(sink.sha256)
        _check_content_md5(req, sink.md5_digest)
        await _record_part(gw, upload, PartRecord(number, sink.size, sink.md5, time.time(), sink.chunks), sink)
    except BaseException:
        with trio.CancelScope(shield=True):
            await gw.run(sink.abort)
        raise
    await resp.simple(200, [("etag", quote_etag(sink.md5))])


async def _upload_part_copy(gw: Gateway, req: Request, resp: Responder, upload: UploadRecord, number: int) -> None:
    src = await _copy_source(gw, req)
    start, end = 0, src.size
    if req.header("x-amz-copy-source-range"):
        wanted = _parse_range(req.header("x-amz-copy-source-range"), src.size)
        if wanted is None:
            raise S3Error("InvalidArgument", "The x-amz-copy-source-range value is not valid.")
        start, end = wanted
    await _small_body(req)
    sink = gw.objects.sink(want_sha256=False)
    reader = gw.objects.reader(src)
    try:
        offset = start
        while offset < end:
            block = await gw.run(reader.read, offset, min(READ_BLOCK, end - offset))
            await gw.run(sink.write, block)
            offset += len(block)
        await gw.run(sink.finish)
        part = PartRecord(number, sink.size, sink.md5, time.time(), sink.chunks)
        await _record_part(gw, upload, part, sink)
    except BaseException:
        with trio.CancelScope(shield=True):
            await gw.run(sink.abort)
        raise
    finally:
        reader.close()
    await resp.xml(xmlout.copy_result("CopyPartResult", part.md5, part.modified))


async def _record_part(gw: Gateway, upload: UploadRecord, part: PartRecord, sink: ObjectSink) -> None:
    old = await gw.run(gw.objects.catalog.put_part, upload.upload_id, part, sink.owner)
    if old is None:
        raise S3Error("NoSuchUpload", "The specified upload does not exist.")
    sink.committed = True
    await gw.run(gw.objects.free, old)


async def complete_upload(gw: Gateway, req: Request, resp: Responder) -> None:
    upload = await _upload(gw, req)
    root = _parse_xml(await _small_body(req))
    requested: list[tuple[int, str]] = []
    for part in _children(root, "Part"):
        try:
            requested.append((int(_child_text(part, "PartNumber") or ""), (_child_text(part, "ETag") or "").strip('"')))
        except ValueError:
            raise S3Error("MalformedXML", "PartNumber must be an integer.") from None
    if not requested:
        raise S3Error("MalformedXML", "The XML you provided lists no parts.")
    numbers = [n for n, _ in requested]
    if numbers != sorted(set(numbers)):
        raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order.")
    stored = {p.number: p for p in await gw.run(gw.objects.catalog.parts, upload.upload_id)}
    parts = []
    for n, etag in requested:
        part = stored.get(n)
        if part is None or (etag and etag != part.md5):
            raise S3Error("InvalidPart", f"Part {n} could not be found or its ETag does not match.")
        parts.append(part)
    for part in parts[:-1]:
        if part.size < MIN_PART:
            raise S3Error("EntityTooSmall", "Your proposed upload is smaller than the minimum allowed object size.")
    size = sum(p.size for p in parts)
    etag = hashlib.md5(b"".join(bytes.fromhex(p.md5) for p in parts)).hexdigest() + f"-{len(parts)}"

    async def assemble_and_commit() -> None:
        chunks, sha256, sink = await gw.run(gw.objects.assemble, parts)
        rec = ObjectRecord(upload.bucket, upload.key, size, etag, sha256, upload.content_type,
                           upload.metadata, upload.tags, time.time(), CHUNK_SIZE, chunks)
        try:
            if sink is not None:
                await gw.run(gw.objects.commit_object, sink, rec)
            else:
                await gw.run(gw.objects.copy_object, rec)
        except BaseException:
            if sink is not None:
                with trio.CancelScope(shield=True):
                    await gw.run(sink.abort)
            raise
        leftovers = await gw.run(gw.objects.catalog.finish_upload, upload.upload_id)
        await gw.run(gw.objects.free, leftovers)
        if sha256 is None:
            gw.hash_later(rec)

    # Re-cutting unaligned parts into 16 MiB chunks takes a while for big objects; like
    # S3, answer 200 early and send whitespace so the client's read timeout never fires.
    # A failure after that point is reported as an <Error> document in the 200 body,
    # which SDKs check for on CompleteMultipartUpload.
    keepalive = _KeepAlive(resp, gw.keepalive_seconds)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keepalive.run)
            try:
                await assemble_and_commit()
            finally:
                nursery.cancel_scope.cancel()
    except S3Error as err:
        if not keepalive.started:
            raise
        await resp.body(err.xml(resp.request_id).split(b"\n", 1)[1])
        return
    doc = xmlout.complete_upload(f"/{upload.bucket}/{upload.key}", upload.bucket, upload.key, etag)
    if keepalive.started:
        await resp.body(doc.encode())
    else:
        await resp.xml(doc)


class _KeepAlive:
    def __init__(self, resp: Responder, interval: float) -> None:
        self.resp = resp
        self.interval = interval
        self.started = False

    async def run(self) -> None:
        await trio.sleep(self.interval)
        with trio.CancelScope(shield=True):  # never leave a half-sent message behind
            await self.resp.start(200, [("content-type", "application/xml")])
            await self.resp.body(b'<?xml version="1.0" encoding="UTF-8"?>\n', more=True)
            self.started = True
        while True:
            await trio.sleep(self.interval)
            with trio.CancelScope(shield=True):
                await self.resp.body(b" ", more=True)


async def abort_upload(gw: Gateway, req: Request, resp: Responder) -> None:
    upload = await _upload(gw, req)
    leftovers = await gw.run(gw.objects.catalog.finish_upload, upload.upload_id)
    await gw.run(gw.objects.free, leftovers)
    await resp.simple(204)


async def list_parts(gw: Gateway, req: Request, resp: Responder) -> None:
    upload = await _upload(gw, req)
    try:
        marker = int(req.query.get("part-number-marker", "0"))
        max_parts = max(1, min(1000, int(req.query.get("max-parts", "1000"))))
    except ValueError:
        raise S3Error("InvalidArgument", "part-number-marker and max-parts must be integers.") from None
    parts = [p for p in await gw.run(gw.objects.catalog.parts, upload.upload_id) if p.number > marker]
    await resp.xml(xmlout.list_parts(upload, parts[:max_parts], marker, max_parts, len(parts) > max_parts))


# ----------------------------------------------------------------- helpers
async def require_bucket(gw: Gateway, bucket: str | None) -> None:
    if not bucket or not await gw.run(gw.objects.catalog.bucket_exists, bucket):
        raise S3Error("NoSuchBucket", "The specified bucket does not exist.", f"/{bucket or ''}")


async def _existing_object(gw: Gateway, req: Request) -> ObjectRecord:
    check_key(req.key or "")
    rec = await gw.run(gw.objects.catalog.get_object, req.bucket, req.key)
    if rec is None:
        await require_bucket(gw, req.bucket)
        raise S3Error("NoSuchKey", "The specified key does not exist.", req.resource)
    return rec


async def _object_or_fetch(gw: Gateway, req: Request) -> ObjectRecord:
    check_key(req.key or "")
    rec = await gw.run(gw.objects.catalog.get_object, req.bucket, req.key)
    if rec is None and gw.upstream is not None:
        rec = await gw.upstream.fetch(req.bucket or "", req.key or "")
    if rec is None:
        await require_bucket(gw, req.bucket)
        raise S3Error("NoSuchKey", "The specified key does not exist.", req.resource)
    return rec


async def _upload(gw: Gateway, req: Request) -> UploadRecord:
    upload = await gw.run(gw.objects.catalog.get_upload, req.query.get("uploadId", ""))
    if upload is None or (upload.bucket, upload.key) != (req.bucket, req.key):
        raise S3Error("NoSuchUpload", "The specified upload does not exist.", req.resource)
    return upload


async def _copy_source(gw: Gateway, req: Request) -> ObjectRecord:
    source = unquote(req.header("x-amz-copy-source") or "").split("?", 1)[0].lstrip("/")
    bucket, _, key = source.partition("/")
    if not bucket or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: sourcebucket/sourcekey.")
    check_key(key)
    user = req.auth.user if req.auth else None
    if user is None or not user.can_read(bucket):
        raise S3Error("AccessDenied", "Access Denied", f"/{bucket}/{key}")
    rec = await gw.run(gw.objects.catalog.get_object, bucket, key)
    if rec is None:
        raise S3Error("NoSuchKey", "The specified key does not exist.", f"/{bucket}/{key}")
    if_match = req.header("x-amz-copy-source-if-match")
    if if_match and not _etag_matches(if_match, rec.etag):
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
    if_none = req.header("x-amz-copy-source-if-none-match")
    if if_none and _etag_matches(if_none, rec.etag):
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
    return rec


async def _receive_into(gw: Gateway, body: RequestBody, sink: ObjectSink) -> None:
    """Body → sink; the next block is received while the previous one is written.

    The one-slot channel bounds memory per upload to about three blocks.
    """
    send_channel, receive_channel = trio.open_memory_channel[bytes](1)

    async def write_blocks() -> None:
        async with receive_channel:
            async for block in receive_channel:
                await gw.run(sink.write, block)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_blocks)
        async with send_channel:
            async for block in body.blocks():
                await send_channel.send(block)
    await gw.run(sink.finish)


async def _small_body(req: Request) -> bytes:
    if req.header("content-length") in (None, "0") and req.header("transfer-encoding") is None:
        # Drain the (empty) body so the connection stays usable.
        while True:
            message = await req.receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return message.get("body", b"")
    body = RequestBody(req, MAX_XML)
    return await body.read_all()


def _stored_headers(req: Request) -> tuple[dict[str, str], str]:
    metadata = {}
    size = 0
    for name, values in req.headers.items():
        if name.startswith("x-amz-meta-") or name in STORED_HEADERS:
            value = ",".join(values)
            if name == "content-encoding":
                # aws-chunked describes the transfer, not the object.
                value = ",".join(v for v in (p.strip() for p in value.split(",")) if v and v != "aws-chunked")
                if not value:
                    continue
            metadata[name] = _decode_utf8(value)
            size += len(name) + len(value)
    if size > MAX_META:
        raise S3Error("MetadataTooLarge", "Your metadata headers exceed the maximum allowed metadata size.")
    return metadata, req.header("content-type") or "binary/octet-stream"


def _decode_utf8(value: str) -> str:
    # Header bytes arrive as Latin-1; clients send UTF-8 metadata as raw bytes.
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _object_headers(rec: ObjectRecord) -> list[tuple[str, str]]:
    headers = [
        ("content-type", rec.content_type),
        ("etag", quote_etag(rec.etag)),
        ("last-modified", http_date(rec.modified)),
        ("accept-ranges", "bytes"),
    ]
    headers += list(rec.metadata.items())
    if rec.tags:
        headers.append(("x-amz-tagging-count", str(len(rec.tags))))
    if "-" in rec.etag:
        headers.append(("x-amz-mp-parts-count", rec.etag.rsplit("-", 1)[1]))
    return headers


def _parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) for a single `bytes=` range; None to send the whole object."""
    if not value:
        return None
    value = value.strip()
    if not value.startswith("bytes=") or "," in value:
        return None  # S3 ignores ranges it does not support
    first, sep, last = value[len("bytes="):].strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0 or size == 0:
                raise _unsatisfiable(size)
            return max(0, size - suffix), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size:
        raise _unsatisfiable(size)
    if end <= start:
        return None  # malformed ("bytes=9-3"): S3 sends the whole object
    return start, min(end, size)


def _unsatisfiable(size: int) -> S3Error:
    err = S3Error("InvalidRange", "The requested range is not satisfiable")
    err.headers = [("content-range", f"bytes */{size}")]  # type: ignore[attr-defined]
    return err


def _check_conditions(req: Request, rec: ObjectRecord) -> None:
    if_match, if_none = req.header("if-match"), req.header("if-none-match")
    modified = int(rec.modified)
    if if_match is not None and not _etag_matches(if_match, rec.etag):
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
    since = _http_time(req.header("if-unmodified-since"))
    if if_match is None and since is not None and modified > since:
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
    if if_none is not None:
        if _etag_matches(if_none, rec.etag):
            raise S3Error("NotModified")
        return
    since = _http_time(req.header("if-modified-since"))
    if since is not None and modified <= since:
        raise S3Error("NotModified")


def _etag_matches(header: str, etag: str) -> bool:
    candidates = [c.strip().removeprefix("W/").strip('"') for c in header.split(",")]
    return "*" in candidates or etag in candidates


def _http_time(value: str | None) -> int | None:
    parsed = parsedate_tz(value) if value else None
    if parsed is None:
        return None
    return calendar.timegm(parsed[:9]) - (parsed[9] or 0)


def _check_content_md5(req: Request, md5_digest: bytes) -> None:
    value = req.header("content-md5")
    if value is None:
        return
    try:
        want = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.") from None
    if want != md5_digest:
        raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.")


def _parse_tag_header(value: str | None) -> dict[str, str]:
    if not value:
        return {}
    tags = dict(parse_qsl(value, keep_blank_values=True))
    _check_tags(tags)
    return tags


def _check_tags(tags: dict[str, str]) -> None:
    if len(tags) > 10:
        raise S3Error("InvalidTag", "Object tags cannot be greater than 10")
    for k, v in tags.items():
        if not k or len(k) > 128 or len(v) > 256:
            raise S3Error("InvalidTag", "The TagKey or TagValue you have provided is invalid.")


def _part_number(req: Request) -> int:
    try:
        number = int(req.query.get("partNumber", ""))
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_PARTS:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive.")
    return number


def _parse_xml(body: bytes) -> ET.Element:
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise S3Error("MalformedXML", "The XML you provided was not well-formed.")
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate.") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(elem: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in elem if _local(c.tag) == name]


def _child_text(elem: ET.Element, name: str) -> str | None:
    for child in elem:
        if _local(child.tag) == name:
            return child.text or ""
    return None


def _encode_token(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode("utf-8", "surrogatepass")).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode("utf-8", "surrogatepass")
    except (binascii.Error, ValueError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect.") from None
