"""The ASGI application: authenticate, authorise, route to a handler, turn errors into S3 XML."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mlfs.gateway import bucket_ops, multipart_ops, object_ops
from mlfs.gateway.body import ClientGone
from mlfs.gateway.context import Gateway
from mlfs.gateway.errors import S3Error
from mlfs.gateway.http import Request, Responder
from mlfs.gateway.manifest import mlfs_manifest
from mlfs.gateway.names import check_bucket
from mlfs.gateway.sigv4 import authenticate

log = logging.getLogger(__name__)

Handler = Callable[[Gateway, Request, Responder], Awaitable[None]]
READ, WRITE, ADMIN, ANY_USER = "read", "write", "admin", "any-user"


def route(req: Request) -> tuple[Handler, str]:
    """The handler for a request and the right it needs on the bucket."""
    m, q, hdr = req.method, req.query, req.headers
    if req.bucket is None:
        if m in ("GET", "HEAD"):
            return bucket_ops.list_buckets, ANY_USER
        raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.")
    if req.key is None:
        if m == "GET":
            for param, handler in (("mlfs-manifest", mlfs_manifest), ("location", bucket_ops.bucket_location),
                                   ("versioning", bucket_ops.bucket_versioning), ("uploads", bucket_ops.list_uploads)):
                if param in q:
                    return handler, READ
            _refuse_subresources(q)
            return bucket_ops.list_objects, READ
        if m == "HEAD":
            return bucket_ops.head_bucket, READ
        if m == "PUT":
            _refuse_subresources(q)
            return bucket_ops.create_bucket, ADMIN
        if m == "DELETE":
            _refuse_subresources(q)
            return bucket_ops.delete_bucket, ADMIN
        if m == "POST" and "delete" in q:
            return bucket_ops.delete_objects, WRITE
    else:
        if m in ("GET", "HEAD"):
            if "tagging" in q:
                return object_ops.get_tagging, READ
            if "uploadId" in q:
                return multipart_ops.list_parts, WRITE
            _refuse_subresources(q)
            return object_ops.get_object, READ
        if m == "PUT":
            if "tagging" in q:
                return object_ops.put_tagging, WRITE
            if "uploadId" in q or "partNumber" in q:
                return multipart_ops.upload_part, WRITE
            _refuse_subresources(q)
            if "x-amz-copy-source" in hdr:
                return object_ops.copy_object, WRITE
            return object_ops.put_object, WRITE
        if m == "DELETE":
            if "tagging" in q:
                return object_ops.delete_tagging, WRITE
            if "uploadId" in q:
                return multipart_ops.abort_upload, WRITE
            _refuse_subresources(q)
            return object_ops.delete_object, WRITE
        if m == "POST":
            if "uploads" in q:
                return multipart_ops.create_upload, WRITE
            if "uploadId" in q:
                return multipart_ops.complete_upload, WRITE
    raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.")


_UNSUPPORTED = {"acl", "policy", "cors", "lifecycle", "website", "logging", "notification", "replication",
                "encryption", "object-lock", "retention", "legal-hold", "torrent", "restore", "select",
                "versionId", "versions", "accelerate", "analytics", "inventory", "metrics", "ownershipControls",
                "publicAccessBlock", "requestPayment", "intelligent-tiering", "attributes"}


def _refuse_subresources(query: dict[str, str]) -> None:
    for name in query:
        if name in _UNSUPPORTED:
            raise S3Error("NotImplemented", f"The '{name}' subresource is not implemented by mlfs serve.")


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
        service = self.gw.service_for(scope["path"])
        if service is not None:
            await service(self.gw, scope, receive, send)
            return
        resp = Responder(send, "-")
        head = scope.get("method") == "HEAD"
        req = None
        try:
            req = Request.from_scope(scope, receive)
            resp.request_id = req.request_id
            if req.bucket is not None:
                check_bucket(req.bucket)
            req.auth = authenticate(self.gw.policy, req.method, req.raw_path, req.query_string, req.headers)
            handler, right = route(req)
            authorise(self.gw, req, right)
            await handler(self.gw, req, resp)
        except S3Error as err:
            if resp.started:
                log.warning("%s %s failed after the response started: %s", scope["method"], scope["path"], err)
                raise
            if err.status >= 500:
                log.error("%s %s: %s", scope["method"], scope["path"], err)
            else:
                log.debug("%s %s: %s", scope["method"], scope["path"], err.code)
            err.resource = err.resource or (req.resource if req else "")
            if hasattr(err, "headers"):
                await resp.start(err.status, [("content-type", "application/xml"), *err.headers,
                                              ("content-length", str(0 if head else len(err.xml(resp.request_id))))])
                await resp.body(b"" if head else err.xml(resp.request_id))
            else:
                await resp.error(err, head=head)
        except ClientGone:
            log.debug("%s %s: client went away mid-request", scope["method"], scope["path"])
        except Exception:
            log.exception("%s %s: internal error", scope["method"], scope["path"])
            if not resp.started:
                await resp.error(S3Error("InternalError", "We encountered an internal error. Please try again."), head)
            else:
                raise


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
