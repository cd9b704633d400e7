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
