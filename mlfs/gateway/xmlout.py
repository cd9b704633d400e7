"""S3 XML response documents (namespace 2006-03-01)."""

from __future__ import annotations

import re
import time
from urllib.parse import quote
from xml.sax.saxutils import escape

from mlfs.gateway.catalog import Listing, ObjectRecord, PartRecord, UploadRecord

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")
OWNER = "<Owner><ID>mlfs</ID><DisplayName>mlfs</DisplayName></Owner>"


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def text(tag: str, value: object, url_encode: bool = False) -> str:
    value = str(value)
    if url_encode:
        value = quote(value, safe="/")
    return f"<{tag}>{escape(_xml_chars(value))}</{tag}>"


def _xml_chars(value: str) -> str:
    # Query values echoed back (prefix, marker, delimiter) may hold characters XML 1.0
    # cannot carry at all, not even as references; they are shown percent-encoded so
    # the document stays parseable. Keys cannot hold them (names.check_key).
    return "".join(f"%{ord(c):02X}" if _NOT_XML.match(c) else c for c in value) if _NOT_XML.search(value) else value


def list_buckets(buckets: list[tuple[str, float]]) -> str:
    items = "".join(
        f"<Bucket>{text('Name', name)}{text('CreationDate', iso(created))}</Bucket>" for name, created in buckets
    )
    return f"<ListAllMyBucketsResult {NS}>{OWNER}<Buckets>{items}</Buckets></ListAllMyBucketsResult>"


def _contents(rec: ObjectRecord, url: bool, owner: bool = True) -> str:
    return (
        f"<Contents>{text('Key', rec.key, url)}{text('LastModified', iso(rec.modified))}"
        f"{text('ETag', quote_etag(rec.etag))}{text('Size', rec.size)}"
        f"<StorageClass>STANDARD</StorageClass>{OWNER if owner else ''}</Contents>"
    )


def _prefixes(listing: Listing, url: bool) -> str:
    return "".join(f"<CommonPrefixes>{text('Prefix', p, url)}</CommonPrefixes>" for p in listing.prefixes)


def list_objects_v2(
    bucket: str, prefix: str, delimiter: str, max_keys: int, listing: Listing, url: bool,
    continuation: str | None, next_token: str | None, start_after: str | None, owners: bool = False,
) -> str:
    parts = [
        f"<ListBucketResult {NS}>", text("Name", bucket), text("Prefix", prefix, url),
        text("KeyCount", len(listing.objects) + len(listing.prefixes)), text("MaxKeys", max_keys),
    ]
    if delimiter:
        parts.append(text("Delimiter", delimiter, url))
    if url:
        parts.append("<EncodingType>url</EncodingType>")
    parts.append(text("IsTruncated", "true" if listing.truncated else "false"))
    if continuation is not None:
        parts.append(text("ContinuationToken", continuation))
    if next_token is not None:
        parts.append(text("NextContinuationToken", next_token))
    if start_after is not None:
        parts.append(text("StartAfter", start_after, url))
    # V2 lists owners only when asked to (fetch-owner=true).
    parts += [_contents(r, url, owners) for r in listing.objects]
    parts.append(_prefixes(listing, url))
    parts.append("</ListBucketResult>")
    return "".join(parts)


def list_objects_v1(
    bucket: str, prefix: str, delimiter: str, marker: str, max_keys: int, listing: Listing, url: bool,
) -> str:
    # V1 never URL-encodes its top-level Prefix, even with encoding-type=url (S3 does
    # not, and botocore, which always asks for url encoding, does not decode it).
    parts = [
        f"<ListBucketResult {NS}>", text("Name", bucket), text("Prefix", prefix),
        text("Marker", marker, url), text("MaxKeys", max_keys),
    ]
    if delimiter:
        parts.append(text("Delimiter", delimiter, url))
    if url:
        parts.append("<EncodingType>url</EncodingType>")
    parts.append(text("IsTruncated", "true" if listing.truncated else "false"))
    if listing.truncated and delimiter:
        last = listing.prefixes[-1] if listing.prefixes and (
            not listing.objects or listing.prefixes[-1] > listing.objects[-1].key) else listing.objects[-1].key
        parts.append(text("NextMarker", last, url))
    parts += [_contents(r, url) for r in listing.objects]
    parts.append(_prefixes(listing, url))
    parts.append("</ListBucketResult>")
    return "".join(parts)


