"""The ASGI application: authenticate, authorise, route to a handler, turn errors into S3 XML."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from mlfs.gateway import bucket_ops, multipart_ops, object_ops
from mlfs.gateway.body import ClientGone
from mlfs.gateway.context import Gateway
from mlfs.gateway.errors import S3Error
from mlfs.gateway.http import Request, Responder
from mlfs.gateway.manifest import mlfs_manifest
from mlfs.gateway.names import check_bucket
from mlfs.gateway.objects import ObjectReplaced
from mlfs.gateway.sigv4 import authenticate

log = logging.getLogger(__name__)

Handler = Callable[[Gateway, Request, Responder], Awaitable[None]]
READ, WRITE, ADMIN, ANY_USER = "read", "write", "admin", "any-user"


# Query parameters that name a sub-resource (S3 routes on them); every pair of method
# and sub-resource the gateway implements is listed below, anything else with one of
# these answers 501 NotImplemented rather than falling through to a plain operation
# (`PUT ?versioning` must never create a bucket, `DELETE ?tagging` never delete one).
SUBRESOURCES = frozenset({
    "accelerate", "acl", "analytics", "attributes", "cors", "delete", "encryption", "intelligent-tiering",
    "inventory", "legal-hold", "lifecycle", "location", "logging", "metrics", "mlfs-manifest", "notification",
    "object-lock", "ownershipControls", "partNumber", "policy", "policyStatus", "publicAccessBlock",
    "replication", "requestPayment", "restore", "retention", "select", "tagging", "torrent", "uploadId",
    "uploads", "versionId", "versioning", "versions", "website",
})

_BUCKET_ROUTES: dict[tuple[str, str | None], tuple[Handler, str]] = {
    ("GET", None): (bucket_ops.list_objects, READ),
    ("GET", "mlfs-manifest"): (mlfs_manifest, READ),
    ("GET", "location"): (bucket_ops.bucket_location, READ),
    ("GET", "versioning"): (bucket_ops.bucket_versioning, READ),
    ("GET", "uploads"): (bucket_ops.list_uploads, READ),
    ("HEAD", None): (bucket_ops.head_bucket, READ),
    ("PUT", None): (bucket_ops.create_bucket, ADMIN),
    ("DELETE", None): (bucket_ops.delete_bucket, ADMIN),
    ("POST", "delete"): (bucket_ops.delete_objects, WRITE),
}
_OBJECT_ROUTES: dict[tuple[str, str | None], tuple[Handler, str]] = {
    ("GET", None): (object_ops.get_object, READ),
    ("HEAD", None): (object_ops.get_object, READ),
    ("GET", "tagging"): (object_ops.get_tagging, READ),
    ("GET", "uploadId"): (multipart_ops.list_parts, WRITE),
    ("PUT", None): (object_ops.put_object, WRITE),
    ("PUT", "tagging"): (object_ops.put_tagging, WRITE),
    ("PUT", "uploadId"): (multipart_ops.upload_part, WRITE),
    ("DELETE", None): (object_ops.delete_object, WRITE),
    ("DELETE", "tagging"): (object_ops.delete_tagging, WRITE),
    ("DELETE", "uploadId"): (multipart_ops.abort_upload, WRITE),
    ("POST", "uploads"): (multipart_ops.create_upload, WRITE),
    ("POST", "uploadId"): (multipart_ops.complete_upload, WRITE),
}

# Headers asking for features whose absence would silently break a promise: data
# stored in plaintext although encryption was requested, objects not locked although
# a lock was. Refused with 501 instead of being ignored.
_REFUSED_HEADER_PREFIXES = (
    "x-amz-server-side-encryption", "x-amz-copy-source-server-side-encryption", "x-amz-object-lock-",
)


def route(req: Request) -> tuple[Handler, str]:
    """The handler for a request and the right it needs on the bucket."""
    m = req.method
    _refuse_unsupported_headers(req)
    if req.bucket is None:
        if m in ("GET", "HEAD") and not _subresource(req):
            return bucket_ops.list_buckets, ANY_USER
        raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.")
    sub = _subresource(req)
    routes = _BUCKET_ROUTES if req.key is None else _OBJECT_ROUTES
    found = routes.get((m, sub))
    if found is None:
        if sub is None:
            if req.key is None and m == "POST":
                raise S3Error("NotImplemented", "Browser POST uploads are not implemented by mlfs serve.")
            raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.")
        raise S3Error("NotImplemented", f"{m} with the '{sub}' subresource is not implemented by mlfs serve.")
    if found[0] is object_ops.put_object and "x-amz-copy-source" in req.headers:
        return object_ops.copy_object, WRITE
    return found


def _subresource(req: Request) -> str | None:
    names = {n for n in req.query if n in SUBRESOURCES}
    if req.query.get("versionId") == "null":
        names.discard("versionId")  # the only version an unversioned object has
    if not names:
        return None
    if names == {"uploadId", "partNumber"}:
        return "uploadId"
    if len(names) > 1:
        raise S3Error("NotImplemented", f"The subresources {', '.join(sorted(names))} together are not implemented.")
    return names.pop()


def _refuse_unsupported_headers(req: Request) -> None:
    for name in req.headers:
        if name.startswith(_REFUSED_HEADER_PREFIXES) or (
                name == "x-amz-bucket-object-lock-enabled" and (req.header(name) or "").lower() == "true"):
            raise S3Error("NotImplemented", f"The '{name}' header is not implemented by mlfs serve: "
                                            "objects are neither encrypted nor locked.")


def authorise(gw: Gateway, req: Request, right: str) -> None:
    user = req.auth.user if req.auth else None
    bucket = req.bucket or ""
    if user is None:
        # Anonymous callers may only read buckets configured for anonymous read.
        if right == READ and bucket in gw.policy.anonymous_read and req.method in ("GET", "HEAD"):
            return
        raise S3Error("AccessDenied", "Access Denied", req.resource)
    allowed = {
        ANY_USER: True,
        READ: user.can_read(bucket),
        WRITE: user.can_write(bucket),
        ADMIN: user.admin,
    }[right]
    if not allowed:
        raise S3Error("AccessDenied", "Access Denied", req.resource)


class GatewayApp:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if _ambiguous_framing(scope):
            # RFC 9112 §6.1: a request with both Transfer-Encoding and Content-Length is
            # a smuggling attempt through some proxy; refuse it and close the connection,
            # so bytes after it are never read as another request.
            log.debug("%s %s: refused, both Transfer-Encoding and Content-Length", scope["method"], scope["path"])
            await _drain(receive)
            resp = Responder(send, "-")
            err = S3Error("InvalidRequest", "A request must not carry both Transfer-Encoding and Content-Length.")
            body = err.xml(resp.request_id)
            await resp.start(400, [("content-type", "application/xml"), ("content-length", str(len(body))),
                                   ("connection", "close")])
            await resp.body(body)
            return
        client = (scope.get("client") or ("",))[0]
        if not self.gw.slots.take(client):
            # Over a request cap: answered at once, holding nothing.
            log.debug("%s %s from %s: over the request cap", scope["method"], scope["path"], client)
            await Responder(send, "-").error(S3Error("SlowDown", "Please reduce your request rate."),
                                             head=scope.get("method") == "HEAD")
            return
        try:
            await self._handle(scope, receive, send)
        finally:
            self.gw.slots.release(client)

    async def _handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        service = self.gw.service_for(scope["path"])
        if service is not None:
            await service(self.gw, scope, receive, send)
            return
        resp = Responder(send, "-", scope)
        head = scope.get("method") == "HEAD"
        req = None
        try:
            req = Request.from_scope(scope, receive)
            req.limits = self.gw.limits
            resp.request_id = req.request_id
            if req.bucket is not None:
                check_bucket(req.bucket)
            req.auth = authenticate(self.gw.policy, req.method, req.raw_path, req.query_string, req.headers,
                                    region=self.gw.region, content_headers_signed=True)
            handler, right = route(req)
            authorise(self.gw, req, right)
            await handler(self.gw, req, resp)
        except S3Error as err:
            if resp.started:
                log.warning("%s %s failed after the response started: %s", scope["method"], scope["path"], err)
                raise
            # 501 (a feature asked for that mlfs serve refuses) and 503 SlowDown (load
            # shedding) are answers to the client, not faults of the gateway.
            if err.status >= 500 and err.code not in ("NotImplemented", "SlowDown"):
                log.error("%s %s: %s", scope["method"], scope["path"], err)
            else:
                log.debug("%s %s: %s", scope["method"], scope["path"], err.code)
            err.resource = err.resource or (req.resource if req else "")
            if hasattr(err, "headers") and err.code != "NotModified":
                await resp.start(err.status, [("content-type", "application/xml"), *err.headers,
                                              ("content-length", str(0 if head else len(err.xml(resp.request_id))))])
                await resp.body(b"" if head else err.xml(resp.request_id))
            else:
                try:
                    await resp.error(err, head=head)
                except (trio.BusyResourceError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    # An early refusal (before the upload was read) can meet hypercorn still
                    # writing on the same connection, or a client that already hung up.
                    log.info("%s %s: the %s answer could not be finished: %s", scope["method"], scope["path"],
                             err.code, type(exc).__name__)
        except ObjectReplaced as exc:
            # The download started before a delete/overwrite: cut it (the client sees a
            # short body) or, if nothing was sent yet, answer as if it had never existed.
            log.info("%s %s: %s", scope["method"], scope["path"], exc)
            if not resp.started:
                await resp.error(S3Error("NoSuchKey", "The specified key does not exist."), head)
        except ClientGone:
            log.debug("%s %s: client went away mid-request", scope["method"], scope["path"])
        except Exception:
            log.exception("%s %s: internal error", scope["method"], scope["path"])
            if not resp.started:
                await resp.error(S3Error("InternalError", "We encountered an internal error. Please try again."), head)
            else:
                raise


async def _drain(receive: Any, limit: int = 1 << 20) -> None:
    # The HTTP server must be done with this request's body before the answer goes out.
    seen = 0
    with trio.move_on_after(5):
        while seen <= limit:
            message = await receive()
            seen += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                return


def _ambiguous_framing(scope: dict[str, Any]) -> bool:
    names = {name.lower() for name, _ in scope["headers"]}
    return b"transfer-encoding" in names and b"content-length" in names


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
