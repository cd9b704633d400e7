"""What a request says, parsed and checked: ranges, conditions, metadata, tags, XML, bodies."""

from __future__ import annotations

import base64
import binascii
import calendar
import xml.etree.ElementTree as ET
from email.utils import parsedate_tz
from urllib.parse import parse_qsl, unquote

import trio

from mlfs.gateway.body import RequestBody
from mlfs.gateway.catalog import ObjectRecord, UploadRecord
from mlfs.gateway.context import Gateway
from mlfs.gateway.errors import S3Error
from mlfs.gateway.http import Request, http_date
from mlfs.gateway.names import check_key
from mlfs.gateway.objects import ObjectSink, WriteCondition
from mlfs.gateway.tasks import open_nursery
from mlfs.gateway.xmlout import quote_etag

MAX_PARTS = 10000
MAX_XML = 2 * 1024**2
MAX_META = 2048
STORED_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires")


async def require_bucket(gw: Gateway, bucket: str | None) -> None:
    if not bucket or not await gw.run(gw.objects.catalog.bucket_exists, bucket):
        raise S3Error("NoSuchBucket", "The specified bucket does not exist.", f"/{bucket or ''}")


async def existing_object(gw: Gateway, req: Request) -> ObjectRecord:
    check_key(req.key or "")
    rec = await gw.run(gw.objects.catalog.get_object, req.bucket, req.key)
    if rec is None:
        await require_bucket(gw, req.bucket)
        raise S3Error("NoSuchKey", "The specified key does not exist.", req.resource)
    return rec


async def object_or_fetch(gw: Gateway, req: Request) -> ObjectRecord:
    check_key(req.key or "")
    rec = await gw.run(gw.objects.catalog.get_object, req.bucket, req.key)
    if rec is None and gw.upstream is not None:
        rec = await gw.upstream.fetch(req.bucket or "", req.key or "", anonymous=req.auth is None)
    if rec is None:
        await require_bucket(gw, req.bucket)
        raise S3Error("NoSuchKey", "The specified key does not exist.", req.resource)
    return rec


async def upload_of(gw: Gateway, req: Request) -> UploadRecord:
    upload = await gw.run(gw.objects.catalog.get_upload, req.query.get("uploadId", ""))
    if upload is None or (upload.bucket, upload.key) != (req.bucket, req.key):
        raise S3Error("NoSuchUpload", "The specified upload does not exist.", req.resource)
    return upload


async def copy_source(gw: Gateway, req: Request) -> ObjectRecord:
    # `?versionId=` is split off before decoding: a `?` inside the key arrives as %3F.
    raw, _, version = (req.header("x-amz-copy-source") or "").partition("?")
    if version and version not in ("versionId=null", "versionId="):
        raise S3Error("NotImplemented", "Copying a specific version is not implemented: objects are not versioned.")
    source = unquote(raw).lstrip("/")
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


async def receive_into(gw: Gateway, body: RequestBody, sink: ObjectSink) -> None:
    """Body → sink; the next block is received while the previous one is written.

    The one-slot channel bounds memory per upload to about three blocks.
    """
    send_channel, receive_channel = trio.open_memory_channel[bytes](1)

    async def write_blocks() -> None:
        async with receive_channel:
            async for block in receive_channel:
                await gw.run(sink.write, block)

    async with open_nursery() as nursery:
        nursery.start_soon(write_blocks)
        async with send_channel:
            async for block in body.blocks():
                await send_channel.send(block)
    await gw.run(sink.finish)


async def small_body(req: Request) -> bytes:
    if req.header("content-length") in (None, "0") and req.header("transfer-encoding") is None:
        # Drain the (empty) body so the connection stays usable.
        while True:
            message = await req.receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return message.get("body", b"")
    body = RequestBody(req, MAX_XML)
    return await body.read_all()


def stored_headers(req: Request) -> tuple[dict[str, str], str]:
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


def object_headers(rec: ObjectRecord) -> list[tuple[str, str]]:
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


