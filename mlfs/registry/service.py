"""The registry as a gateway service: storage next to the gateway's metadata, write
hooks on its object store, and the HTTP APIs under `/api/2.0/mlflow/` and `/api/registry/`.

Callers authenticate as gateway users: HTTP basic auth with an access key and secret
(what the `mlflow` client sends with MLFLOW_TRACKING_USERNAME/PASSWORD), or a SigV4
signature like any S3 request. Reading needs a valid user; changing a version needs
write rights on the bucket that holds it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from mlfs.errors import MlfsError
from mlfs.gateway.errors import S3Error
from mlfs.registry.db import RegistryDB
from mlfs.registry.errors import InvalidValue, PermissionDenied, RegistryError, Unauthenticated
from mlfs.registry.registry import Registry

if TYPE_CHECKING:
    from mlfs.gateway.access import User
    from mlfs.gateway.context import Gateway

log = logging.getLogger(__name__)
MAX_BODY = 256 << 20  # a registration carries its manifest
MAX_SMALL_BODY = 1 << 20
BODY_SECONDS = 120


def extend(gw: Gateway) -> None:
    """Add the registry to a gateway (GatewayConfig.extensions)."""
    from mlfs.registry.api import ROUTES

    db = RegistryDB(gw.objects.data_dir / "registry.sqlite3")
    registry = Registry(db, gw.objects)
    gw.objects.write_guards.append(registry.guard)
    gw.objects.write_listeners.append(registry.on_write)
    for prefix in ("/api/2.0/mlflow/", "/api/registry/"):
        gw.services.append(RegistryService(prefix, registry, ROUTES))


class Call:
    """One API request: who is asking, what they sent."""

    def __init__(self, gw: Gateway, registry: Registry, user: User, params: dict[str, Any]) -> None:
        self.gw = gw
        self.registry = registry
        self.user = user
        self.params = params

    def get(self, name: str, default: Any = None, required: bool = False) -> Any:
        value = self.params.get(name, default)
        if required and (value is None or value == ""):
            raise InvalidValue(f"missing value for required parameter '{name}'")
        return value

    def may_write(self, bucket: str | None) -> None:
        ok = self.user.admin or bool(self.user.write) if bucket is None else self.user.can_write(bucket)
        if not ok:
            raise PermissionDenied(f"user {self.user.name} may not change the registry for bucket {bucket or '*'}")

    async def run(self, fn: Any, *args: Any) -> Any:
        return await self.gw.run(fn, *args)


class RegistryService:
    def __init__(self, prefix: str, registry: Registry, routes: dict[tuple[str, str], Any]) -> None:
        self.prefix = prefix
        self.registry = registry
        self.routes = routes

    async def __call__(self, gw: Gateway, scope: dict[str, Any], receive: Any, send: Any) -> None:
        method, path = scope["method"], scope["path"]
        status, doc, extra = 200, {}, []
        try:
            handler = self.routes.get((method, path))
            if handler is None:
                if any(p == path for _, p in self.routes):
                    raise _NotFound("ENDPOINT_NOT_FOUND", f"{method} is not allowed on {path}", 405)
                raise _NotFound("ENDPOINT_NOT_FOUND", f"no API endpoint {path}", 404)
            headers = _headers(scope)
            body = await _read_body(receive, MAX_BODY if path.startswith("/api/registry/") else MAX_SMALL_BODY)
            user = _authenticate(gw, scope, headers, body)
            call = Call(gw, self.registry, user, _params(scope, body))
            doc = await handler(call)
        except Unauthenticated as exc:
            status, doc = exc.status, {"error_code": exc.code, "message": str(exc)}
            extra = [(b"www-authenticate", b'Basic realm="mlfs"')]
        except _NotFound as exc:
            status, doc = exc.status, {"error_code": exc.code, "message": exc.message}
        except RegistryError as exc:
            status, doc = exc.status, {"error_code": exc.code, "message": str(exc)}
        except MlfsError as exc:  # a bad reference or manifest in the request
            status, doc = 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": str(exc)}
        except S3Error as exc:  # from the object store (a guard, a missing bucket)
            status, doc = exc.status, {"error_code": "PERMISSION_DENIED" if exc.status == 403
                                       else "INVALID_PARAMETER_VALUE", "message": exc.message}
        except Exception:
            log.exception("%s %s: internal error", method, path)
            status, doc = 500, {"error_code": "INTERNAL_ERROR", "message": "internal error"}
        payload = json.dumps(doc).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()), *extra]})
        await send({"type": "http.response.body", "body": payload})


class _NotFound(Exception):
    def __init__(self, code: str, message: str, status: int) -> None:
        self.code, self.message, self.status = code, message, status


def _headers(scope: dict[str, Any]) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return headers


async def _read_body(receive: Any, limit: int) -> bytes:
    import trio

    # A client that stalls mid-body must not hold a worker forever.
    try:
        with trio.fail_after(BODY_SECONDS):
            return await _receive_all(receive, limit)
    except trio.TooSlowError:
        raise InvalidValue(f"request body not received within {BODY_SECONDS} s") from None


async def _receive_all(receive: Any, limit: int) -> bytes:
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise InvalidValue(f"request body larger than {limit} bytes")
        parts.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(parts)


def _authenticate(gw: Gateway, scope: dict[str, Any], headers: dict[str, list[str]], body: bytes) -> User:
    authorization = (headers.get("authorization") or [""])[0]
    if authorization.startswith("Basic "):
        try:
            key, _, secret = base64.b64decode(authorization[6:], validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthenticated("malformed basic authorization header") from None
        user = gw.policy.user(key)
        if user is None or not hmac.compare_digest(user.secret_key.encode(), secret.encode()):
            raise Unauthenticated("invalid access key or secret")
        return user
    if authorization.startswith("AWS4-HMAC-SHA256 "):
        from mlfs.gateway.sigv4 import UNSIGNED_PAYLOAD, authenticate

        raw_path = scope.get("raw_path") or scope["path"].encode()
        try:
            auth = authenticate(gw.policy, scope["method"], raw_path, scope.get("query_string", b""), headers,
                                region=gw.region)
        except S3Error as exc:
            raise Unauthenticated(f"SigV4: {exc.message}") from None
        if auth is None:
            raise Unauthenticated("authentication required")
        if auth.payload_hash != UNSIGNED_PAYLOAD and auth.payload_hash != hashlib.sha256(body).hexdigest():
            raise Unauthenticated("SigV4: the body does not match x-amz-content-sha256")
        return auth.user
    raise Unauthenticated("authentication required: HTTP basic (access key, secret) or SigV4")


def _params(scope: dict[str, Any], body: bytes) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        if key in params:
            existing = params[key]
            params[key] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            params[key] = value
    if body.strip():
        try:
            doc = json.loads(body)
        except ValueError:
            raise InvalidValue("request body is not JSON") from None
        if not isinstance(doc, dict):
            raise InvalidValue("request body must be a JSON object")
        params.update(doc)
    return params
