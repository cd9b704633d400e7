"""S3 object operations: PUT, GET/HEAD (ranges, conditions), copy, delete, tagging.

Blocking work (SQLite, chunk files, hashing) runs in worker threads through `gw.run`,
under one CapacityLimiter, so the event loop only shuffles bytes.
"""

from __future__ import annotations

import logging
import time

import trio

from mlfs.gateway import xmlout
from mlfs.gateway.body import ClientGone, RequestBody
from mlfs.gateway.catalog import ObjectRecord
from mlfs.gateway.connections import shut_down
from mlfs.gateway.context import Gateway
from mlfs.gateway.errors import S3Error
from mlfs.gateway.http import Request, Responder
from mlfs.gateway.inputs import (
    check_conditions,
    check_content_md5,
    check_tags,
    check_write_condition,
    child_text,
    copy_source,
    existing_object,
    local_name,
    object_headers,
    object_or_fetch,
    parse_range,
    parse_tag_header,
    parse_xml,
    receive_into,
    require_bucket,
    small_body,
    stored_headers,
    write_condition,
)
from mlfs.gateway.limits import TransferClock
from mlfs.gateway.names import check_key
from mlfs.gateway.objects import CHUNK_SIZE, EMPTY_SHA256
from mlfs.gateway.tasks import open_nursery
from mlfs.gateway.xmlout import quote_etag

log = logging.getLogger(__name__)

MAX_OBJECT = 5 * 1024**3
SEND_BLOCK = 256 << 10  # two of these per download at most: 1,000 slow readers hold ~0.5 GiB
SMALL_BODY = 1024**2  # bodies up to this size are stored in one worker-thread trip
RESPONSE_OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-language": "content-language",
    "response-expires": "expires",
    "response-cache-control": "cache-control",
    "response-content-disposition": "content-disposition",
    "response-content-encoding": "content-encoding",
}


async def put_object(gw: Gateway, req: Request, resp: Responder) -> None:
    bucket, key = req.bucket or "", check_key(req.key or "")
    metadata, content_type = stored_headers(req)
    tags = parse_tag_header(req.header("x-amz-tagging"))
    body = RequestBody(req, MAX_OBJECT)
    condition = write_condition(req)
    await check_write_condition(gw, req, condition)
    sink = gw.objects.sink()

    def commit() -> ObjectRecord:
        body.check_sha256(sink.sha256)
        check_content_md5(req, sink.md5_digest)
        rec = ObjectRecord(bucket, key, sink.size, sink.md5, sink.sha256 if sink.chunks else EMPTY_SHA256,
                           content_type, metadata, tags, time.time(), CHUNK_SIZE, sink.chunks)
        gw.objects.commit_object(sink, rec, condition)
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
            await receive_into(gw, body, sink)
            rec = await gw.run(commit)
    except BaseException:
        with trio.CancelScope(shield=True):
            await gw.run(sink.abort)
        raise
    await resp.simple(200, [("etag", quote_etag(rec.etag))])


async def copy_object(gw: Gateway, req: Request, resp: Responder) -> None:
    bucket, key = req.bucket or "", check_key(req.key or "")
    src = await copy_source(gw, req)
    directive = (req.header("x-amz-metadata-directive") or "COPY").upper()
    tag_directive = (req.header("x-amz-tagging-directive") or "COPY").upper()
    if directive == "REPLACE":
        metadata, content_type = stored_headers(req)
    else:
        metadata, content_type = src.metadata, src.content_type
        if (src.bucket, src.key) == (bucket, key):
            raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata.")
    tags = parse_tag_header(req.header("x-amz-tagging")) if tag_directive == "REPLACE" else src.tags
    condition = write_condition(req)
    await small_body(req)
    rec = ObjectRecord(bucket, key, src.size, src.etag, src.sha256, content_type, metadata, tags,
                       time.time(), src.chunk_size, src.chunks)
    await gw.run(gw.objects.copy_object, rec, condition)
    await resp.xml(xmlout.copy_result("CopyObjectResult", rec.etag, rec.modified))


