"""Check, before a mount daemonises, that S3 answers with the credentials given.

A mount is lazy, so without this check a wrong endpoint or refused credentials would
surface only at the first read, long after `mlfs mount` returned. One HEAD of one
object of the manifest (and of its bucket when the object is missing) tells apart an
unreachable endpoint, refused credentials and a missing bucket; a missing object is
left to the lazy read path, which reports it per file.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import botocore.exceptions

from mlfs.errors import MountError
from mlfs.manifest.model import Manifest
from mlfs.s3.client import S3Settings, make_client

_REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
            "ExpiredToken", "AuthorizationHeaderMalformed", "403", "401"}


def probe_s3(manifest: Manifest, settings: S3Settings | None = None, client: Any = None) -> None:
    """Raise MountError naming the problem if the manifest's S3 cannot be used.

    With `client`, the probe uses it (and leaves it open: a mount goes on with the client
    it checked, instead of paying for a second one); else a short-lived one from `settings`.
    """
    entry = next((e for e in manifest.files if e.source.is_s3), None)
    if entry is None:
        return
    own = client is None
    if own:
        quick = dataclasses.replace(settings or S3Settings(), connect_timeout=5.0, read_timeout=10.0,
                                    own_retries=False, max_pool=2)
        client = make_client(quick)
    endpoint = client.meta.endpoint_url
    bucket, key = entry.source.bucket, entry.source.key
    try:
        try:
            client.head_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _status(exc) != 404:
                raise
            # Object missing: is it the bucket? (A missing object alone is a per-file problem.)
            client.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        raise MountError(_describe(exc, endpoint, bucket, key)) from None
    except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError) as exc:
        raise MountError(f"no usable S3 credentials: {exc}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise MountError(f"cannot reach S3 at {endpoint}: {exc}") from None
    finally:
        if own:
            client.close()


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _describe(exc: botocore.exceptions.ClientError, endpoint: Any, bucket: str, key: str) -> str:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = _status(exc)
    if code in _REFUSED or status in (401, 403):
        return f"S3 at {endpoint} refused the credentials for s3://{bucket}/{key} ({code or status})"
    if status == 404:
        return f"bucket {bucket!r} does not exist at {endpoint}"
    return f"S3 at {endpoint} answered HTTP {status} {code} for s3://{bucket}/{key}"
