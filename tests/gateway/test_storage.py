"""What only the gateway promises: chunk-store layout, manifests, freeing chunks, crash
safety, clean SIGTERM, aws-chunked uploads, per-user rights and anonymous read."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import time
import zlib
from pathlib import Path
from urllib.parse import quote, urlsplit

import boto3
import botocore
import botocore.config
import botocore.exceptions
import pytest

from mlfs.manifest.model import FileEntry, Manifest, Source
from mlfs.manifest.validate import parse_manifest
from mlfs.store.chunks import ChunkStore
from tests.gateway.clients import send_raw, sign_headers
from tests.gateway.server import GatewayServer, start_gateway

pytestmark = pytest.mark.s3

MiB = 1024 * 1024
CHUNK = 16 * MiB


@pytest.fixture
def bucket(gateway: GatewayServer, bucket_on) -> str:  # type: ignore[no-untyped-def]
    return bucket_on(gateway)


def chunk_files(data_dir: Path) -> set[str]:
    return {p.name for p in (data_dir / "store" / "chunks").rglob("*") if p.is_file()}


def chunk_digests(data: bytes) -> list[str]:
    return [hashlib.sha256(data[i:i + CHUNK]).hexdigest() for i in range(0, len(data), CHUNK)]


def get_manifest(server: GatewayServer, bucket: str, prefix: str, extra: str = "") -> str:
    path = f"/{bucket}?mlfs-manifest&prefix={quote(prefix, safe='')}{extra}"
    status, body = send_raw(server, "GET", path, sign_headers(server, "GET", path))
    assert status == 200, body
    return body.decode()


def test_objects_live_in_the_shared_chunk_store(gateway: GatewayServer, bucket: str) -> None:
    data = os.urandom(40 * MiB)
    gateway.client().put_object(Bucket=bucket, Key="m/weights.bin", Body=data)
    assert gateway.data_dir is not None
    store = ChunkStore(gateway.data_dir / "store")
    digests = chunk_digests(data)
    assert len(digests) == 3
    assert b"".join(store.read_all(d) for d in digests) == data


def test_manifest_of_a_prefix(gateway: GatewayServer, bucket: str) -> None:
    c = gateway.client()
    files = {"config.json": b'{"layers": 2}', "weights/part-0.bin": os.urandom(17 * MiB), "empty.txt": b""}
    for rel, data in files.items():
        c.put_object(Bucket=bucket, Key=f"models/bert/{rel}", Body=data)
    c.put_object(Bucket=bucket, Key="models/bert-other/x", Body=b"not under the prefix")
    # Multipart with chunk-aligned parts: its SHA-256 is computed after completion.
    big = os.urandom(2 * CHUNK + 5)
    uid = c.create_multipart_upload(Bucket=bucket, Key="models/bert/aligned.bin")["UploadId"]
    parts = []
    for n, start in enumerate(range(0, len(big), CHUNK), start=1):
        etag = c.upload_part(Bucket=bucket, Key="models/bert/aligned.bin", UploadId=uid, PartNumber=n,
                             Body=big[start:start + CHUNK])["ETag"]
        parts.append({"PartNumber": n, "ETag": etag})
    c.complete_multipart_upload(Bucket=bucket, Key="models/bert/aligned.bin", UploadId=uid,
                                MultipartUpload={"Parts": parts})
    files["aligned.bin"] = big
    text = get_manifest(gateway, bucket, "models/bert/", "&version=v1")
    entries = []
    for rel in sorted(files):
        data = files[rel]
        etag = c.head_object(Bucket=bucket, Key=f"models/bert/{rel}")["ETag"].strip('"')
        entries.append(FileEntry(path=rel, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                 chunks=tuple(chunk_digests(data)),
                                 source=Source(bucket=bucket, key=f"models/bert/{rel}", etag=etag)))
    assert text == Manifest(name="bert", version="v1", files=entries).dumps()
    parse_manifest(text)


def test_delete_frees_chunks_no_other_object_uses(gateway: GatewayServer, bucket: str) -> None:
    assert gateway.data_dir is not None
    c = gateway.client()
    data = os.urandom(CHUNK + 1000)
    digests = set(chunk_digests(data))
    c.put_object(Bucket=bucket, Key="original", Body=data)
    c.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "original"})
    c.put_object(Bucket=bucket, Key="same-bytes", Body=data)
    assert digests <= chunk_files(gateway.data_dir)
    c.delete_object(Bucket=bucket, Key="original")
    c.delete_object(Bucket=bucket, Key="same-bytes")
    assert digests <= chunk_files(gateway.data_dir)
    assert c.get_object(Bucket=bucket, Key="copy")["Body"].read() == data
    c.delete_object(Bucket=bucket, Key="copy")
    assert not digests & chunk_files(gateway.data_dir)
    # Overwriting frees the old version's chunks too; aborting an upload frees its parts.
    c.put_object(Bucket=bucket, Key="v", Body=data)
    c.put_object(Bucket=bucket, Key="v", Body=b"small now")
    assert not digests & chunk_files(gateway.data_dir)
    uid = c.create_multipart_upload(Bucket=bucket, Key="aborted")["UploadId"]
    c.upload_part(Bucket=bucket, Key="aborted", UploadId=uid, PartNumber=1, Body=data)
    assert digests <= chunk_files(gateway.data_dir)
    c.abort_multipart_upload(Bucket=bucket, Key="aborted", UploadId=uid)
    assert not digests & chunk_files(gateway.data_dir)


def _signed_aws_chunked(server: GatewayServer, path: str, data: bytes, tamper: bool = False,
                        block: int = 64 * 1024) -> tuple[dict[str, str], bytes]:
    """An aws-chunked PUT with chained chunk signatures, signed with botocore's maths."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from tests.servers import ACCESS_KEY, SECRET_KEY

    request = AWSRequest(method="PUT", url=server.endpoint + path, headers={
        "host": server.endpoint.split("://", 1)[1], "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"})
    class StreamingAuth(S3SigV4Auth):
        def payload(self, request: AWSRequest) -> str:
            return "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"

    auth = StreamingAuth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1")
    auth.add_auth(request)
    previous = request.headers["Authorization"].rsplit("Signature=", 1)[1]
    scope = auth.credential_scope(request)
    empty = hashlib.sha256(b"").hexdigest()
    body = bytearray()
    pieces = [data[i:i + block] for i in range(0, len(data), block)] + [b""]
    for piece in pieces:
        string_to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", request.context["timestamp"], scope, previous,
                                    empty, hashlib.sha256(piece).hexdigest()])
        previous = auth.signature(string_to_sign, request)
        if tamper and piece and len(body) > 0:
            piece = b"X" + piece[1:]
            tamper = False
        body += f"{len(piece):x};chunk-signature={previous}\r\n".encode() + piece + b"\r\n"
    return dict(request.headers.items()), bytes(body)