async def get_object(gw: Gateway, req: Request, resp: Responder) -> None:
    head = req.method == "HEAD"
    check_key(req.key or "")
    rec, small = await gw.run(_lookup_small, gw, req.bucket, req.key, not head)
    if rec is None:
        rec = await object_or_fetch(gw, req)
    check_conditions(req, rec)
    headers = object_headers(rec)
    if req.auth is None and any(param in req.query for param in RESPONSE_OVERRIDES):
        # A public link must not serve user content as, say, text/html (as S3 refuses).
        raise S3Error("InvalidRequest", "Request specific response headers cannot be used for anonymous GET requests.")
    for param, header in RESPONSE_OVERRIDES.items():
        if param in req.query:
            headers = [(k, v) for k, v in headers if k != header] + [(header, req.query[param])]
    start, end, status = 0, rec.size, 200
    wanted = parse_range(req.header("range"), rec.size)
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
        await _send_timed(resp, TransferClock(gw.limits), small[start:end], False)
        return
    await send_object(gw, rec, start, end, status, headers, resp)


async def _send_timed(resp: Responder, clock: TransferClock, data: bytes, more: bool) -> None:
    # A client that stops reading (or reads slower than the minimum rate) loses the
    # connection instead of holding a request slot, a chunk file and a buffer forever.
    # The stall cap matters after a fast start: bytes already sent must not buy hours.
    # The HTTP server's socket writes cannot be cancelled (see connections.py): a
    # watchdog shuts the connection down when the deadline passes, failing the write.
    cut = False

    async def watchdog() -> None:
        nonlocal cut
        await trio.sleep(clock.time_left(clock.limits.body_stall))
        cut = True
        log.info("download cut: the client read %d bytes, slower than the minimum rate", clock.done)
        client, server = resp.peer
        if len(client) == 2 and len(server) == 2:
            await trio.to_thread.run_sync(shut_down, client, server)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog)
        await resp.body(data, more)
        nursery.cancel_scope.cancel()
    if cut:
        raise ClientGone()
    clock.advance(len(data))


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
    """Stream [start, end) of an object; the next block is read while one is being sent.

    At most two SEND_BLOCKs are buffered per download (one being sent, one read ahead).
    """
    reader = gw.objects.reader(rec)
    clock = TransferClock(gw.limits)
    try:
        # The first block is read before the headers go out, so a damaged chunk still
        # gets a proper error response instead of a cut-off body.
        first = await gw.run(reader.read, start, min(SEND_BLOCK, end - start)) if end > start else b""
        await resp.start(status, headers)
        if start + len(first) >= end:
            await _send_timed(resp, clock, first, False)
            return
        send_channel, receive_channel = trio.open_memory_channel[bytes](0)

        async def read_blocks(offset: int) -> None:
            async with send_channel:
                while offset < end:
                    block = await gw.run(reader.read, offset, min(SEND_BLOCK, end - offset))
                    offset += len(block)
                    await send_channel.send(block)

        async with open_nursery() as nursery:
            nursery.start_soon(read_blocks, start + len(first))
            await _send_timed(resp, clock, first, True)
            async with receive_channel:
                async for block in receive_channel:
                    await _send_timed(resp, clock, block, True)
        await resp.body(b"")
    finally:
        reader.close()


async def delete_object(gw: Gateway, req: Request, resp: Responder) -> None:
    key = check_key(req.key or "")
    await require_bucket(gw, req.bucket)
    await gw.run(gw.objects.delete_object, req.bucket, key)
    await resp.simple(204)


async def get_tagging(gw: Gateway, req: Request, resp: Responder) -> None:
    rec = await existing_object(gw, req)
    await resp.xml(xmlout.tagging(rec.tags))


async def put_tagging(gw: Gateway, req: Request, resp: Responder) -> None:
    await existing_object(gw, req)
    root = parse_xml(await small_body(req))
    tags: dict[str, str] = {}
    for tag in root.iter():
        if local_name(tag.tag) == "Tag":
            k, v = child_text(tag, "Key"), child_text(tag, "Value")
            if k is None:
                raise S3Error("MalformedXML", "A tag has no key.")
            tags[k] = v or ""
    check_tags(tags)
    if not await gw.run(gw.objects.catalog.set_tags, req.bucket, req.key, tags):
        raise S3Error("NoSuchKey", "The specified key does not exist.", req.resource)
    await resp.simple(200)


async def delete_tagging(gw: Gateway, req: Request, resp: Responder) -> None:
    await existing_object(gw, req)
    await gw.run(gw.objects.catalog.set_tags, req.bucket, req.key, {})
    await resp.simple(204)
