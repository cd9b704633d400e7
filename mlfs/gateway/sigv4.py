"""Request authentication: SigV4 (Authorization header and presigned URLs), and SigV2.

The canonical request is rebuilt from what arrived on the wire; the string-to-sign,
the signing-key derivation and the HMAC come from botocore's `SigV4Auth`, the same
code clients sign with. Signatures are compared in constant time.

As S3 does, every `x-amz-*` header the request carries (and `content-md5` and
`content-type`, for header auth) must be covered by the signature: otherwise a header
added after signing (say `x-amz-copy-source`) would change what a signed request does.
The credential scope must name the gateway's region. SigV2 (`Authorization: AWS
KEY:SIG` and `?AWSAccessKeyId=&Signature=&Expires=`, what boto3 presigns by default for
a custom endpoint) is verified in `sigv2`.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
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
DEFAULT_REGION = "us-east-1"
_HEX_SIGNATURE = re.compile(r"^[0-9a-f]{64}\Z")
# Presigned URLs cannot know the body; content-type/-md5 then need no signature (as in S3).
_SIGNED_IF_PRESENT = ("content-md5", "content-type")


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
    signer: Signer | None  # None for SigV2, which has no aws-chunked signing


def authenticate(
    policy: AccessPolicy,
    method: str,
    raw_path: bytes,
    query_string: bytes,
    headers: dict[str, list[str]],
    now: float | None = None,
    region: str = DEFAULT_REGION,
    content_headers_signed: bool = False,
) -> Authenticated | None:
    """The verified caller, or None for an anonymous request. Raises S3Error on a bad signature.

    `content_headers_signed` (the S3 API: the content type is stored with the object)
    also requires Content-Type and Content-MD5, when sent, to be signed.
    """
    now = time.time() if now is None else now
    authorization = _first(headers, "authorization")
    pairs = _query_pairs(query_string)
    query = dict(pairs)
    presigned = False
    if authorization is not None and authorization.startswith("AWS "):
        from mlfs.gateway.sigv2 import verify_header

        return verify_header(policy, method, raw_path, pairs, headers, authorization, now)
    if authorization is None and "AWSAccessKeyId" in query and "Signature" in query:
        from mlfs.gateway.sigv2 import verify_query

        return verify_query(policy, method, raw_path, pairs, headers, now)
    if authorization is not None:
        if not authorization.startswith("AWS4-HMAC-SHA256 "):
            raise S3Error("InvalidRequest", "Unsupported authorization type: use AWS4-HMAC-SHA256 or AWS (SigV2).")
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
            # S3 answers 403 here, not 400 (checked against S3's own answers).
            raise S3Error("AccessDenied", "X-Amz-Expires must be between 1 and 604800 seconds.")
        signed_at = _parse_amz_date(amz_date)
        if now > signed_at + expires:
            raise S3Error("AccessDenied", "Request has expired")
        if signed_at - now > MAX_SKEW:
            raise S3Error("AccessDenied", "Request is not valid yet")
        payload = _first(headers, "x-amz-content-sha256") or UNSIGNED_PAYLOAD
        canonical_pairs = [(k, v) for k, v in pairs if k != "X-Amz-Signature"]
        presigned = True
    else:
        return None

    malformed = "AuthorizationQueryParametersError" if presigned else "AuthorizationHeaderMalformed"
    access_key, date, scope_region, service, terminator = _credential(credential)
    if date != amz_date[:8] or service != "s3" or terminator != "aws4_request":
        raise S3Error(malformed, "The credential scope does not match the request date or service.")
    if scope_region != region:
        raise S3Error(malformed, f"The authorization region '{_printable(scope_region)}' is wrong; expecting '{region}'.")
    if not _HEX_SIGNATURE.match(signature):
        raise S3Error("SignatureDoesNotMatch", "The request signature is not 64 lowercase hex digits.")
    user = policy.user(access_key)
    if user is None:
        raise S3Error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    signed_names = signed.split(";")
    if "host" not in signed_names:
        raise S3Error("AccessDenied", "The host header must be signed.")
    check_signed_headers(headers, set(signed_names), presigned, content_headers_signed and not presigned)
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


def check_signed_headers(headers: dict[str, list[str]], signed: set[str], presigned: bool,
                         content_headers: bool) -> None:
    """Refuse a request carrying an x-amz-* (or content-md5/-type) header the signature does not cover."""
    for name in headers:
        must = name.startswith("x-amz-") or (content_headers and name in _SIGNED_IF_PRESENT)
        if name == "x-amz-content-sha256" and presigned:
            must = False  # part of the canonical request as the payload hash
        if must and name not in signed:
            raise S3Error("AccessDenied", f"There were headers present in the request which were not signed: {name}")


def _printable(value: str) -> str:
    return value.encode("ascii", "backslashreplace").decode()[:64]


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
