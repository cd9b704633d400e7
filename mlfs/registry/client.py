"""Talking to the registry of an `mlfs serve` gateway, and mounting by reference.

The registry URL is `--registry URL`, else `$MLFS_REGISTRY_URL`, else the S3 endpoint
(`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, which is then an mlfs gateway). Requests
are SigV4-signed with the AWS credential chain, or with
`MLFS_REGISTRY_ACCESS_KEY` / `MLFS_REGISTRY_SECRET_KEY` when the registry's users
differ from the S3 server's.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlfs.errors import ConfigError, ManifestError, MlfsError
from mlfs.manifest.model import Manifest
from mlfs.manifest.validate import load_manifest, parse_manifest
from mlfs.registry.layout import is_reference, parse_reference

MAX_RESPONSE = 300 << 20


class RegistryRequestError(MlfsError):
    """The registry answered with an error; the message is its one line."""


def registry_url(explicit: str | None = None, endpoint_url: str | None = None) -> str:
    url = explicit or os.environ.get("MLFS_REGISTRY_URL") or endpoint_url \
        or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        raise ConfigError("no registry: pass --registry URL or set MLFS_REGISTRY_URL (an mlfs serve gateway)")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"registry URL {url!r} must start with http:// or https://")
    return url.rstrip("/")


class RegistryClient:
    def __init__(self, url: str | None = None, endpoint_url: str | None = None, profile: str | None = None,
                 region: str | None = None, timeout: float = 120.0) -> None:
        self.url = registry_url(url, endpoint_url)
        self.timeout = timeout
        self._credentials = _credentials(profile)
        self._region = region or os.environ.get("AWS_REGION") or "us-east-1"

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        return self.call("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", path, body=body)

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             body: dict[str, Any] | None = None) -> dict[str, Any]:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        # %20, never "+": the signature covers the query exactly as the server decodes it.
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None},
                                       quote_via=urllib.parse.quote)
        url = f"{self.url}/api/registry/{path}" + (f"?{query}" if query else "")
        data = json.dumps(body).encode() if body is not None else b""
        request = AWSRequest(method=method, url=url, data=data,
                             headers={"content-type": "application/json"} if body is not None else {})
        if self._credentials is not None:
            S3SigV4Auth(self._credentials, "s3", self._region).add_auth(request)
        prepared = request.prepare()
        req = urllib.request.Request(prepared.url, data=data or None, method=method, headers=dict(prepared.headers))
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read(MAX_RESPONSE)
        except urllib.error.HTTPError as exc:
            raw = exc.read(1 << 20)
            try:
                message = json.loads(raw).get("message") or raw.decode(errors="replace")
            except ValueError:
                message = f"HTTP {exc.code} (is {self.url} an mlfs serve gateway?)"
            raise RegistryRequestError(f"registry: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryRequestError(f"registry {self.url} unreachable: {getattr(exc, 'reason', exc)}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise RegistryRequestError(f"registry {self.url}: the answer is not JSON (not an mlfs gateway?)") from None


def _credentials(profile: str | None) -> Any:
    from botocore.credentials import Credentials

    key, secret = os.environ.get("MLFS_REGISTRY_ACCESS_KEY"), os.environ.get("MLFS_REGISTRY_SECRET_KEY")
    if key and secret:
        return Credentials(key, secret)
    import boto3

    try:
        found = boto3.session.Session(profile_name=profile).get_credentials()
    except Exception as exc:
        raise ConfigError(f"AWS configuration: {exc}") from None
    return found.get_frozen_credentials() if found is not None else None


def load_mount_manifest(spec: str | Path, registry: str | None = None, endpoint_url: str | None = None,
                        profile: str | None = None, region: str | None = None) -> Manifest:
    """The manifest to mount: a file, or what a `models:/…` / `datasets:/…` reference resolves to.

    A resolved manifest is checked against the digest the registry recorded when the
    version was registered, and names the version it resolved to
    (`metadata.resolved`: reference, version number and label, digest).
    """
    if not is_reference(str(spec)):
        return load_manifest(spec)
    parse_reference(str(spec))  # a malformed reference is the user's error, before any request
    client = RegistryClient(registry, endpoint_url, profile, region)
    doc = client.get("manifest", ref=str(spec))
    text = doc.get("manifest")
    if not isinstance(text, str):
        raise RegistryRequestError(f"{spec}: the registry sent no manifest")
    digest = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    if digest != doc.get("manifest_digest"):
        raise ManifestError(f"{spec}: manifest digest {digest} differs from the registered {doc.get('manifest_digest')}")
    manifest = parse_manifest(text, origin=f"manifest of {spec}")
    split = doc.get("split")
    if split:
        manifest = _split_of(manifest, split, str(spec))
    manifest.name = str(doc["name"])
    manifest.version = str(doc["label"])
    manifest.metadata = {**manifest.metadata, "resolved": {
        "ref": str(spec), "kind": doc["kind"], "name": doc["name"], "version": doc["version"],
        "label": doc["label"], "uri": doc["uri"], "manifest_digest": digest,
        **({"split": split} if split else {})}}
    return manifest


def _split_of(manifest: Manifest, split: str, spec: str) -> Manifest:
    head = split + "/"
    files = [replace(f, path=f.path[len(head):]) for f in manifest.files if f.path.startswith(head)]
    links = [replace(s, path=s.path[len(head):]) for s in manifest.symlinks if s.path.startswith(head)]
    if not files:
        raise ManifestError(f"{spec}: no files in split {split!r}")
    doc = Manifest(manifest.name, manifest.version, files, manifest.chunk_size, links, manifest.prefetch,
                   manifest.metadata, block_size=manifest.block_size)
    return parse_manifest(doc.dumps(), origin=f"split {split} of {spec}")


def describe_resolution(manifest: Manifest) -> str | None:
    """"models:/tinylm@production → version 3 (v2)" for a resolved manifest."""
    r = manifest.metadata.get("resolved") if isinstance(manifest.metadata, dict) else None
    if not isinstance(r, dict):
        return None
    return f"{r['ref']} → {r['kind']} {r['name']} version {r['version']} ({r['label']}, {r['uri']})"