@pytest.mark.parametrize("size", [300_000, 3 * MiB])  # one-trip small path and streamed path
def test_aws_chunked_signed_upload(gateway: GatewayServer, bucket: str, size: int) -> None:
    data = os.urandom(size)
    headers, body = _signed_aws_chunked(gateway, f"/{bucket}/streamed", data)
    status, reply = send_raw(gateway, "PUT", f"/{bucket}/streamed", headers, body)
    assert status == 200, reply
    got = gateway.client().get_object(Bucket=bucket, Key="streamed")
    assert got["Body"].read() == data
    assert "ContentEncoding" not in got  # aws-chunked describes the transfer, not the object
    headers, body = _signed_aws_chunked(gateway, f"/{bucket}/tampered", data, tamper=True)
    status, reply = send_raw(gateway, "PUT", f"/{bucket}/tampered", headers, body)
    assert status == 403 and b"SignatureDoesNotMatch" in reply
    with pytest.raises(botocore.exceptions.ClientError):
        gateway.client().head_object(Bucket=bucket, Key="tampered")


def test_aws_chunked_unsigned_trailer_upload(gateway: GatewayServer, bucket: str) -> None:
    data = os.urandom(200_000)

    def upload(key: str, crc: bytes) -> tuple[int, bytes]:
        body = (f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n"
                + b"x-amz-checksum-crc32:" + base64.b64encode(crc) + b"\r\n\r\n")
        headers = sign_headers(gateway, "PUT", f"/{bucket}/{key}", body, {
            "content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
            "x-amz-trailer": "x-amz-checksum-crc32"}, payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
        return send_raw(gateway, "PUT", f"/{bucket}/{key}", headers, body)

    good = zlib.crc32(data).to_bytes(4, "big")
    assert upload("trailer", good)[0] == 200
    assert gateway.client().get_object(Bucket=bucket, Key="trailer")["Body"].read() == data
    status, reply = upload("bad-trailer", bytes(4))
    assert status == 400 and b"BadDigest" in reply


def _start_slow_upload(server: GatewayServer, bucket: str, key: str, total: int, sent: int) -> socket.socket:
    path = f"/{bucket}/{key}"
    headers = sign_headers(server, "PUT", path, b"", {"content-length": str(total)}, payload_hash="UNSIGNED-PAYLOAD")
    host = urlsplit(server.endpoint)
    sock = socket.create_connection((host.hostname, host.port), timeout=30)
    head = f"PUT {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    block = os.urandom(MiB)
    for _ in range(sent // MiB):
        sock.sendall(block)
    return sock


def _wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["crash", "sigterm"])
def test_interrupted_upload_leaves_nothing(tmp_path: Path, how: str) -> None:
    server = start_gateway(tmp_path)
    assert server.data_dir is not None
    try:
        server.client().create_bucket(Bucket="crash")
        sock = _start_slow_upload(server, "crash", "half.bin", total=40 * MiB, sent=20 * MiB)
        # One 16 MiB chunk is sealed and a second is being written when the server goes.
        _wait_for(lambda: len(chunk_files(server.data_dir)) >= 1)
        _wait_for(lambda: any((server.data_dir / "store" / "tmp").iterdir()))
        if how == "crash":
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(10)
        else:
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(15) == 0
            assert not any((server.data_dir / "store" / "tmp").iterdir())
            assert not chunk_files(server.data_dir)
        sock.close()
    finally:
        server.stop()
    again = start_gateway(tmp_path)
    try:
        c = again.client()
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            c.head_object(Bucket="crash", Key="half.bin")
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert not any((tmp_path / "data" / "store" / "tmp").iterdir())
        assert not chunk_files(tmp_path / "data")
        c.put_object(Bucket="crash", Key="after", Body=b"still works")
        assert c.get_object(Bucket="crash", Key="after")["Body"].read() == b"still works"
    finally:
        again.stop()
    assert again.process.returncode == 0


def test_credentials_file_and_anonymous_read(tmp_path: Path) -> None:
    creds = tmp_path / "users.toml"
    creds.write_text(
        '[[user]]\nname = "reader"\naccess_key = "AKREADER"\nsecret_key = "reader-secret"\nread = ["shared"]\n\n'
        '[[user]]\nname = "writer"\naccess_key = "AKWRITER"\nsecret_key = "writer-secret"\nwrite = ["shared"]\n\n'
        '[anonymous]\nread = ["public-models"]\n'
    )
    server = start_gateway(tmp_path, "--credentials", str(creds))
    try:
        def client(key: str | None, secret: str | None):  # type: ignore[no-untyped-def]
            config = botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                            signature_version=botocore.UNSIGNED if key is None else "s3v4")
            return boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                                aws_access_key_id=key or "x", aws_secret_access_key=secret or "x", config=config)

        def denied(call) -> None:  # type: ignore[no-untyped-def]
            with pytest.raises(botocore.exceptions.ClientError) as exc:
                call()
            assert exc.value.response["Error"]["Code"] == "AccessDenied"

        root = server.client()
        for name in ("shared", "private", "public-models"):
            root.create_bucket(Bucket=name)
        root.put_object(Bucket="private", Key="secret", Body=b"root only")
        root.put_object(Bucket="public-models", Key="open", Body=b"for everyone")
        reader, writer, anonymous = client("AKREADER", "reader-secret"), client("AKWRITER", "writer-secret"), client(None, None)
        writer.put_object(Bucket="shared", Key="w", Body=b"written")
        assert reader.get_object(Bucket="shared", Key="w")["Body"].read() == b"written"
        denied(lambda: reader.put_object(Bucket="shared", Key="r", Body=b"no"))
        denied(lambda: reader.get_object(Bucket="private", Key="secret"))
        denied(lambda: writer.create_bucket(Bucket="new-bucket"))
        denied(lambda: writer.delete_object(Bucket="private", Key="secret"))
        denied(lambda: writer.copy_object(Bucket="shared", Key="stolen", CopySource={"Bucket": "private", "Key": "secret"}))
        assert [b["Name"] for b in reader.list_buckets()["Buckets"]] == ["shared"]
        assert anonymous.get_object(Bucket="public-models", Key="open")["Body"].read() == b"for everyone"
        assert [o["Key"] for o in anonymous.list_objects_v2(Bucket="public-models")["Contents"]] == ["open"]
        denied(lambda: anonymous.put_object(Bucket="public-models", Key="x", Body=b"no"))
        denied(lambda: anonymous.get_object(Bucket="private", Key="secret"))
        denied(lambda: anonymous.list_buckets())
    finally:
        server.stop()
    assert server.process.returncode == 0


