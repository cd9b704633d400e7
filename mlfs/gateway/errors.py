"""S3 errors: a code, an HTTP status and a message, rendered as S3's XML error body."""

from __future__ import annotations

from xml.sax.saxutils import escape

_STATUS = {
    "AccessDenied": 403,
    "AuthorizationHeaderMalformed": 400,
    "AuthorizationQueryParametersError": 400,
    "BadDigest": 400,
    "BucketAlreadyExists": 409,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "EntityTooLarge": 400,
    "EntityTooSmall": 400,
    "IncompleteBody": 400,
    "InternalError": 500,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidBucketName": 400,
    "InvalidDigest": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "InvalidTag": 400,
    "KeyTooLongError": 400,
    "MalformedXML": 400,
    "MetadataTooLarge": 400,
    "MethodNotAllowed": 405,
    "MissingContentLength": 411,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NoSuchTagSet": 404,
    "NoSuchUpload": 404,
    "NotImplemented": 501,
    "NotModified": 304,
    "PreconditionFailed": 412,
    "RequestTimeTooSkewed": 403,
    "RequestTimeout": 400,
    "ServiceUnavailable": 503,
    "SignatureDoesNotMatch": 403,
    "SlowDown": 503,
    "XAmzContentSHA256Mismatch": 400,
}


class S3Error(Exception):
    """An error the client gets as an S3 XML document (or a bare status for HEAD/304)."""

    def __init__(self, code: str, message: str = "", resource: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = _STATUS[code]
        self.message = message or code
        self.resource = resource

    def xml(self, request_id: str) -> bytes:
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{self.code}</Code><Message>{_xml_text(self.message)}</Message>"
            f"<Resource>{_xml_text(self.resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
        ).encode()


def _xml_text(value: str) -> str:
    # A refused key may hold characters XML cannot carry (NUL, other controls): show
    # them percent-encoded so the error document stays parseable.
    cleaned = "".join(f"%{ord(c):02X}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in value)
    return escape(cleaned)
