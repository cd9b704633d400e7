"""Bucket and key validation.

Keys become file paths in mlfs manifests and mounts, so the gateway refuses keys a
manifest could not hold safely (`..` or `.` segments, NUL and other control characters)
at the door, instead of storing objects nobody can mount.
"""

from __future__ import annotations

import re

from mlfs.gateway.errors import S3Error

MAX_KEY_BYTES = 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_IP_LIKE = re.compile(r"^\d+\.\d+\.\d+\.\d+\Z")


def check_bucket(name: str) -> str:
    if not _BUCKET.match(name) or ".." in name or _IP_LIKE.match(name):
        raise S3Error("InvalidBucketName", "The specified bucket is not valid.", name)
    return name


def check_key(key: str) -> str:
    if not key:
        raise S3Error("InvalidArgument", "Object key must not be empty.")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", "Your key is too long.")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise S3Error("InvalidArgument", "Object key contains a control character.", key)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in key):
        raise S3Error("InvalidArgument", "Object key is not valid UTF-8.")
    if any(part in (".", "..") for part in key.split("/")):
        raise S3Error("InvalidArgument", "Object key must not contain '.' or '..' segments.", key)
    return key
