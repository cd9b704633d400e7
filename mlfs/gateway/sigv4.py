"""SigV4 verification (Authorization header and presigned URLs).

The canonical request is rebuilt from what arrived on the wire; the string-to-sign,
the signing-key derivation and the HMAC come from botocore's `SigV4Auth`, the same
code clients sign with. Signatures are compared in constant time.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import time
from dataclasses import dataclass
from email.utils import parsedate_tz
from urllib.parse import quote, unquote_to_bytes

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from mlfs.gateway.access import AccessPolicy, User
from mlfs.gateway.errors import S3Error

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256().hexdigest()
MAX_SKEW = 15 * 60
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600


@dataclass
class Signer:
    """Signing context of one verified request, reused to check aws-chunked chunk signatures."""

    auth: SigV4Auth
    request: AWSRequest
    amz_date: str
    scope: str
    seed_signature: str

    def sign(self, string_to_sign: str) -> str:
        return self.auth.signature(string_to_sign, self.request)


@dataclass
class Authenticated:
    user: User
    payload_hash: str  # x-amz-content-sha256 as signed: hex, UNSIGNED-PAYLOAD or STREAMING-*
    signer: Signer


def authenticate(
    policy: AccessPolicy,
    method: str,
    raw_path: bytes,
    query_string: bytes,
    headers: dict[str, list[str]],
    now: float | None = None,
) -> Authenticated | None:
    """The verified caller, or None for an anonymous request. Raises S3Error on a bad signature."""
    now = time.time() if now is None else now
    authorization = _first(headers, "authorization")
    pairs = _query_pairs(query_string)
    query = dict(pairs)
    if authorization is not None:
        if not authorization.startswith("AWS4-HMAC-SHA256 "):
            raise S3Error("InvalidRequest", "Only AWS Signature Version 4 (AWS4-HMAC-SHA256) is supported.")
        fields = _auth_fields(authorization[len("AWS4-HMAC-SHA256 "):])
        credential, signed, signature = fields["Credential"], fields["SignedHeaders"], fields["Signature"]
        amz_date = _first(headers, "x-amz-date") or _http_date_to_amz(_first(headers, "date"))
        payload = _first(headers, "x-amz-content-sha256")
        if payload is None:
            raise S3Error("InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
        if abs(now - _parse_amz_date(amz_date)) > MAX_SKEW:
            raise S3Error("RequestTimeTooSkewed", "The difference between the request time and the server's time is too large.")
        canonical_pairs = pairs
    elif "X-Amz-Algorithm" in query:
        if query["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
            raise S3Error("AuthorizationQueryParametersError", "X-Amz-Algorithm must be AWS4-HMAC-SHA256.")
        try:
            credential, signed = query["X-Amz-Credential"], query["X-Amz-SignedHeaders"]
            signature, amz_date = query["X-Amz-Signature"], query["X-Amz-Date"]
            expires = int(query["X-Amz-Expires"])
        except (KeyError, ValueError):
            raise S3Error("AuthorizationQueryParametersError", "Presigned URL is missing a required X-Amz-* parameter.") from None
        if not 0 < expires <= MAX_PRESIGN_EXPIRES:
            raise S3Error("AuthorizationQueryParametersError", "X-Amz-Expires must be between 1 and 604800 seconds.")
        signed_at = _parse_amz_date(amz_date)
        if now > signed_at + expires:
            raise S3Error("AccessDenied", "Request has expired")
        if signed_at - now > MAX_SKEW:
            raise S3Error("AccessDenied", "Request is not valid yet")
        payload = _first(headers, "x-amz-content-sha256") or UNSIGNED_PAYLOAD
        canonical_pairs = [(k, v) for k, v in pairs if k != "X-Amz-Signature"]
    else:
        return None

    access_key, date, region, service, terminator = _credential(credential)
    if date != amz_date[:8] or service != "s3" or terminator != "aws4_request":
        raise S3Error("AuthorizationHeaderMalformed", "The credential scope does not match the request date or service.")
    user = policy.user(access_key)
    if user is None:
        raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    signed_names = signed.split(";")
    if "host" not in signed_names:
        raise S3Error("AccessDenied", "The host header must be signed.")
    canonical_headers = "".join(
        f"{name}:{','.join(' '.join(v.split()) for v in headers.get(name, []))}\n" for name in signed_names
    )
    canonical_query = "&".join(f"{k}={v}" for k, v in sorted((_encode(k), _encode(v)) for k, v in canonical_pairs))

    auth = SigV4Auth(Credentials(user.access_key, user.secret_key), "s3", region)
    request = AWSRequest(method=method, url="http://gateway/")
    request.context["timestamp"] = amz_date
    for uri in _canonical_uris(raw_path):
        canonical = "\n".join([method, uri, canonical_query, canonical_headers, signed, payload])
        expected = auth.signature(auth.string_to_sign(request, canonical), request)
        if hmac.compare_digest(expected, signature):
            signer = Signer(auth, request, amz_date, auth.credential_scope(request), signature)
            return Authenticated(user, payload, signer)
    raise S3Error(
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
    )


def _canonical_uris(raw_path: bytes) -> list[str]:
    # AWS re-encodes the decoded path strictly; a client that signed the path exactly
    # as it sent it (some encode fewer characters) is accepted too.
    strict = quote(unquote_to_bytes(raw_path), safe="/~")
    as_sent = raw_path.decode("latin-1")
    return [strict] if strict == as_sent else [strict, as_sent]


def _encode(value: str) -> str:
    return quote(value, safe="-_.~")


def _query_pairs(query_string: bytes) -> list[tuple[str, str]]:
    pairs = []
    for item in query_string.decode("latin-1").split("&"):
        if not item:
            continue
        key, _, value = item.partition("=")
        pairs.append((unquote_to_bytes(key).decode("utf-8", "replace"), unquote_to_bytes(value).decode("utf-8", "replace")))
    return pairs


def _auth_fields(text: str) -> dict[str, str]:
    fields = {}
    for part in text.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    if not {"Credential", "SignedHeaders", "Signature"} <= fields.keys():
        raise S3Error("AuthorizationHeaderMalformed", "The authorization header is malformed.")
    return fields


def _credential(credential: str) -> tuple[str, str, str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5:
        raise S3Error("AuthorizationHeaderMalformed", "The credential is malformed.")
    return parts[0], parts[1], parts[2], parts[3], parts[4]


def _first(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None


def _parse_amz_date(value: str | None) -> float:
    try:
        return float(calendar.timegm(time.strptime(value or "", "%Y%m%dT%H%M%SZ")))
    except ValueError:
        raise S3Error("AccessDenied", "X-Amz-Date is missing or malformed.") from None


def _http_date_to_amz(value: str | None) -> str:
    parsed = parsedate_tz(value) if value else None
    if parsed is None:
        raise S3Error("AccessDenied", "The request has no valid x-amz-date or Date header.")
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(calendar.timegm(parsed[:9]) - (parsed[9] or 0)))
