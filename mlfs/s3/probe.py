"""Check, before a mount daemonises, that S3 answers with the credentials given.

A mount is lazy, so without this check a wrong endpoint or refused credentials would
surface only at the first read, long after `mlfs mount` returned. One HEAD of one
object of the manifest (and of its bucket when the object is missing) tells apart an
unreachable endpoint, refused credentials and a missing bucket; a missing object is
left to the lazy read path, which reports it per file.
"""

from __future__ import annotations

import dataclasses

from mlfs.errors import MountError
from mlfs.manifest.model import Manifest
from mlfs.s3.client import S3Settings
from mlfs.s3.source import RangeSource, S3Answered, S3NoCredentials, S3Unreachable, open_source

_REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
            "ExpiredToken", "AuthorizationHeaderMalformed", "403", "401"}


def probe_s3(manifest: Manifest, settings: S3Settings | None = None, source: RangeSource | None = None) -> None:
    """Raise MountError naming the problem if the manifest's S3 cannot be used.

    With `source`, the probe uses it (and leaves it open: a mount goes on with the source
    it checked, instead of paying for a second one); else a short-lived one from `settings`.
    """
    entry = next((e for e in manifest.files if e.source.is_s3), None)
    if entry is None:
        return
    own = source is None
    if own:
        quick = dataclasses.replace(settings or S3Settings(), connect_timeout=5.0, read_timeout=10.0,
                                    own_retries=False, max_pool=2)
        source = open_source(quick)
    assert source is not None
    endpoint = source.endpoint
    bucket, key = entry.source.bucket, entry.source.key
    try:
        try:
            source.head_object(bucket, key)
        except S3Answered as exc:
            if exc.status != 404:
                raise
            # Object missing: is it the bucket? (A missing object alone is a per-file problem.)
            source.head_bucket(bucket)
    except S3Answered as exc:
        raise MountError(_describe(exc, endpoint, bucket, key)) from None
    except S3NoCredentials as exc:
        raise MountError(f"no usable S3 credentials: {exc}") from None
    except S3Unreachable as exc:
        raise MountError(f"cannot reach S3 at {endpoint}: {exc}") from None
    finally:
        if own:
            source.close()


def _describe(exc: S3Answered, endpoint: str, bucket: str, key: str) -> str:
    if exc.code in _REFUSED or exc.status in (401, 403):
        return f"S3 at {endpoint} refused the credentials for s3://{bucket}/{key} ({exc.code})"
    if exc.status == 404:
        return f"bucket {bucket!r} does not exist at {endpoint}"
    return f"S3 at {endpoint} answered HTTP {exc.status} {exc.code} for s3://{bucket}/{key}"
