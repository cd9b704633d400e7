"""What a mount asks of S3: ranged GETs of objects and two HEADs, behind one interface.

Two implementations answer it. `SigV4Client` signs its requests itself and speaks
HTTP through `http.client`: it is used when the environment names everything a
request needs (an endpoint, static keys, a region), which is how a mount in a
container is configured. Its start-up is a few milliseconds where botocore's import
and client cost a mount about 250 ms before its first byte. Anything else (profiles,
shared config files, instance roles, SSO, AWS's own endpoints) goes through
`BotocoreSource`, botocore's client and credential chain.

Errors are the same whichever answers: `S3Answered` when S3 replied with an error
status, `S3Unreachable` (a `ConnectionError`) when no reply came or a body broke off,
`S3NoCredentials` when there are none to sign with.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from mlfs.errors import ConfigError
from mlfs.s3.client import S3Settings


class S3Answered(Exception):
    """S3 replied with an error status; `code` is its error code (the status when none)."""

    def __init__(self, status: int, code: str, message: str = "") -> None:
        super().__init__(f"HTTP {status} {code}" + (f": {message}" if message else ""))
        self.status, self.code, self.message = status, code or str(status), message


class S3Unreachable(ConnectionError):
    """No reply from S3, or a body that broke off; worth retrying."""


class S3NoCredentials(Exception):
    """No credentials to sign requests with."""


def fill(readinto: Callable[[memoryview], int], buffer: memoryview) -> int:
    """Call `readinto` until `buffer` is full or it returns 0 (the body ended); the count read.

    A socket hands over what has arrived, so one call rarely fills a 16 MiB buffer."""
    got = 0
    while got < len(buffer):
        n = readinto(buffer[got:])
        if not n:
            break
        got += n
    return got


class RangeBody(Protocol):
    def readinto(self, buffer: memoryview) -> int:
        """Fill `buffer` as far as the body goes; short only at its end."""

    def close(self) -> None: ...


class RangeSource(Protocol):
    endpoint: str
    kind: str  # which implementation: "sigv4" or "botocore" (shown by `mlfs status`)

    def get_range(self, bucket: str, key: str, start: int, end: int,
                  etag: str | None) -> tuple[RangeBody, str | None]:
        """Bytes [start, end) of an object (If-Match `etag`): the body and its Content-Range."""

    def head_object(self, bucket: str, key: str) -> None: ...

    def head_bucket(self, bucket: str) -> None: ...

    def close(self) -> None: ...


def open_source(settings: S3Settings) -> RangeSource:
    """The lightest source that reaches S3 the way botocore would with these settings."""
    direct = direct_settings(settings)
    if direct is not None:
        from mlfs.s3.sigv4_client import SigV4Client

        return SigV4Client(**direct)
    from mlfs.s3.boto_source import BotocoreSource
    from mlfs.s3.client import make_client

    return BotocoreSource(make_client(settings))


def direct_settings(settings: S3Settings, env: dict[str, str] | None = None) -> dict | None:
    """SigV4Client's arguments when the environment determines every one of them, else None.

    botocore would sign with the same keys for the same endpoint and region: an explicit
    endpoint, keys from the environment (botocore's first credential provider) and no
    profile that could name others, a region given or no config file that could give one.
    `MLFS_S3_CLIENT=botocore` always chooses botocore.
    """
    env = os.environ if env is None else env
    if env.get("MLFS_S3_CLIENT", "").lower() == "botocore":
        return None
    endpoint = settings.endpoint_url
    if not endpoint and env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() != "true":
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return None  # AWS's own endpoints vary by region and bucket: botocore knows them
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"endpoint URL {endpoint!r} must start with http:// or https://")
    if settings.profile or env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE"):
        return None
    access_key, secret_key = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not access_key or not secret_key:
        return None
    region = settings.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if not region:
        config = env.get("AWS_CONFIG_FILE") or str(Path("~/.aws/config").expanduser())
        if os.path.exists(config):
            return None  # it may set a region: botocore reads it
        region = "us-east-1"
    return {
        "endpoint": endpoint,
        "region": region,
        "access_key": access_key,
        "secret_key": secret_key,
        "token": env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None,
        "connect_timeout": settings.connect_timeout,
        "read_timeout": settings.read_timeout,
        "ca_bundle": env.get("AWS_CA_BUNDLE") or None,
        "max_pool": settings.max_pool,
    }
