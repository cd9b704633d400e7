"""SigV2 verification: `Authorization: AWS KEY:SIGNATURE` and `?AWSAccessKeyId=&Signature=&Expires=`.

boto3 still presigns S3 URLs with SigV2 for a custom endpoint in us-east-1, and older
tools sign every request that way, so the gateway accepts it. The string to sign is
S3's: method, Content-MD5, Content-Type, Date (the `Expires` epoch for a URL; empty
when `x-amz-date` is sent), the `x-amz-*` headers, and the resource with the
sub-resources S3 lists. Signatures (base64 HMAC-SHA1) are compared in constant time.
SigV2 signs no body hash: a Content-MD5, when sent, is still checked against the body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from mlfs.gateway.access import AccessPolicy
from mlfs.gateway.errors import S3Error
from mlfs.gateway.sigv4 import (
    MAX_SKEW,
    UNSIGNED_PAYLOAD,
    Authenticated,
    _first,
    _http_date_to_amz,
    _parse_amz_date,
)

# Query parameters that are part of a SigV2 canonical resource (S3's list).
_SUBRESOURCES = frozenset({
    "acl", "cors", "delete", "lifecycle", "location", "logging", "notification", "partNumber", "policy",
    "requestPayment", "restore", "tagging", "torrent", "uploadId", "uploads", "versionId", "versioning",
    "versions", "website", "response-content-type", "response-content-language", "response-expires",
    "response-cache-control", "response-content-disposition", "response-content-encoding",
})
_BASE64_SHA1 = re.compile(r"^[A-Za-z0-9+/]{27}=\Z")


def verify_header(policy: AccessPolicy, method: str, raw_path: bytes, pairs: list[tuple[str, str]],
                  headers: dict[str, list[str]], authorization: str, now: float) -> Authenticated:
    access_key, sep, signature = authorization[len("AWS "):].strip().rpartition(":")
    if not sep or not access_key:
        raise S3Error("AuthorizationHeaderMalformed", "The SigV2 authorization header is malformed.")
    amz_date = _first(headers, "x-amz-date")
    when = _parse_http_time(amz_date if amz_date is not None else _first(headers, "date"))
    if abs(now - when) > MAX_SKEW:
        raise S3Error("RequestTimeTooSkewed", "The difference between the request time and the server's time is too large.")
    date_line = "" if amz_date is not None else (_first(headers, "date") or "")
    # Some clients put the x-amz-date value on the Date line as well: accept either.
    candidates = [date_line] if amz_date is None else ["", amz_date]
    return _verify(policy, method, raw_path, pairs, headers, access_key, signature, candidates)


def verify_query(policy: AccessPolicy, method: str, raw_path: bytes, pairs: list[tuple[str, str]],
                 headers: dict[str, list[str]], now: float) -> Authenticated:
    query = dict(pairs)
    try:
        expires = int(query["Expires"])
    except (KeyError, ValueError):
        raise S3Error("AccessDenied", "Query-string authentication requires the Expires parameter.") from None
    if now > expires:
        raise S3Error("AccessDenied", "Request has expired")
    return _verify(policy, method, raw_path, pairs, headers, query["AWSAccessKeyId"], query["Signature"],
                   [query["Expires"]], presigned=True)


def _verify(policy: AccessPolicy, method: str, raw_path: bytes, pairs: list[tuple[str, str]],
            headers: dict[str, list[str]], access_key: str, signature: str, date_lines: list[str],
            presigned: bool = False) -> Authenticated:
    user = policy.user(access_key)
    if user is None:
        raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    if not _BASE64_SHA1.match(signature):
        raise S3Error("SignatureDoesNotMatch", "The request signature is not a base64 HMAC-SHA1.")
    payload = _first(headers, "x-amz-content-sha256") or UNSIGNED_PAYLOAD
    if payload.startswith("STREAMING-"):
        raise S3Error("InvalidRequest", "aws-chunked bodies need SigV4.")
    # In a presigned URL, x-amz-* query parameters stand for headers (boto3 puts them there).
    amz = {name: ",".join(v.strip() for v in values) for name, values in headers.items() if name.startswith("x-amz-")}
    if presigned:
        amz.update({k.lower(): v for k, v in pairs if k.lower().startswith("x-amz-")})
    amz_lines = "".join(f"{name}:{amz[name]}\n" for name in sorted(amz))
    content_md5 = _first(headers, "content-md5") or ""
    content_type = _first(headers, "content-type") or ""
    want = base64.b64decode(signature)
    for resource in _resources(raw_path, pairs):
        for date_line in date_lines:
            text = f"{method}\n{content_md5}\n{content_type}\n{date_line}\n{amz_lines}{resource}"
            got = hmac.new(user.secret_key.encode(), text.encode("utf-8", "surrogateescape"), hashlib.sha1).digest()
            if hmac.compare_digest(got, want):
                return Authenticated(user, payload, None)
    raise S3Error(
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
    )


def _resources(raw_path: bytes, pairs: list[tuple[str, str]]) -> list[str]:
    """Canonical resources the client may have signed for this path."""
    # Clients sign the path exactly as they encoded it in the URL; a bucket's own
    # resource is `/bucket/` in S3's definition, which botocore signs for `/bucket`.
    path = raw_path.split(b"?", 1)[0].decode("latin-1")
    paths = [path, path + "/"] if path.count("/") == 1 and len(path) > 1 else [path]
    subresources = sorted((k, v) for k, v in pairs if k in _SUBRESOURCES)
    suffix = "?" + "&".join(f"{k}={v}" if v else k for k, v in subresources) if subresources else ""
    return [p + suffix for p in paths]


def _parse_http_time(value: str | None) -> float:
    if value is None:
        raise S3Error("AccessDenied", "The request has no valid x-amz-date or Date header.")
    if re.match(r"^\d{8}T\d{6}Z$", value):
        return _parse_amz_date(value)
    return _parse_amz_date(_http_date_to_amz(value))

