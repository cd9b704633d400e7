"""The gateway holds the only copy of its objects: what it acknowledged survives kill -9
and SIGTERM mid-upload, and what a crash leaves half-written is collected at start-up."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import botocore.exceptions
import pytest

from mlfs.gateway.catalog import Catalog
from mlfs.store.chunks import ChunkStore
from tests.faults.cases import FaultCase
from tests.gateway.clients import sign_headers
from tests.gateway.server import GatewayServer, start_gateway

pytestmark = pytest.mark.s3
MiB = 1024 * 1024


def chunk_files(data_dir: Path) -> set[str]:
    return {p.name for p in (data_dir / "store" / "chunks").glob("*/*")}


def _wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _slow_upload(server: GatewayServer, bucket: str, key: str, total: int, sent: int) -> socket.socket:
    path = f"/{bucket}/{key}"
    headers = sign_headers(server, "PUT", path, b"", {"content-length": str(total)}, payload_hash="UNSIGNED-PAYLOAD")
    host = urlsplit(server.endpoint)
    sock = socket.create_connection((host.hostname, host.port), timeout=30)
    sock.sendall((f"PUT {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())
    block = os.urandom(MiB)
    for _ in range(sent // MiB):
        sock.sendall(block)
    return sock


def _acknowledge_objects(server: GatewayServer, bucket: str, count: int) -> dict[str, bytes]:
    """Objects written and acknowledged: small, multi-chunk, and multipart."""
    c = server.client()
    acked: dict[str, bytes] = {}
    for i in range(count):
        data = os.urandom(1000 + i)
        c.put_object(Bucket=bucket, Key=f"small/{i}", Body=data)
        acked[f"small/{i}"] = data
    big = os.urandom(20 * MiB)  # two 16 MiB chunks, the second short
    c.put_object(Bucket=bucket, Key="big.bin", Body=big)
    acked["big.bin"] = big
    parts = [os.urandom(5 * MiB), os.urandom(3 * MiB)]
    uid = c.create_multipart_upload(Bucket=bucket, Key="multipart.bin")["UploadId"]
    etags = [c.upload_part(Bucket=bucket, Key="multipart.bin", UploadId=uid, PartNumber=n, Body=d)["ETag"]
             for n, d in enumerate(parts, start=1)]
    c.complete_multipart_upload(Bucket=bucket, Key="multipart.bin", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]})
    acked["multipart.bin"] = b"".join(parts)
    return acked


def _bytes_lost(server: GatewayServer, bucket: str, acked: dict[str, bytes]) -> int:
    c = server.client()
    lost = 0
    for key, data in acked.items():
        try:
            got = c.get_object(Bucket=bucket, Key=key)["Body"].read()
        except botocore.exceptions.ClientError:
            got = b""
        if got != data:
            lost += len(data)
    return lost


@pytest.mark.parametrize("how", ["kill-9", "sigterm"])
def test_acknowledged_objects_survive_a_stop_mid_upload(tmp_path: Path, fault_case: FaultCase, how: str) -> None:
    server = start_gateway(tmp_path)
    assert server.data_dir is not None
    try:
        server.client().create_bucket(Bucket="durable")
        acked = _acknowledge_objects(server, "durable", 20)
        sock = _slow_upload(server, "durable", "in-flight.bin", total=40 * MiB, sent=20 * MiB)
        # A 16 MiB chunk of the in-flight upload is sealed, the next one is being written.
        _wait_for(lambda: any((server.data_dir / "store" / "tmp").iterdir()))
        server.process.send_signal(signal.SIGKILL if how == "kill-9" else signal.SIGTERM)
        code = server.process.wait(20)
        assert code == (-signal.SIGKILL if how == "kill-9" else 0)
        sock.close()
    finally:
        server.stop()
    again = start_gateway(tmp_path)
    try:
        lost = _bytes_lost(again, "durable", acked)
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            again.client().head_object(Bucket="durable", Key="in-flight.bin")
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        # Exactly the acknowledged objects' chunks remain: the crash left nothing behind.
        expected = {hashlib.sha256(d[i:i + 16 * MiB]).hexdigest() for d in acked.values()
                    for i in range(0, len(d), 16 * MiB)}
        assert chunk_files(tmp_path / "data") == expected
        assert not any((tmp_path / "data" / "store" / "tmp").iterdir())
    finally:
        again.stop()
    assert again.process.returncode == 0
    fault_case.record(f"{how} mid-upload: {len(acked)} acknowledged objects intact, in-flight upload gone",
                      bytes_lost=lost)


def test_kill_9_during_concurrent_writes(tmp_path: Path, fault_case: FaultCase) -> None:
    """Writers race a kill -9: every PUT that got its 200 is there afterwards, byte for byte."""
    server = start_gateway(tmp_path)
    c = server.client()
    c.create_bucket(Bucket="race")
    acked: dict[str, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        i = 0
        while not stop.is_set() and i < 500:
            key, data = f"w{n}/{i}", os.urandom(4096 + 7 * i)
            try:
                server.client().put_object(Bucket="race", Key=key, Body=data)
            except Exception:  # the server died mid-request: not acknowledged
                return
            with lock:
                acked[key] = data
            i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        _wait_for(lambda: len(acked) >= 40)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        server.stop()
    again = start_gateway(tmp_path)
    try:
        lost = _bytes_lost(again, "race", acked)
    finally:
        again.stop()
    fault_case.record(f"kill -9 during 4 writers: {len(acked)} acknowledged PUTs checked", bytes_lost=lost)


def test_orphan_chunks_are_collected_at_start_up(tmp_path: Path, fault_case: FaultCase) -> None:
    server = start_gateway(tmp_path)
    try:
        server.client().create_bucket(Bucket="keep")
        server.client().put_object(Bucket="keep", Key="kept", Body=b"referenced chunk")
    finally:
        server.stop()
    # What a crash between a chunk's rename and its row leaves: a chunk nobody refers to.
    store = ChunkStore(tmp_path / "data" / "store")
    orphan = store.put_bytes(b"written, never recorded")
    store.close()
    assert orphan in chunk_files(tmp_path / "data")
    again = start_gateway(tmp_path)
    try:
        assert orphan not in chunk_files(tmp_path / "data")
        assert hashlib.sha256(b"referenced chunk").hexdigest() in chunk_files(tmp_path / "data")
        assert again.client().get_object(Bucket="keep", Key="kept")["Body"].read() == b"referenced chunk"
    finally:
        again.stop()
    fault_case.record("unreferenced chunk file: removed at start-up, referenced one kept")


def test_catalog_commits_are_synchronous_full(tmp_path: Path, fault_case: FaultCase) -> None:
    # A kill -9 cannot show it (the page cache survives a process); power loss would:
    # NORMAL in WAL mode may lose the last acknowledged commits, FULL may not.
    catalog = Catalog(tmp_path / "meta.sqlite3")
    try:
        assert catalog._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert catalog._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        catalog.close()
    fault_case.record("catalog: WAL with synchronous=FULL")


def test_chunk_rename_is_followed_by_a_directory_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       fault_case: FaultCase) -> None:
    import mlfs.store.chunks as chunks

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src, dst) -> None:  # type: ignore[no-untyped-def]
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(chunks.os, "fsync", fsync)
    monkeypatch.setattr(chunks.os, "replace", replace)
    store = ChunkStore(tmp_path / "store")
    try:
        store.put_bytes(b"durable chunk")
    finally:
        store.close()
    assert "rename" in events
    assert "fsync-dir" in events[events.index("rename"):]
    assert events.index("fsync-file") < events.index("rename")
    fault_case.record("chunk: file fsync, rename, directory fsync")
