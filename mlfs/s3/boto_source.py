"""`RangeSource` on a botocore client: the full AWS configuration and credential chain."""

from __future__ import annotations

import http.client
from typing import Any

import botocore.exceptions
import urllib3.exceptions

from mlfs.s3.source import S3Answered, S3NoCredentials, S3Unreachable, fill

# What reading a body raises when it breaks off.
_BROKE_OFF = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    # The body is read from urllib3's stream directly, so its errors arrive unwrapped
    # (a reset mid-body is a ProtocolError).
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


class BotocoreSource:
    kind = "botocore"

    def __init__(self, client: Any) -> None:
        self.client = client
        self.endpoint = str(getattr(getattr(client, "meta", None), "endpoint_url", "S3"))

    def get_range(self, bucket: str, key: str, start: int, end: int,
                  etag: str | None) -> tuple[_Body, str | None]:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end - 1}"}
        if etag:
            kwargs["IfMatch"] = etag
        response = self._call(self.client.get_object, **kwargs)
        return _Body(response["Body"]), response.get("ContentRange")

    def head_object(self, bucket: str, key: str) -> None:
        self._call(self.client.head_object, Bucket=bucket, Key=key)

    def head_bucket(self, bucket: str) -> None:
        self._call(self.client.head_bucket, Bucket=bucket)

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()

    def _call(self, method: Any, **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            raise S3Answered(status, str(error.get("Code", "")), str(error.get("Message", ""))) from None
        except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError) as exc:
            raise S3NoCredentials(str(exc)) from None
        except botocore.exceptions.BotoCoreError as exc:  # no reply, or none that could be read
            raise S3Unreachable(str(exc)) from None


class _Body:
    """botocore's streaming body, read straight into the caller's buffer."""

    def __init__(self, body: Any) -> None:
        self._body = body
        raw = getattr(body, "_raw_stream", body)  # StreamingBody wraps urllib3's response
        fp = getattr(raw, "_fp", None)
        if (isinstance(fp, http.client.HTTPResponse) and not getattr(raw, "decode_content", True)
                and not raw.headers.get("content-encoding")):
            # urllib3's readinto reads into a new bytes object and copies it into ours (and
            # http.client's read copies once more): receive straight into the buffer instead.
            self._inner = fp.readinto
        else:
            self._inner = getattr(raw, "readinto", None) or self._by_read

    def _by_read(self, buffer: memoryview) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readinto(self, buffer: memoryview) -> int:
        try:
            return fill(self._inner, buffer)
        except _BROKE_OFF as exc:
            raise S3Unreachable(f"body broke off: {exc}") from None

    def close(self) -> None:
        self._body.close()