def test_second_server_on_same_data_dir_is_refused(gateway: GatewayServer) -> None:
    assert gateway.data_dir is not None
    with pytest.raises(RuntimeError, match="already using"):
        start_gateway(gateway.data_dir.parent, timeout=10)


def test_cache_through_upstream(tmp_path: Path, seaweedfs) -> None:  # type: ignore[no-untyped-def]
    from tests.servers import s3_env

    upstream = seaweedfs.client()
    upstream.create_bucket(Bucket="upstream-models")
    data = os.urandom(CHUNK + 12345)
    upstream.put_object(Bucket="upstream-models", Key="cache/llm/weights.bin", Body=data,
                        Metadata={"source": "upstream"}, ContentType="application/x-weights")
    env = {k: v for k, v in s3_env(seaweedfs.endpoint).items() if k.startswith("AWS_")}
    server = start_gateway(tmp_path, "--upstream", "s3://upstream-models/cache/", env=env)
    try:
        c = server.client()
        got = c.get_object(Bucket="upstream-models", Key="llm/weights.bin")
        assert got["Body"].read() == data
        assert got["Metadata"] == {"source": "upstream"}
        assert got["ContentType"] == "application/x-weights"
        before = seaweedfs.get_count("upstream-models")
        for _ in range(3):
            assert c.get_object(Bucket="upstream-models", Key="llm/weights.bin", Range="bytes=-100")["Body"].read() == data[-100:]
        assert seaweedfs.get_count("upstream-models") == before, "cached object was fetched again"
        manifest = json.loads(get_manifest(server, "upstream-models", "llm/"))
        assert manifest["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            c.get_object(Bucket="upstream-models", Key="llm/missing")
        assert exc.value.response["Error"]["Code"] == "NoSuchKey"
    finally:
        server.stop()
    assert server.process.returncode == 0


def test_stalled_clients_do_not_block_others(gateway: GatewayServer, bucket: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    c = gateway.client()
    c.put_object(Bucket=bucket, Key="big", Body=os.urandom(48 * MiB))
    host = urlsplit(gateway.endpoint)
    stalled = []
    try:
        for _ in range(20):  # readers that ask for 48 MiB and never read it
            sock = socket.create_connection((host.hostname, host.port), timeout=30)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            path = f"/{bucket}/big"
            headers = sign_headers(gateway, "GET", path)
            sock.sendall((f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())
            stalled.append(sock)
        for i in range(20):  # uploads that stop half-way
            stalled.append(_start_slow_upload(gateway, bucket, f"stalled-{i}", total=8 * MiB, sent=2 * MiB))
        with ThreadPoolExecutor(8) as pool:
            def small(i: int) -> bytes:
                c.put_object(Bucket=bucket, Key=f"small-{i}", Body=b"%d" % i)
                return c.get_object(Bucket=bucket, Key=f"small-{i}")["Body"].read()
            assert list(pool.map(small, range(100))) == [b"%d" % i for i in range(100)]
    finally:
        for sock in stalled:
            sock.close()
    # The abandoned uploads left no objects behind.
    _wait_for(lambda: not any(o["Key"].startswith("stalled-") for o in c.list_objects_v2(Bucket=bucket).get("Contents", [])))


def test_slow_complete_sends_keepalive_whitespace(tmp_path: Path) -> None:
    # With a tiny keep-alive interval the 200 response starts before re-chunking ends.
    server = start_gateway(tmp_path, env={"MLFS_GATEWAY_KEEPALIVE_SECONDS": "0.01"})
    try:
        c = server.client()
        c.create_bucket(Bucket="keepalive")
        parts_data = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(7)]
        uid = c.create_multipart_upload(Bucket="keepalive", Key="k")["UploadId"]
        parts = [{"PartNumber": n, "ETag": c.upload_part(Bucket="keepalive", Key="k", UploadId=uid, PartNumber=n,
                                                        Body=d)["ETag"]} for n, d in enumerate(parts_data, start=1)]
        path = f"/keepalive/k?uploadId={uid}"
        body = ("<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{p['PartNumber']}</PartNumber><ETag>{p['ETag']}</ETag></Part>" for p in parts)
            + "</CompleteMultipartUpload>").encode()
        status, reply = send_raw(server, "POST", path, sign_headers(server, "POST", path, body), body)
        assert status == 200
        assert reply.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n ')
        assert b"<CompleteMultipartUploadResult" in reply
        assert c.get_object(Bucket="keepalive", Key="k")["Body"].read() == b"".join(parts_data)
    finally:
        server.stop()


def test_stalled_body_times_out_but_slow_download_does_not(tmp_path: Path) -> None:
    server = start_gateway(tmp_path, env={"MLFS_GATEWAY_BODY_TIMEOUT_SECONDS": "1"})
    assert server.data_dir is not None
    try:
        c = server.client()
        c.create_bucket(Bucket="timeouts")
        sock = _start_slow_upload(server, "timeouts", "stalled", total=4 * MiB, sent=1 * MiB)
        sock.settimeout(10)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        sock.close()
        assert reply.startswith(b"HTTP/1.1 400") and b"<Code>RequestTimeout</Code>" in reply
        with pytest.raises(botocore.exceptions.ClientError):
            c.head_object(Bucket="timeouts", Key="stalled")
        assert not any((server.data_dir / "store" / "tmp").iterdir())
        # A download that takes longer than the body timeout, from a client that sends
        # nothing meanwhile, is not cut short.
        data = os.urandom(8 * MiB)
        c.put_object(Bucket="timeouts", Key="slow-read", Body=data)
        body = c.get_object(Bucket="timeouts", Key="slow-read")["Body"]
        got = bytearray()
        while block := body.read(2 * MiB):
            got += block
            time.sleep(0.8)
        assert bytes(got) == data
    finally:
        server.stop()
