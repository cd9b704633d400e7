"""The control socket of a running mount: `mlfs switch` asks the mount process to serve
another manifest through it.

`mlfs status` asks it for live statistics the same way (`{"op": "status"}`).

One Unix stream socket per mountpoint, next to the published statistics (same run
directory, same key), owner-only. A request is one JSON line, the answer one JSON line:
`{"op": "switch", "manifest": {...}}` → `{"ok": true, "name": ..., "version": ...}` or
`{"ok": false, "error": "<one line>"}`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

import trio

from mlfs.errors import MlfsError, MountError
from mlfs.manifest.model import Manifest
from mlfs.manifest.validate import parse_manifest
from mlfs.runinfo import info_path, publisher

log = logging.getLogger(__name__)

_MAX_REQUEST = 64 << 20  # a manifest of a very large dataset, with room to spare


def socket_path(mountpoint: str | os.PathLike[str], create: bool = False) -> Path:
    return info_path(mountpoint, create=create).with_suffix(".sock")


class ControlSocketGone(MountError):
    """Nothing listens on the mount's control socket: its process is gone or never served one."""


class RecentErrors(logging.Handler):
    """The last few warnings and errors the mount logged, for `mlfs status`."""

    def __init__(self, size: int = 20) -> None:
        super().__init__(logging.WARNING)
        self.records: deque[dict[str, Any]] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("mlfs"):
            self.records.append({"time": record.created, "level": record.levelname.lower(),
                                 "message": record.getMessage()})


class FetchRate:
    """Bytes fetched per second over the last `window` seconds, from periodic samples."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def sample(self, fetched: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.samples.append((now, fetched))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()

    def rate(self, fetched: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if not self.samples or now <= self.samples[0][0]:
            return 0.0
        t0, b0 = self.samples[0]
        return max(0.0, (fetched - b0) / (now - t0))


def live_status(session: Any, errors: RecentErrors, rate: FetchRate) -> dict[str, Any]:
    doc = session.statistics()
    fetched = (doc.get("fetch") or {}).get("bytes", 0)
    files = doc.get("files") or {}
    doc["fetch_rate_bytes_per_second"] = rate.rate(fetched)
    doc["bytes_served"] = files.get("bytes_served", 0)
    doc["bytes_fetched"] = fetched
    doc["top_files"] = [{"path": p, "bytes": n} for p, n in files.get("top_files", [])]
    doc["recent_errors"] = list(errors.records)
    doc.update(publisher())  # pid and the time these figures were taken, as in the published copy
    return doc


async def serve_control(session: Any, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A mount-lifetime task answering control requests for `session`."""
    errors = RecentErrors()
    logging.getLogger().addHandler(errors)
    rate = FetchRate()
    try:
        path = socket_path(session.settings.mountpoint, create=True)  # a private run directory
    except MountError as exc:
        # The mount works without its control socket; only switch and live status are lost.
        log.warning("cannot serve control requests (mlfs switch, live mlfs status): %s", exc)
        task_status.started()
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(4)
    listener = trio.SocketListener(sock)
    lock = trio.Lock()  # one switch at a time
    status = lambda: live_status(session, errors, rate)  # noqa: E731
    task_status.started()
    try:
        async with listener, trio.open_nursery() as nursery:
            nursery.start_soon(_sample_fetches, session, rate)
            while True:
                stream = await listener.accept()
                async with stream, lock:
                    await _answer(session, stream, status)
    finally:
        logging.getLogger().removeHandler(errors)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def _sample_fetches(session: Any, rate: FetchRate) -> None:
    while True:
        fetch = session.fetch_statistics()
        rate.sample(fetch.bytes if fetch is not None else 0)
        await trio.sleep(1.0)


async def _answer(session: Any, stream: trio.SocketStream, status: Any) -> None:
    try:
        with trio.fail_after(60):
            raw = await _read_line(stream)
            reply = await _handle(session, raw, status)
    except trio.TooSlowError:
        reply = {"ok": False, "error": "control request timed out"}
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(json.dumps(reply).encode() + b"\n")


async def _handle(session: Any, raw: bytes, status: Any) -> dict[str, Any]:
    try:
        request = json.loads(raw)
    except ValueError:
        return {"ok": False, "error": "control request is not JSON"}
    if isinstance(request, dict) and request.get("op") == "status":
        return {"ok": True, "status": status()}
    if not isinstance(request, dict) or request.get("op") != "switch":
        return {"ok": False, "error": "unknown control request"}
    try:
        manifest = parse_manifest(request.get("manifest"), origin=str(request.get("source", "manifest")))
        await session.switch(manifest)
    except MlfsError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:
        log.exception("switch failed unexpectedly")
        return {"ok": False, "error": f"switch failed: {exc}"}
    return {"ok": True, "name": manifest.name, "version": manifest.version}


async def _read_line(stream: trio.SocketStream) -> bytes:
    data = bytearray()
    while b"\n" not in data:
        chunk = await stream.receive_some(1 << 20)
        if not chunk:
            break
        data += chunk
        if len(data) > _MAX_REQUEST:
            raise MountError("control request too large")
    return bytes(data)


def request_switch(mountpoint: str | os.PathLike[str], manifest: Manifest, source: str) -> dict[str, Any]:
    """Ask the mount at `mountpoint` to serve `manifest`; returns its answer."""
    return _request(mountpoint, {"op": "switch", "source": source, "manifest": manifest.to_json()}, 120)


def request_status(mountpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """Live statistics of the mount at `mountpoint`."""
    answer = _request(mountpoint, {"op": "status"}, 10)
    if not answer.get("ok"):
        raise MountError(f"status of {os.path.abspath(mountpoint)}: {answer.get('error')}")
    return answer["status"]


def _request(mountpoint: str | os.PathLike[str], request: dict[str, Any], timeout: float) -> dict[str, Any]:
    path = socket_path(mountpoint)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlSocketGone(f"the mount at {os.path.abspath(mountpoint)} has no control socket "
                             "(its mlfs process is gone)") from None
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise MountError(f"the mount at {os.path.abspath(mountpoint)} did not answer") from None
    finally:
        sock.close()
    try:
        return json.loads(data)
    except ValueError:
        raise MountError("the mount process closed the control connection without an answer") from None
