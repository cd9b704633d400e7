"""A fault-injecting HTTP proxy between mlfs and a real S3 server.

Requests are forwarded unchanged (the Host header too, so SigV4 signatures made for the
proxy's address still verify upstream). Each `Fault` names a request pattern (a regex on
"METHOD /path?query") and what to do to the requests it matches, seeded so a case replays
the same way: answer an error status for a burst, reset the connection after N body
bytes, stall mid-body, flip a byte, run an action first (e.g. overwrite the object
between two range GETs), or drop the Range header so the whole object comes back.
Counters say how often each fault actually struck: a case whose fault never struck
proves nothing, and its test says so.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from tests.servers import s3_env

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-connection", "content-length"}


@dataclass
class Fault:
    """What to do to requests matching `match`: `kind` is one of status, reset, stall,
    flip, action, ignore_range."""

    kind: str
    match: str = r"^GET /"
    count: int = 1  # requests struck (-1: every matching request)
    skip: int = 0  # matching requests passed through untouched first
    probability: float = 1.0  # chance a matching request (after `skip`) is struck
    status: int = 503
    code: str = "SlowDown"
    after_bytes: int = 1000  # reset / stall: body bytes sent before the fault
    stall_seconds: float = 2.0
    action: Callable[[], None] | None = None  # kind "action": run before forwarding
    hits: int = 0
    seen: int = 0
    _pattern: re.Pattern | None = field(default=None, repr=False)

    def wants(self, request_line: str, rng: random.Random) -> bool:
        """Called under the proxy's lock for every request."""
        if self._pattern is None:
            self._pattern = re.compile(self.match)
        if not self._pattern.search(request_line):
            return False
        self.seen += 1
        if self.seen <= self.skip or (self.count >= 0 and self.hits >= self.count):
            return False
        if rng.random() >= self.probability:
            return False
        self.hits += 1
        return True


class FaultProxy:
    def __init__(self, upstream: str, faults: list[Fault], seed: int = 0) -> None:
        self.upstream = urlsplit(upstream)
        self.faults = faults
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.stalled = threading.Event()  # set while a stall fault holds a response
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def env(self) -> dict[str, str]:
        return s3_env(self.endpoint)

    def choose(self, request_line: str) -> Fault | None:
        with self.lock:
            self.requests.append(request_line)
            for fault in self.faults:
                if fault.wants(request_line, self.rng):
                    return fault
        return None

    def flip_position(self, length: int) -> int:
        with self.lock:
            return self.rng.randrange(length)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, *args: object) -> None:  # quiet
        return

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fault = self.owner.choose(f"{self.command} {self.path}")
        if fault is not None and fault.kind == "status":
            return self._error(fault.status, fault.code)
        if fault is not None and fault.kind == "action":
            fault.action()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if fault is not None and fault.kind == "ignore_range":
            headers = {k: v for k, v in headers.items() if k.lower() != "range"}
        up = self.owner.upstream
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
        try:
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            reply_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            status, reason = resp.status, resp.reason
        finally:
            conn.close()
        if fault is not None and fault.kind == "flip" and data and status in (200, 206):
            pos = self.owner.flip_position(len(data))
            data = data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:]
        self.send_response(status, reason)
        for k, v in reply_headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if fault is not None and fault.kind == "reset" and self.command != "HEAD":
            self.wfile.write(data[: fault.after_bytes])
            self.wfile.flush()
            # SO_LINGER 0: close with a TCP RST, as a dying server or middlebox would.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault is not None and fault.kind == "stall" and self.command != "HEAD":
            self.wfile.write(data[: fault.after_bytes])
            self.wfile.flush()
            self.owner.stalled.set()
            time.sleep(fault.stall_seconds)  # the fault itself: a server that stops sending
            self.owner.stalled.clear()
            self.wfile.write(data[fault.after_bytes:])
            return
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, code: str) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>injected fault</Message><RequestId>fault</RequestId></Error>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any
