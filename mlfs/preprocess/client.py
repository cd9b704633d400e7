"""Call the preprocessing REST API of an `mlfs serve` with the S3 client's own credentials (SigV4)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

from mlfs.errors import FetchError

PREFIX = "/api/preprocessing/"


def call_service(client: Any, method: str, path: str, body: Any = None, timeout: float = 60.0) -> Any:
    """JSON answer of `METHOD /api/preprocessing/PATH`; a one-line FetchError on failure."""
    endpoint = (client.meta.endpoint_url or "").rstrip("/")
    data = json.dumps(body).encode() if body is not None else b""
    headers = {"content-type": "application/json"} if body is not None else {}
    request = AWSRequest(method=method, url=f"{endpoint}{PREFIX}{path}", data=data, headers=headers)
    credentials = client._request_signer._credentials  # the client's own resolved chain
    if credentials is not None:
        S3SigV4Auth(credentials.get_frozen_credentials(), "s3", client.meta.region_name).add_auth(request)
    prepared = request.prepare()
    req = urllib.request.Request(prepared.url, data=data or None, headers=dict(prepared.headers), method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read(16 << 20))
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read(1 << 16)).get("error") or exc.reason
        except ValueError:
            message = exc.reason
        raise FetchError(f"{endpoint}{PREFIX}{path}: {exc.code} {message}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FetchError(f"{endpoint}{PREFIX}{path}: {exc}") from None