def parse_copy_range(value: str, size: int) -> tuple[int, int]:
    """[start, end) of an `x-amz-copy-source-range`: `bytes=FIRST-LAST` inside the source."""
    first, sep, last = value.strip().removeprefix("bytes=").partition("-")
    try:
        start, end = int(first), int(last) + 1
    except ValueError:
        start, end = -1, -1
    if not value.strip().startswith("bytes=") or not sep or start < 0 or not start < end <= size:
        raise S3Error("InvalidArgument", f"Range specified is not valid for source object of size: {size}")
    return start, end


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
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


def write_condition(req: Request) -> WriteCondition | None:
    """If-Match / If-None-Match on a write, as a check of the object the write would replace.

    `If-None-Match: *` makes a create-only write; `If-Match: ETAG` a compare-and-swap.
    """
    if_match, if_none = req.header("if-match"), req.header("if-none-match")
    if if_match is None and if_none is None:
        return None

    def check(current: ObjectRecord | None) -> None:
        if if_match is not None:
            if current is None:
                raise S3Error("NoSuchKey", "The specified key does not exist.", req.resource)
            if not _etag_matches(if_match, current.etag):
                raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
        if if_none is not None and current is not None and _etag_matches(if_none, current.etag):
            raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold")

    return check


async def check_write_condition(gw: Gateway, req: Request, condition: WriteCondition | None) -> None:
    """Refuse early (before the body is received) a write whose condition fails already."""
    if condition is not None:
        condition(await gw.run(gw.objects.catalog.get_object, req.bucket, req.key))


def check_conditions(req: Request, rec: ObjectRecord) -> None:
    if_match, if_none = req.header("if-match"), req.header("if-none-match")
    modified = int(rec.modified)
    if if_match is not None and not _etag_matches(if_match, rec.etag):
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
    since = _http_time(req.header("if-unmodified-since"))
    if if_match is None and since is not None and modified > since:
        raise S3Error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
    if if_none is not None:
        if _etag_matches(if_none, rec.etag):
            raise _not_modified(rec)
        return
    since = _http_time(req.header("if-modified-since"))
    if since is not None and modified <= since:
        raise _not_modified(rec)


def _not_modified(rec: ObjectRecord) -> S3Error:
    err = S3Error("NotModified")
    err.headers = [("etag", quote_etag(rec.etag)), ("last-modified", http_date(rec.modified))]  # type: ignore[attr-defined]
    return err


def _etag_matches(header: str, etag: str) -> bool:
    candidates = [c.strip().removeprefix("W/").strip('"') for c in header.split(",")]
    return "*" in candidates or etag in candidates


def _http_time(value: str | None) -> int | None:
    parsed = parsedate_tz(value) if value else None
    if parsed is None:
        return None
    return calendar.timegm(parsed[:9]) - (parsed[9] or 0)


def check_content_md5(req: Request, md5_digest: bytes) -> None:
    value = req.header("content-md5")
    if value is None:
        return
    try:
        want = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.") from None
    if len(want) != 16:  # not an MD5 at all: S3 says InvalidDigest, not BadDigest
        raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.")
    if want != md5_digest:
        raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.")


def parse_tag_header(value: str | None) -> dict[str, str]:
    if not value:
        return {}
    tags = dict(parse_qsl(value, keep_blank_values=True))
    check_tags(tags)
    return tags


def check_tags(tags: dict[str, str]) -> None:
    if len(tags) > 10:
        raise S3Error("InvalidTag", "Object tags cannot be greater than 10")
    for k, v in tags.items():
        if not k or len(k) > 128 or len(v) > 256:
            raise S3Error("InvalidTag", "The TagKey or TagValue you have provided is invalid.")


def part_number(req: Request) -> int:
    try:
        number = int(req.query.get("partNumber", ""))
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_PARTS:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive.")
    return number


def parse_xml(body: bytes) -> ET.Element:
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise S3Error("MalformedXML", "The XML you provided was not well-formed.")
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        raise S3Error("MalformedXML", "The XML you provided was not well-formed or did not validate.") from None


def local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def children(elem: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in elem if local_name(c.tag) == name]


def child_text(elem: ET.Element, name: str) -> str | None:
    for child in elem:
        if local_name(child.tag) == name:
            return child.text or ""
    return None


def encode_token(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode("utf-8", "surrogatepass")).decode()


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode("utf-8", "surrogatepass")
    except (binascii.Error, ValueError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect.") from None