def copy_result(tag: str, etag: str, modified: float) -> str:
    return f"<{tag} {NS}>{text('LastModified', iso(modified))}{text('ETag', quote_etag(etag))}</{tag}>"


def initiate_upload(bucket: str, key: str, upload_id: str) -> str:
    return (
        f"<InitiateMultipartUploadResult {NS}>{text('Bucket', bucket)}{text('Key', key)}"
        f"{text('UploadId', upload_id)}</InitiateMultipartUploadResult>"
    )


def complete_upload(location: str, bucket: str, key: str, etag: str) -> str:
    return (
        f"<CompleteMultipartUploadResult {NS}>{text('Location', location)}{text('Bucket', bucket)}"
        f"{text('Key', key)}{text('ETag', quote_etag(etag))}</CompleteMultipartUploadResult>"
    )


def list_parts(
    upload: UploadRecord, parts: list[PartRecord], marker: int, max_parts: int, truncated: bool
) -> str:
    items = "".join(
        f"<Part>{text('PartNumber', p.number)}{text('LastModified', iso(p.modified))}"
        f"{text('ETag', quote_etag(p.md5))}{text('Size', p.size)}</Part>"
        for p in parts
    )
    next_marker = parts[-1].number if parts else marker
    return (
        f"<ListPartsResult {NS}>{text('Bucket', upload.bucket)}{text('Key', upload.key)}"
        f"{text('UploadId', upload.upload_id)}{text('PartNumberMarker', marker)}"
        f"{text('NextPartNumberMarker', next_marker)}{text('MaxParts', max_parts)}"
        f"{text('IsTruncated', 'true' if truncated else 'false')}{OWNER.replace('Owner', 'Initiator')}{OWNER}"
        f"<StorageClass>STANDARD</StorageClass>{items}</ListPartsResult>"
    )


def list_uploads(bucket: str, prefix: str, key_marker: str, id_marker: str, limit: int,
                 uploads: list[UploadRecord], truncated: bool) -> str:
    items = "".join(
        f"<Upload>{text('Key', u.key)}{text('UploadId', u.upload_id)}"
        f"{OWNER.replace('Owner', 'Initiator')}{OWNER}<StorageClass>STANDARD</StorageClass>"
        f"{text('Initiated', iso(u.created))}</Upload>"
        for u in uploads
    )
    following = ""
    if truncated and uploads:
        following = text("NextKeyMarker", uploads[-1].key) + text("NextUploadIdMarker", uploads[-1].upload_id)
    return (
        f"<ListMultipartUploadsResult {NS}>{text('Bucket', bucket)}{text('KeyMarker', key_marker)}"
        f"{text('UploadIdMarker', id_marker)}{following}{text('Prefix', prefix)}{text('MaxUploads', limit)}"
        f"{text('IsTruncated', 'true' if truncated else 'false')}{items}</ListMultipartUploadsResult>"
    )


def tagging(tags: dict[str, str]) -> str:
    items = "".join(f"<Tag>{text('Key', k)}{text('Value', v)}</Tag>" for k, v in tags.items())
    return f"<Tagging {NS}><TagSet>{items}</TagSet></Tagging>"


def delete_result(deleted: list[str], errors: list[tuple[str, str, str]], quiet: bool) -> str:
    items = [] if quiet else [f"<Deleted>{text('Key', k)}</Deleted>" for k in deleted]
    items += [f"<Error>{text('Key', k)}{text('Code', c)}{text('Message', m)}</Error>" for k, c, m in errors]
    return f"<DeleteResult {NS}>{''.join(items)}</DeleteResult>"


def location() -> str:
    return f"<LocationConstraint {NS}></LocationConstraint>"


def versioning() -> str:
    return f"<VersioningConfiguration {NS}></VersioningConfiguration>"


def quote_etag(etag: str) -> str:
    return f'"{etag}"'
