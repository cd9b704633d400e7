"""Ask an `mlfs serve` gateway for the manifest of a prefix instead of re-hashing it.

The gateway recorded every chunk's SHA-256 when the objects were written, so
`GET /{bucket}?mlfs-manifest&prefix=P` answers at once. Any other S3 server ignores
or rejects the parameter; then the caller falls back to reading the objects.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

from mlfs.manifest.model import Manifest
from mlfs.manifest.validate import parse_manifest

log = logging.getLogger(__name__)


def fetch_gateway_manifest(client: Any, bucket: str, prefix: str, timeout: float = 120.0) -> Manifest | None:
    """The gateway's manifest of s3://bucket/prefix, or None when the server is not a gateway."""
    endpoint = client.meta.endpoint_url.rstrip("/")
    query = urllib.parse.urlencode({"mlfs-manifest": "", "prefix": prefix})
    url = f"{endpoint}/{urllib.parse.quote(bucket)}?{query}"
    request = AWSRequest(method="GET", url=url, headers={})
    credentials = client._request_signer._credentials  # the client's own resolved chain
    if credentials is not None:
        S3SigV4Auth(credentials.get_frozen_credentials(), "s3", client.meta.region_name).add_auth(request)
    prepared = request.prepare()
    try:
        with urllib.request.urlopen(
            urllib.request.Request(prepared.url, headers=dict(prepared.headers)), timeout=timeout
        ) as resp:
            body = resp.read(64 << 20)
    except (urllib.error.URLError, OSError) as exc:
        log.debug("no gateway manifest from %s: %s", endpoint, exc)
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None  # an ordinary S3 server answered with a bucket listing
    if not isinstance(doc, dict) or "schema" not in doc:
        return None
    return parse_manifest(doc, origin=f"gateway manifest of s3://{bucket}/{prefix}")
