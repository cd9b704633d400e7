"""Run the gateway: hypercorn on trio, one event loop, clean stop on SIGTERM/SIGINT.

Ready means bound: the "listening on http://HOST:PORT" line is logged only after the
socket accepts connections. On a signal, hypercorn stops accepting, gives in-flight
requests a short grace period and then cancels them; a cancelled upload aborts its
chunk writers and frees its pending chunks, so nothing partial is left behind.
"""

from __future__ import annotations

import fcntl
import logging
import os
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from mlfs.errors import ConfigError
from mlfs.gateway.access import AccessPolicy
from mlfs.gateway.app import GatewayApp
from mlfs.gateway.context import Gateway
from mlfs.gateway.limits import Limits
from mlfs.gateway.objects import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class GatewayConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 9000
    policy: AccessPolicy = field(default_factory=AccessPolicy)
    upstream: str | None = None  # s3://bucket[/prefix] for cache-through mode
    threads: int = 16
    header_timeout: float = 5.0  # a client must finish its request headers in this time
    grace: float = 2.0  # in-flight requests get this long after SIGTERM
    # A slow CompleteMultipartUpload starts its 200 response and sends whitespace this often.
    complete_keepalive: float = field(
        default_factory=lambda: float(os.environ.get("MLFS_GATEWAY_KEEPALIVE_SECONDS", "5")))
    # Services sharing the gateway (registry, preprocessing): each is called once with the
    # Gateway before it listens, to add HTTP services (gw.services) and write hooks
    # (gw.objects.write_guards / write_listeners).
    extensions: list[Callable[[Gateway], None]] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    region: str = "us-east-1"  # the only region a signature's credential scope may name
    # Wrappers of the ASGI app (request metrics), applied in order before serving.
    middleware: list[Callable[[Any], Any]] = field(default_factory=list)


def serve_forever(config: GatewayConfig) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    _raise_open_file_limit(config.limits.max_requests)
    lock = _lock_data_dir(config.data_dir)
    try:
        objects = ObjectStore(config.data_dir)
        try:
            trio.run(_main, config, objects)
        finally:
            objects.close()
    finally:
        os.close(lock)


async def _main(config: GatewayConfig, objects: ObjectStore) -> None:
    gw = Gateway(objects, config.policy, threads=config.threads, keepalive_seconds=config.complete_keepalive,
                 limits=config.limits, region=config.region)
    if config.upstream:
        from mlfs.gateway.upstream import Upstream

        gw.upstream = Upstream(gw, config.upstream)
        # The upstream bucket is visible (and listable) before its first miss.
        await gw.run(objects.catalog.create_bucket, gw.upstream.bucket)
    for extend in config.extensions:
        extend(gw)
    hc = HypercornConfig()
    hc.bind = [f"{config.host}:{config.port}"]
    hc.keep_alive_timeout = config.header_timeout
    # No hypercorn read timeout: it would also close long downloads to clients that
    # send nothing meanwhile. Stalled request bodies time out in RequestBody instead.
    hc.read_timeout = None
    hc.graceful_timeout = config.grace
    hc.accesslog = None
    hc.errorlog = logging.getLogger("mlfs.gateway.hypercorn")
    hc.h11_max_incomplete_size = 64 * 1024
    hc.include_server_header = False
    hc.include_date_header = True
    app: Any = GatewayApp(gw)
    for wrap in config.middleware:
        app = wrap(app)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_wait_for_signal, stop)
        nursery.start_soon(gw.hash_worker)
        nursery.start_soon(gw.expire_uploads)
        binds = await nursery.start(_serve_until_stopped, app, hc, stop, nursery.cancel_scope)
        for bind in binds:
            log.info("mlfs gateway listening on %s (data in %s)", bind, config.data_dir)


async def _serve_until_stopped(
    app: Any, hc: HypercornConfig, stop: trio.Event, everything: trio.CancelScope,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    # serve() returns once in-flight requests have drained or been cancelled after the
    # grace period; then the background tasks go too.
    await serve(app, hc, shutdown_trigger=stop.wait, task_status=task_status)  # type: ignore[arg-type]
    log.info("mlfs gateway stopped")
    everything.cancel()


async def _wait_for_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            log.info("mlfs gateway stopping")
            stop.set()
            return


def _raise_open_file_limit(max_requests: int) -> None:
    # Each request in flight holds a socket and may hold a chunk file and a temp file;
    # the usual soft limit of 1024 would run out before the request cap does.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * max_requests + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.info("open-file limit %d is below the %d that --max-requests %d may need", new, want, max_requests)


def _lock_data_dir(data_dir: Path) -> int:
    # One gateway per data directory: two would each believe they own the catalog.
    fd = os.open(data_dir / "gateway.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"another mlfs serve is already using {data_dir}") from None
    return fd
