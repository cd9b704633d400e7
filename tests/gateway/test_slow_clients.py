"""Slow and greedy clients against a real `mlfs serve`: they are cut off or refused,
and never hold connections, temp files, uploads or worker threads for long."""

from __future__ import annotations

import http.client
import os
import resource
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import botocore.exceptions
import pytest

from tests.faults.cases import FaultCase
from tests.gateway.clients import sign_headers
from tests.gateway.server import GatewayServer, start_gateway
from tests.servers import S3Server

pytestmark = pytest.mark.s3
MiB = 1024 * 1024


def _wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _connect(server: GatewayServer, source: str = "127.0.0.1", timeout: float = 30.0) -> socket.socket:
    host = urlsplit(server.endpoint)
    return socket.create_connection((host.hostname, host.port), timeout=timeout, source_address=(source, 0))


def _request_head(server: GatewayServer, method: str, path: str, headers: dict[str, str] | None = None,
                  payload_hash: str | None = None) -> bytes:
    signed = sign_headers(server, method, path, b"", headers, payload_hash=payload_hash)
    return (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in signed.items()) + "\r\n").encode()


def _signed_get(server: GatewayServer, path: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
    host = urlsplit(server.endpoint)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30, source_address=(source, 0))
    try:
        conn.request("GET", path, headers=sign_headers(server, "GET", path))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except (ConnectionResetError, TimeoutError):
        pass  # cut by the server, or what it had sent before cutting is all there is
    return reply


def _no_temp_files(server: GatewayServer) -> bool:
    assert server.data_dir is not None
    return not any((server.data_dir / "store" / "tmp").iterdir())


def test_trickling_body_is_cut_by_the_minimum_rate(tmp_path: Path, fault_case: FaultCase) -> None:
    server = start_gateway(tmp_path, "--min-rate", "1000", "--min-rate-grace", "1", "--body-timeout", "60")
    try:
        server.client().create_bucket(Bucket="trickle")
        sock = _connect(server)
        sock.sendall(_request_head(server, "PUT", "/trickle/slow", {"content-length": str(MiB)},
                                   payload_hash="UNSIGNED-PAYLOAD"))
        # One byte every 0.2 s: never a 60 s stall, but 5 bytes/s against a 1000 bytes/s floor.
        sock.settimeout(0.2)
        reply = b""
        deadline = time.monotonic() + 30
        while not reply and time.monotonic() < deadline:
            try:
                sock.sendall(b"x")
                reply = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        reply += _read_until_closed(sock, 5)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 400") and b"<Code>RequestTimeout</Code>" in reply, reply[:200]
        with pytest.raises(botocore.exceptions.ClientError):
            server.client().head_object(Bucket="trickle", Key="slow")
        _wait_for(lambda: _no_temp_files(server))
    finally:
        server.stop()
    assert server.process.returncode == 0
    fault_case.record("body at 5 B/s under a 1000 B/s floor: 400 RequestTimeout, temp file gone")


def test_unread_download_is_cut_and_per_client_cap(tmp_path: Path, fault_case: FaultCase) -> None:
    server = start_gateway(tmp_path, "--max-requests-per-client", "2", "--min-rate", "200000",
                           "--min-rate-grace", "1", "--body-timeout", "3")
    greedy = "127.0.0.5"
    try:
        c = server.client()
        c.create_bucket(Bucket="reads")
        c.put_object(Bucket="reads", Key="big", Body=os.urandom(48 * MiB))
        stalled = []
        for _ in range(2):  # readers that ask for 48 MiB and never read
            sock = _connect(server, greedy)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(_request_head(server, "GET", "/reads/big"))
            stalled.append(sock)
        # Both are in flight (their response has started): a third from that address is refused...
        for sock in stalled:
            sock.settimeout(10)
            assert sock.recv(12) == b"HTTP/1.1 200"
        status, reply = _signed_get(server, "/reads/big?list-type=2", greedy)
        assert (status, b"<Code>SlowDown</Code>" in reply) == (503, True)
        # ...while another client is served.
        c.put_object(Bucket="reads", Key="small", Body=b"others are served")
        assert c.get_object(Bucket="reads", Key="small")["Body"].read() == b"others are served"
        # The stalled downloads fall under the minimum rate and are cut; their slots come back.
        _wait_for(lambda: _signed_get(server, "/reads/small", greedy) == (200, b"others are served"))
        for sock in stalled:
            got = 12 + len(_read_until_closed(sock, 10))
            assert got < 48 * MiB  # cut, not completed
            sock.close()
    finally:
        server.stop()
    assert server.process.returncode == 0
    fault_case.record("2 unread 48 MiB downloads: 3rd request 503, both cut, slots freed")


