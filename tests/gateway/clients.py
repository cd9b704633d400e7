"""Client helpers shared by the gateway tests."""

from __future__ import annotations

import boto3
import botocore.config

from tests.servers import ACCESS_KEY, SECRET_KEY, S3Server


def presign_client(server: S3Server, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):  # type: ignore[no-untyped-def]
    """A client that presigns with SigV4 (boto3 still defaults to SigV2 for S3 presigned URLs)."""
    return boto3.client(
        "s3", endpoint_url=server.endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=botocore.config.Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                      retries={"mode": "standard", "max_attempts": 1}),
    )


def sign_headers(server: S3Server, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                 payload_hash: str | None = None, secret_key: str = SECRET_KEY) -> dict[str, str]:
    """Headers of a SigV4-signed request (signed by botocore, as any client would)."""
    import hashlib

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method=method, url=server.endpoint + path, data=body, headers=dict(headers or {}))
    request.headers["host"] = server.endpoint.split("://", 1)[1]
    fixed_payload = payload_hash or hashlib.sha256(body).hexdigest()

    class FixedPayloadAuth(S3SigV4Auth):
        # botocore would hash the body itself; tests need to declare other payloads.
        def payload(self, request: AWSRequest) -> str:
            return fixed_payload

    FixedPayloadAuth(Credentials(ACCESS_KEY, secret_key), "s3", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def send_raw(server: S3Server, method: str, path: str, headers: dict[str, str], body: bytes = b"",
             timeout: float = 20.0) -> tuple[int, bytes]:
    """Send exactly these headers and body bytes (no client-side fix-ups); (status, body)."""
    import http.client
    from urllib.parse import urlsplit

    host = urlsplit(server.endpoint)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        if not any(name.lower() in ("content-length", "transfer-encoding") for name in headers):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if body:
            conn.send(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
