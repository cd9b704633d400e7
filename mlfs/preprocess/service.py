"""`/api/preprocessing/` on `mlfs serve`: pipelines, validation, jobs, cache statistics.

Same authentication as S3 (SigV4 headers or presigned URLs, verified by the gateway's
own code); anonymous callers are refused. A job reads and writes through this gateway's
S3 API with the caller's own keys, so it can touch exactly the buckets the caller may,
and keeps its results in the gateway's chunk store. Jobs run one at a time in a worker
thread driving a pool of worker processes; the event loop only answers requests.

    GET  pipelines                 templates and stored pipelines
    POST pipelines                 store a pipeline document (its "name" names it)
    GET  pipelines/NAME            one pipeline: document, canonical form, digest
    POST validate                  check a document; 400 with the one-line error if invalid
    POST apply                     {"pipeline": NAME | document, "src": "s3://…/", "dst": "s3://…/",
                                    "workers": N, "set": ["step.param=value"]} → 202 + job URL
    GET  jobs/ID                   status and counts of a job
    GET  cache/stats               results cached in this gateway's store
    POST cache/clear               (admin) forget results, free chunks no object uses
    GET  store                     this gateway's store path and token (same-host detection)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.config
import trio

from mlfs.errors import MlfsError
from mlfs.gateway.access import User
from mlfs.gateway.context import Gateway
from mlfs.gateway.errors import S3Error
from mlfs.gateway.http import Request, Responder
from mlfs.gateway.sigv4 import UNSIGNED_PAYLOAD, authenticate
from mlfs.preprocess.cache import TOKEN_FILE, ResultCache
from mlfs.preprocess.client import PREFIX
from mlfs.preprocess.pipeline import (
    Pipeline,
    PipelineError,
    build_pipeline,
    describe_templates,
    load_pipeline,
)
from mlfs.preprocess.templates import TEMPLATES

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20
MAX_JOBS_KEPT = 1000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    id: str
    pipeline: Pipeline
    src: str
    dst: str
    workers: int
    user: User
    endpoint: str
    state: str = "queued"
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "url": f"{PREFIX}jobs/{self.id}", "state": self.state, "src": self.src,
                "dst": self.dst, "pipeline": {"name": self.pipeline.name, "digest": self.pipeline.digest},
                "counts": {k: self.stats.get(k, 0) for k in ("total", "done", "cached", "failed", "decoded")},
                "failures": self.stats.get("failures", [])[:100], "manifest": self.stats.get("manifest"),
                "error": self.error}


class PreprocessService:
    prefix = PREFIX

    def __init__(self, gw: Gateway, workers: int | None = None) -> None:
        self.gw = gw
        self.store = gw.objects.store
        self.results = ResultCache(self.store)
        self.pipelines_dir = gw.objects.data_dir / "preprocess" / "pipelines"
        self.pipelines_dir.mkdir(parents=True, exist_ok=True)
        self.workers = workers or os.cpu_count() or 1
        self.jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        # One job runs at a time; each uses `workers` processes.
        self.job_limiter = trio.CapacityLimiter(1)
        self.token = secrets.token_hex(16)
        token_path = self.store.root / TOKEN_FILE
        token_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = token_path.with_name(f".token.{os.getpid()}.tmp")
        tmp.write_text(self.token + "\n")
        os.replace(tmp, token_path)

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, gw: Gateway, scope: dict[str, Any], receive: Any, send: Any) -> None:
        resp = Responder(send, "-")
        try:
            req = Request.from_scope(scope, receive)
            resp.request_id = req.request_id
            body = await _read_body(receive)
            user = self._authenticate(req, body)
            status, doc = await self._route(req, user, body, scope)
        except ApiError as err:
            status, doc = err.status, {"error": str(err)}
        except S3Error as err:
            status, doc = err.status, {"error": err.message, "code": err.code}
        except Exception:
            log.exception("%s %s: internal error", scope.get("method"), scope.get("path"))
            status, doc = 500, {"error": "internal error"}
        payload = (json.dumps(doc, indent=1) + "\n").encode()
        await resp.simple(status, [("content-type", "application/json")], payload)

    def _authenticate(self, req: Request, body: bytes) -> User:
        auth = authenticate(self.gw.policy, req.method, req.raw_path, req.query_string, req.headers,
                            region=self.gw.region)
        if auth is None:
            raise ApiError(403, "the preprocessing API needs SigV4-signed requests")
        if auth.payload_hash not in (UNSIGNED_PAYLOAD, hashlib.sha256(body).hexdigest()):
            raise ApiError(400, "x-amz-content-sha256 does not match the request body")
        return auth.user

    async def _route(self, req: Request, user: User, body: bytes, scope: dict[str, Any]) -> tuple[int, Any]:
        path = scope["path"][len(self.prefix):].strip("/")
        m = req.method
        if path == "pipelines" and m == "GET":
            return 200, {"templates": [{"name": n, "description": d} for n, d in describe_templates()],
                         "pipelines": sorted(p.stem for p in self.pipelines_dir.glob("*.json"))}
        if path == "pipelines" and m == "POST":
            pipeline = _pipeline_from(_json(body))
            if not _NAME.match(pipeline.name) or pipeline.name in TEMPLATES:
                raise ApiError(400, f"pipeline name {pipeline.name!r} must match {_NAME.pattern} and not be a template's")
            await self.gw.run(self._save, pipeline)
            return 201, {"name": pipeline.name, "digest": pipeline.digest, "url": f"{PREFIX}pipelines/{pipeline.name}"}
        if path.startswith("pipelines/") and m == "GET":
            pipeline = await self.gw.run(self._named, path.split("/", 1)[1])
            return 200, {"name": pipeline.name, "document": pipeline.to_document(),
                         "canonical": pipeline.canonical(), "digest": pipeline.digest}
        if path == "validate" and m == "POST":
            try:
                pipeline = build_pipeline(_json(body))
            except PipelineError as exc:
                return 400, {"valid": False, "error": str(exc)}
            return 200, {"valid": True, "digest": pipeline.digest, "steps": [s.name for s in pipeline.steps]}
        if path == "apply" and m == "POST":
            job = await self._submit(_json(body), user, scope)
            return 202, job.to_json()
        if path.startswith("jobs/") and m == "GET":
            job = self.jobs.get(path.split("/", 1)[1])
            if job is None:
                raise ApiError(404, f"no job {path.split('/', 1)[1]!r}")
            return 200, job.to_json()
        if path == "cache/stats" and m == "GET":
            return 200, await self.gw.run(self.results.stats)
        if path == "cache/clear" and m == "POST":
            if not user.admin:
                raise ApiError(403, "clearing the cache needs an admin user")
            return 200, {"removed": await self.gw.run(self.results.clear, self.gw.objects.free)}
        if path == "store" and m == "GET":
            return 200, {"store": str(self.store.root), "token": self.token}
        raise ApiError(404, f"no such endpoint: {m} {PREFIX}{path}")

    # ------------------------------------------------------------- pipelines
    def _save(self, pipeline: Pipeline) -> None:
        path = self.pipelines_dir / f"{pipeline.name}.json"
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(json.dumps(pipeline.to_document(), indent=1) + "\n")
        os.replace(tmp, path)

    def _named(self, name: str, overrides: tuple[str, ...] = ()) -> Pipeline:
        if not _NAME.match(name):
            raise ApiError(404, f"no pipeline {name!r}")
        path = self.pipelines_dir / f"{name}.json"
        if path.is_file():
            return load_pipeline(str(path), overrides)
        if name in TEMPLATES:
            return load_pipeline(name, overrides)
        raise ApiError(404, f"no pipeline {name!r} (neither stored nor a template)")

    # ------------------------------------------------------------------ jobs
    async def _submit(self, doc: Any, user: User, scope: dict[str, Any]) -> Job:
        if not isinstance(doc, dict):
            raise ApiError(400, "apply needs a JSON object with pipeline, src and dst")
        src, dst = doc.get("src"), doc.get("dst")
        for name, value in (("src", src), ("dst", dst)):
            if not isinstance(value, str) or not value.startswith("s3://") or len(value) > 2048:
                raise ApiError(400, f"{name} must be an s3://BUCKET/PREFIX/ URL on this gateway")
        if src.rstrip("/") == dst.rstrip("/"):
            raise ApiError(400, "dst must differ from src")
        workers = doc.get("workers", self.workers)
        if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 64:
            raise ApiError(400, f"workers must be an integer 1-64, got {workers!r}")
        overrides = doc.get("set", [])
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ApiError(400, "set must be a list of STEP.PARAM=VALUE strings")
        spec = doc.get("pipeline")
        try:
            if isinstance(spec, str):
                pipeline = await self.gw.run(self._named, spec, tuple(overrides))
            else:
                pipeline = _pipeline_from(spec)
        except PipelineError as exc:
            raise ApiError(400, str(exc)) from None
        host, port = scope.get("server") or ("127.0.0.1", 9000)
        # The job speaks S3 to this very gateway, at the address the caller reached it on.
        endpoint = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        job = Job(f"{next(self._ids)}-{secrets.token_hex(4)}", pipeline, src, dst, workers, user, endpoint)
        self.jobs[job.id] = job
        while len(self.jobs) > MAX_JOBS_KEPT:
            oldest = next(iter(self.jobs))
            if self.jobs[oldest].state in ("queued", "running"):
                break
            del self.jobs[oldest]
        trio.lowlevel.spawn_system_task(self._run_job, job, name=f"preprocess job {job.id}")
        return job

    async def _run_job(self, job: Job) -> None:
        try:
            await trio.to_thread.run_sync(self._job_body, job, limiter=self.job_limiter, abandon_on_cancel=True)
        except trio.Cancelled:
            job.stop.set()  # the gateway is stopping: the worker thread ends at its next input
            raise
        except Exception:
            log.exception("preprocess job %s failed", job.id)
            job.state, job.error = "failed", "internal error"

    def _job_body(self, job: Job) -> None:
        from mlfs.preprocess.locations import S3Input, S3Output
        from mlfs.preprocess.runner import Run

        job.state = "running"
        client = boto3.client(
            "s3", endpoint_url=job.endpoint, aws_access_key_id=job.user.access_key,
            aws_secret_access_key=job.user.secret_key, region_name="us-east-1",
            config=botocore.config.Config(s3={"addressing_style": "path"}, max_pool_connections=32,
                                          response_checksum_validation="when_required",
                                          request_checksum_calculation="when_required"))

        def progress(stats: Any) -> None:
            job.stats = stats.to_json()

        try:
            run = Run(job.pipeline, S3Input(client, job.src), S3Output(client, job.dst), self.results,
                      workers=job.workers, progress=progress, stop=job.stop)
            stats = run.run()
        except MlfsError as exc:
            job.state, job.error = "failed", str(exc)
            return
        job.stats = stats.to_json()
        job.state = "stopped" if job.stop.is_set() else "succeeded"


def _json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise ApiError(400, f"request body is not JSON: {exc}") from None


def _pipeline_from(doc: Any) -> Pipeline:
    try:
        return build_pipeline(doc)
    except PipelineError as exc:
        raise ApiError(400, str(exc)) from None


async def _read_body(receive: Any) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def extend(gw: Gateway) -> None:
    """Gateway extension: serve `/api/preprocessing/` on this gateway."""
    gw.services.append(PreprocessService(gw))