def test_request_cap_refuses_at_once(tmp_path: Path, fault_case: FaultCase) -> None:
    server = start_gateway(tmp_path, "--max-requests", "3", "--min-rate", "1000", "--min-rate-grace", "2")
    try:
        server.client().create_bucket(Bucket="capped")
        holders = []
        for i in range(3):
            sock = _connect(server, f"127.0.0.{10 + i}")
            sock.sendall(_request_head(server, "PUT", f"/capped/held-{i}", {"content-length": str(MiB)},
                                       payload_hash="UNSIGNED-PAYLOAD"))
            holders.append(sock)
        _wait_for(lambda: _signed_get(server, "/capped?list-type=2")[0] == 503, timeout=10)
        # The holders send nothing more; the rate floor cuts them and the gateway serves again.
        _wait_for(lambda: _signed_get(server, "/capped?list-type=2")[0] == 200)
        for sock in holders:
            assert b"<Code>RequestTimeout</Code>" in _read_until_closed(sock, 10)
            sock.close()
        _wait_for(lambda: _no_temp_files(server))
    finally:
        server.stop()
    assert server.process.returncode == 0
    fault_case.record("3 stalled uploads at --max-requests 3: 503 SlowDown, then served again")


def test_a_thousand_concurrent_slow_clients(tmp_path: Path, fault_case: FaultCase) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    # Grace and stall limits longer than it takes to open 1,000 connections: all are in flight at once.
    server = start_gateway(tmp_path, "--min-rate", "4096", "--min-rate-grace", "10", "--body-timeout", "10")
    sockets: list[socket.socket] = []
    try:
        c = server.client()
        c.create_bucket(Bucket="crowd")
        c.put_object(Bucket="crowd", Key="big", Body=os.urandom(8 * MiB))
        upload = _request_head(server, "PUT", "/crowd/slow", {"content-length": str(MiB)},
                               payload_hash="UNSIGNED-PAYLOAD")
        download = _request_head(server, "GET", "/crowd/big")
        # 1,000 clients from 10 addresses: half trickle an upload, half never read a download.
        for i in range(1000):
            sock = _connect(server, f"127.0.1.{1 + i % 10}", timeout=30)
            if i % 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(upload + b"x" if i % 2 == 0 else download)
            sockets.append(sock)
        # A well-behaved client is served throughout.
        started = time.monotonic()
        for i in range(20):
            c.put_object(Bucket="crowd", Key=f"good-{i}", Body=b"%d" % i)
            assert c.get_object(Bucket="crowd", Key=f"good-{i}")["Body"].read() == b"%d" % i
        served_in = time.monotonic() - started
        # Every slow client is answered (503 over its address's cap, 400 RequestTimeout) or cut.
        outcomes: dict[str, int] = {}
        deadline = time.monotonic() + 120
        for sock in sockets:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                head = sock.recv(12)
                while sock.recv(1 << 20):
                    pass
            except ConnectionResetError:
                head = b"reset"
            status = head[9:12].decode() if head.startswith(b"HTTP/1.1") else "cut"
            outcomes[status] = outcomes.get(status, 0) + 1
        assert time.monotonic() < deadline
        assert set(outcomes) <= {"200", "400", "503", "cut"}, outcomes
        assert outcomes.get("503", 0) >= 1  # the per-address cap (64 x 10 < 1000) refused some
        _wait_for(lambda: _no_temp_files(server))
        assert [o["Key"] for o in c.list_objects_v2(Bucket="crowd")["Contents"] if o["Key"] == "slow"] == []
        rss_kib = int(next(line.split()[1] for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines()
                           if line.startswith("VmHWM:")))
    finally:
        for sock in sockets:
            sock.close()
        server.stop()
    assert server.process.returncode == 0
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))
    fault_case.record(f"1000 slow clients ({summary}); 40 good requests in {served_in:.1f}s; "
                      f"peak RSS {rss_kib // 1024} MiB")


