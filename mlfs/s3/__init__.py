"""S3 access: client factory following the AWS configuration conventions."""

from mlfs.s3.client import S3Settings, make_client, split_s3_url

__all__ = ["S3Settings", "make_client", "split_s3_url"]
