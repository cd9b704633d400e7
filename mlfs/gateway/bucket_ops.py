"""S3 bucket operations: list, create, delete, head, location, object listings, bulk delete."""

from __future__ import annotations

import hashlib

from mlfs.gateway import xmlout
from mlfs.gateway.catalog import Listing
from mlfs.gateway.context import Gateway
from mlfs.gateway.errors import S3Error
from mlfs.gateway.http import Request, Responder
from mlfs.gateway.inputs import (
    check_content_md5,
    child_text,
    children,
    decode_token,
    encode_token,
    parse_xml,
    require_bucket,
    small_body,
)
from mlfs.gateway.names import check_bucket, check_key

MAX_KEYS = 1000


async def list_buckets(gw: Gateway, req: Request, resp: Responder) -> None:
    buckets = await gw.run(gw.objects.catalog.buckets)
    user = req.auth.user if req.auth else None
    visible = [b for b in buckets if user is not None and user.can_read(b[0])]
    await resp.xml(xmlout.list_buckets(visible))


async def create_bucket(gw: Gateway, req: Request, resp: Responder) -> None:
    bucket = check_bucket(req.bucket or "")
    await small_body(req)  # CreateBucketConfiguration (region) carries nothing we use
    if not await gw.run(gw.objects.catalog.create_bucket, bucket):
        raise S3Error("BucketAlreadyOwnedByYou", "Your previous request to create the named bucket succeeded.", bucket)
    await resp.simple(200, [("location", f"/{bucket}")])


async def delete_bucket(gw: Gateway, req: Request, resp: Responder) -> None:
    outcome, leftovers = await gw.run(gw.objects.catalog.delete_bucket, req.bucket)
    await gw.run(gw.objects.free, leftovers)
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
        after = decode_token(token) if token is not None else (start_after or "")
    else:
        after = q.get("marker", "")
    if max_keys == 0:
        listing = Listing()  # S3 answers an empty, untruncated page
    else:
        listing = await gw.run(gw.objects.catalog.list_objects, bucket, prefix, delimiter, after, max_keys)
    if v2:
        next_token = encode_token(listing.resume_after) if listing.truncated else None
        owners = q.get("fetch-owner") == "true"
        doc = xmlout.list_objects_v2(bucket, prefix, delimiter, max_keys, listing, url, token, next_token, start_after,
                                     owners)
    else:
        doc = xmlout.list_objects_v1(bucket, prefix, delimiter, after, max_keys, listing, url)
    await resp.xml(doc)


async def list_uploads(gw: Gateway, req: Request, resp: Responder) -> None:
    await require_bucket(gw, req.bucket)
    q = req.query
    prefix, key_marker, id_marker = q.get("prefix", ""), q.get("key-marker", ""), q.get("upload-id-marker", "")
    if q.get("delimiter"):
        raise S3Error("NotImplemented", "ListMultipartUploads with a delimiter is not implemented by mlfs serve.")
    try:
        limit = max(0, min(MAX_KEYS, int(q.get("max-uploads", MAX_KEYS))))
    except ValueError:
        raise S3Error("InvalidArgument", "max-uploads must be an integer.") from None
    if not key_marker:
        id_marker = ""  # S3 ignores an upload-id-marker without a key-marker
    uploads, truncated = await gw.run(gw.objects.catalog.list_uploads, req.bucket, prefix, key_marker, id_marker,
                                      limit)
    await resp.xml(xmlout.list_uploads(req.bucket or "", prefix, key_marker, id_marker, limit, uploads, truncated))


async def delete_objects(gw: Gateway, req: Request, resp: Responder) -> None:
    await require_bucket(gw, req.bucket)
    body = await small_body(req)
    check_content_md5(req, hashlib.md5(body).digest())
    root = parse_xml(body)
    quiet = (child_text(root, "Quiet") or "").lower() == "true"
    keys = [child_text(obj, "Key") or "" for obj in children(root, "Object")]
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
