"""Build boto3 S3 clients the way AWS tools do.

Endpoint, credentials, profile and region come from the standard chain
(`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, `AWS_PROFILE`, `AWS_REGION`,
`AWS_MAX_ATTEMPTS`, shared config files, instance roles); explicit settings override.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mlfs.errors import ConfigError


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    max_pool: int = 16
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    # Mounts retry whole chunk fetches themselves (also on resets mid-body, which
    # botocore cannot retry), so their client makes one attempt per call.
    own_retries: bool = False
    # boto3's managed transfers (upload_file, copy) for bulk uploads such as `mlfs push`;
    # everything else uses the plain botocore client, which starts faster.
    transfers: bool = False


def make_client(settings: S3Settings) -> Any:
    # botocore is imported here, not with the module: commands that never talk to S3
    # (status, unmount, switch) start without it.
    import botocore.config
    import botocore.session

    endpoint = settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL"
    )
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"endpoint URL {endpoint!r} must start with http:// or https://")
    config = botocore.config.Config(
        max_pool_connections=settings.max_pool,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retries={"mode": "standard", "total_max_attempts": 1} if settings.own_retries
        else {"mode": "standard"},
        # Custom endpoints (SeaweedFS, MinIO, the embedded gateway) rarely have
        # wildcard DNS for virtual-hosted buckets.
        s3={"addressing_style": "path"} if endpoint else {},
        # Checksums on every response cost CPU and are redundant: mlfs verifies SHA-256.
        response_checksum_validation="when_required",
        request_checksum_calculation="when_required",
    )
    # botocore's session, not boto3's: the same client (credential chain, profiles,
    # endpoints) without importing boto3's transfer manager, a second of a mount's start-up.
    try:
        session = botocore.session.Session(profile=settings.profile)
        if not os.environ.get("AWS_DATA_PATH"):
            session.register_component("data_loader", _shared_loader())
        region = settings.region or session.get_config_variable("region") or "us-east-1"
        if settings.transfers:
            import boto3

            return boto3.session.Session(botocore_session=session).client(
                "s3", endpoint_url=endpoint or None, region_name=region, config=config)
        return session.create_client("s3", endpoint_url=endpoint or None, region_name=region, config=config)
    except Exception as exc:  # botocore raises ProfileNotFound and friends
        raise ConfigError(f"AWS configuration: {exc}") from None


@functools.lru_cache(maxsize=1)
def _shared_loader() -> Any:
    """botocore's loader of its bundled data, shared by every client of this process.

    It caches the parsed S3 model, endpoints and rule sets (a few hundred ms to load);
    a mount's probe client and its daemon's client (created after the fork, which keeps
    the cache) then pay for them once. Only data is shared: each client still has its
    own session, credentials and connections.
    """
    import botocore.loaders

    class Loader(botocore.loaders.Loader):
        def list_available_services(self, type_name: str) -> Any:
            # botocore lists every bundled service (hundreds of directories, about 0.2 s)
            # only to check that the one asked for exists; check just that one.
            return _KnownServices(self, type_name)

    return Loader()  # what botocore builds when AWS_DATA_PATH is unset (it is, here)


class _KnownServices:
    """`name in services` looks at one directory; listing them all asks botocore."""

    def __init__(self, loader: Any, type_name: str) -> None:
        self.loader, self.type_name = loader, type_name

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            return False
        return any(os.path.isdir(os.path.join(path, name)) for path in self.loader.search_paths)

    def __iter__(self) -> Any:
        import botocore.loaders

        return iter(botocore.loaders.Loader.list_available_services(self.loader, self.type_name))


def split_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` → (bucket, prefix)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"{url!r} is not an s3://bucket/prefix URL")
    return parts.netloc, parts.path.lstrip("/")
