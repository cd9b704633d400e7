"""S3 multipart uploads: create, upload part (and part copy), complete, abort, list parts."""

from __future__ import annotations

import hashlib
import logging
import secrets
import time

import trio

from mlfs.gateway import xmlout
from mlfs.gateway.body import RequestBody
from mlfs.gateway.catalog import ObjectRecord, PartRecord, UploadRecord
from mlfs.gateway.context import Gateway
from mlfs.gateway.errors import S3Error
from mlfs.gateway.http import Request, Responder
from mlfs.gateway.inputs import (
    check_content_md5,
    check_write_condition,
    child_text,
    children,
    copy_source,
    parse_copy_range,
    parse_tag_header,
    parse_xml,
    part_number,
    receive_into,
    require_bucket,
    small_body,
    stored_headers,
    upload_of,
    write_condition,
)
from mlfs.gateway.names import check_key
from mlfs.gateway.objects import CHUNK_SIZE, READ_BLOCK, ObjectSink
from mlfs.gateway.tasks import open_nursery
from mlfs.gateway.xmlout import quote_etag

log = logging.getLogger(__name__)

MAX_PART = 5 * 1024**3
MIN_PART = 5 * 1024**2


async def create_upload(gw: Gateway, req: Request, resp: Responder) -> None:
    bucket, key = req.bucket or "", check_key(req.key or "")
    metadata, content_type = stored_headers(req)
    tags = parse_tag_header(req.header("x-amz-tagging"))
    await require_bucket(gw, bucket)
    await small_body(req)
    upload = UploadRecord(secrets.token_urlsafe(24), bucket, key, time.time(), content_type, metadata, tags)
    await gw.run(gw.objects.catalog.create_upload, upload)
    await resp.xml(xmlout.initiate_upload(bucket, key, upload.upload_id))


async def upload_part(gw: Gateway, req: Request, resp: Responder) -> None:
    upload = await upload_of(gw, req)
    number = part_number(req)
    if "x-amz-copy-source" in req.headers:
        await _upload_part_copy(gw, req, resp, upload, number)
        return
    body = RequestBody(req, MAX_PART)
    sink = gw.objects.sink(want_sha256=body.expected_sha256 is not None)
    try:
        await receive_into(gw, body, sink)
        body.check_sha256(sink.sha256)
        check_content_md5(req, sink.md5_digest)
        await _record_part(gw, upload, PartRecord(number, sink.size, sink.md5, time.time(), sink.chunks), sink)
    except BaseException:
        with trio.CancelScope(shield=True):
            await gw.run(sink.abort)
        raise
    await resp.simple(200, [("etag", quote_etag(sink.md5))])


async def _upload_part_copy(gw: Gateway, req: Request, resp: Responder, upload: UploadRecord, number: int) -> None:
    src = await copy_source(gw, req)
    start, end = 0, src.size
    copy_range = req.header("x-amz-copy-source-range")
    if copy_range:
        start, end = parse_copy_range(copy_range, src.size)
    await small_body(req)
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
    try:
        upload = await upload_of(gw, req)
    except S3Error:
        doc = await _repeated_completion(gw, req)
        if doc is None:
            raise
        await resp.xml(doc)
        return
    condition = write_condition(req)
    await check_write_condition(gw, req, condition)
    root = parse_xml(await small_body(req))
    requested: list[tuple[int, str]] = []
    for part in children(root, "Part"):
        try:
            requested.append((int(child_text(part, "PartNumber") or ""), (child_text(part, "ETag") or "").strip('"')))
        except ValueError:
            raise S3Error("MalformedXML", "PartNumber must be an integer.") from None
    if not requested:
        raise S3Error("MalformedXML", "The XML you provided lists no parts.")
    numbers = [n for n, _ in requested]
    if numbers != sorted(numbers):
        raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order.")
    # A part number listed twice (a client that re-sent a part) is one part, as in S3:
    # the last entry for it is the one checked.
    requested = list(dict(requested).items())
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
                await gw.run(gw.objects.commit_object, sink, rec, condition)
            else:
                await gw.run(gw.objects.copy_object, rec, condition)
        except BaseException:
            if sink is not None:
                with trio.CancelScope(shield=True):
                    await gw.run(sink.abort)
            raise
        leftovers = await gw.run(gw.objects.catalog.finish_upload, upload.upload_id, etag)
        await gw.run(gw.objects.free, leftovers)
        if sha256 is None:
            gw.hash_later(rec)

    # Re-cutting unaligned parts into 16 MiB chunks takes a while for big objects; like
    # S3, answer 200 early and send whitespace so the client's read timeout never fires.
    # A failure after that point is reported as an <Error> document in the 200 body,
    # which SDKs check for on CompleteMultipartUpload.
    keepalive = _KeepAlive(resp, gw.keepalive_seconds)
    try:
        async with open_nursery() as nursery:
            nursery.start_soon(keepalive.run)
            try:
                await assemble_and_commit()
            finally:
                nursery.cancel_scope.cancel()
    except S3Error as err:
        if not keepalive.started:
            raise
        log.error("completing upload of s3://%s/%s failed: %s", upload.bucket, upload.key, err)
        await resp.body(err.xml(resp.request_id).split(b"\n", 1)[1])
        return
    doc = xmlout.complete_upload(f"/{upload.bucket}/{upload.key}", upload.bucket, upload.key, etag)
    if keepalive.started:
        await resp.body(doc.encode())
    else:
        await resp.xml(doc)


async def _repeated_completion(gw: Gateway, req: Request) -> str | None:
    """The answer to a completion repeated after it succeeded (SDKs retry after timeouts)."""
    done = await gw.run(gw.objects.catalog.completed_upload, req.query.get("uploadId", ""))
    if done is None or done[:2] != (req.bucket, req.key):
        return None
    current = await gw.run(gw.objects.catalog.get_object, req.bucket, req.key)
    if current is None or current.etag != done[2]:
        return None  # replaced or deleted since: the completion's object is gone
    await small_body(req)
    return xmlout.complete_upload(f"/{req.bucket}/{req.key}", req.bucket or "", req.key or "", done[2])


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
    upload = await upload_of(gw, req)
    leftovers = await gw.run(gw.objects.catalog.finish_upload, upload.upload_id)
    await gw.run(gw.objects.free, leftovers)
    await resp.simple(204)


async def list_parts(gw: Gateway, req: Request, resp: Responder) -> None:
    upload = await upload_of(gw, req)
    try:
        marker = int(req.query.get("part-number-marker", "0"))
        max_parts = max(1, min(1000, int(req.query.get("max-parts", "1000"))))
    except ValueError:
        raise S3Error("InvalidArgument", "part-number-marker and max-parts must be integers.") from None
    parts = [p for p in await gw.run(gw.objects.catalog.parts, upload.upload_id) if p.number > marker]
    await resp.xml(xmlout.list_parts(upload, parts[:max_parts], marker, max_parts, len(parts) > max_parts))