def test_multipart_uploads_expire(tmp_path: Path, fault_case: FaultCase) -> None:
    server = start_gateway(tmp_path, "--upload-expiry", "1")
    assert server.data_dir is not None
    try:
        c = server.client()
        c.create_bucket(Bucket="expiry")
        uid = c.create_multipart_upload(Bucket="expiry", Key="forgotten")["UploadId"]
        c.upload_part(Bucket="expiry", Key="forgotten", UploadId=uid, PartNumber=1, Body=b"abandoned " * 100)
        _wait_for(lambda: not c.list_multipart_uploads(Bucket="expiry").get("Uploads"))
        _wait_for(lambda: not any((server.data_dir / "store" / "chunks").glob("*/*")))
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            c.list_parts(Bucket="expiry", Key="forgotten", UploadId=uid)
        assert exc.value.response["Error"]["Code"] == "NoSuchUpload"
    finally:
        server.stop()
    assert server.process.returncode == 0
    fault_case.record("multipart upload older than --upload-expiry: aborted, part freed")


class _SilentUpstream:
    """A TCP server that accepts connections and never answers: an upstream that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.accepted:
            conn.close()
        self._thread.join(5)


@pytest.mark.expect_warnings
def test_anonymous_cache_through_never_queues(tmp_path: Path, fault_case: FaultCase) -> None:
    upstream = _SilentUpstream()
    server = start_gateway(tmp_path, "--upstream", "s3://hang", "--upstream-fetches", "1",
                           "--anonymous-read", "hang", "--threads", "1",
                           env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{upstream.port}", "AWS_ACCESS_KEY_ID": "x",
                                "AWS_SECRET_ACCESS_KEY": "y", "AWS_REGION": "us-east-1"})
    result: dict[str, int] = {}
    try:
        def hold() -> None:
            try:
                result["status"] = _signed_get(server, "/hang/first")[0]
            except OSError:
                result["status"] = 0  # the gateway stopped first

        holder = threading.Thread(target=hold)
        holder.start()
        _wait_for(lambda: len(upstream.accepted) >= 1, timeout=10)
        # The one fetch slot is taken: an anonymous miss is refused at once, not queued.
        host = urlsplit(server.endpoint)
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
        conn.request("GET", "/hang/second")
        resp = conn.getresponse()
        assert (resp.status, b"<Code>SlowDown</Code>" in resp.read()) == (503, True)
        conn.close()
        # The hung fetch holds no worker thread: with a single one, local requests still run.
        c = server.client()
        c.create_bucket(Bucket="local")
        c.put_object(Bucket="local", Key="k", Body=b"served meanwhile")
        assert c.get_object(Bucket="local", Key="k")["Body"].read() == b"served meanwhile"
    finally:
        upstream.close()
        server.stop()
        holder.join(60)
    assert result["status"] in (0, 503)  # the hung upstream ended as ServiceUnavailable, or never
    fault_case.record("hung upstream fetch: anonymous miss 503 at once, local requests served")


def test_upstream_size_cap(tmp_path: Path, seaweedfs: S3Server, fault_case: FaultCase) -> None:
    up = seaweedfs.client()
    up.create_bucket(Bucket="upsize")
    up.put_object(Bucket="upsize", Key="small", Body=b"fits")
    up.put_object(Bucket="upsize", Key="large", Body=os.urandom(2 * MiB))
    server = start_gateway(tmp_path, "--upstream", "s3://upsize", "--upstream-max-size", str(MiB),
                           env=seaweedfs.env())
    try:
        c = server.client()
        assert c.get_object(Bucket="upsize", Key="small")["Body"].read() == b"fits"
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            c.get_object(Bucket="upsize", Key="large")
        assert exc.value.response["Error"]["Code"] == "EntityTooLarge"
        assert [o["Key"] for o in c.list_objects_v2(Bucket="upsize")["Contents"]] == ["small"]
    finally:
        server.stop()
        for key in ("small", "large"):
            up.delete_object(Bucket="upsize", Key=key)
        up.delete_bucket(Bucket="upsize")
    assert server.process.returncode == 0
    fault_case.record("2 MiB upstream object over a 1 MiB cap: refused, nothing cached")
