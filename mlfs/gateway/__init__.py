"""Embedded S3 gateway (`mlfs serve`).

Objects are split into fixed 16 MiB chunks kept in the shared content-addressed
chunk store under `DATA/store` (open it with `ChunkStore(DATA / "store")`); object
metadata, chunk lists and whole-object SHA-256s live in SQLite at `DATA/meta.sqlite3`.
A mount using the same store therefore reads gateway objects without any GET, and
`GET /{bucket}?mlfs-manifest&prefix=P` hands out an mlfs manifest without re-hashing.

Modules, one concern each:
    errors      S3 error codes and their XML form
    names       bucket and key validation
    catalog     SQLite metadata (buckets, objects, uploads, chunk references)
    objects     object bytes ⇄ chunks: writing, ranged reading, freeing chunks
    access      users, credentials file, per-bucket permissions
    sigv4       SigV4 header and presigned-URL verification (botocore's maths); what must be signed
    sigv2       SigV2 header and query-string verification
    limits      request caps, minimum transfer rate, cache-through bounds
    connections ending a connection the HTTP server is stuck writing to
    chunked     `aws-chunked` body decoding with chunk-signature checks
    body        request-body streams (plain / aws-chunked) with length and hash checks
    xmlout      S3 XML response documents
    http        the ASGI request/response plumbing
    inputs      what a request says, parsed and checked (ranges, conditions, metadata, XML)
    bucket_ops  bucket operations and listings
    object_ops  object PUT/GET/HEAD/copy/delete/tagging
    multipart_ops  multipart uploads
    manifest    the ?mlfs-manifest endpoint
    app         routing and authorisation: request → handler
    upstream    optional cache-through from an upstream S3
    tasks       nurseries that surface a single failure as itself
    server      hypercorn on trio: listen, log readiness, stop on SIGTERM
"""

from mlfs.gateway.server import GatewayConfig, serve_forever

__all__ = ["GatewayConfig", "serve_forever"]
