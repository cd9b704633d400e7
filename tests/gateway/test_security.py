"""Security cases against a real `mlfs serve`: each bad request is refused with the right S3 error."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions
import pytest

from tests.gateway.clients import presign_client, send_raw, sign_headers
from tests.gateway.server import GatewayServer
from tests.servers import ACCESS_KEY

pytestmark = pytest.mark.s3


@pytest.fixture
def bucket(gateway: GatewayServer, bucket_on) -> str:  # type: ignore[no-untyped-def]
    return bucket_on(gateway)


def _client(server: GatewayServer, secret: str, access: str = ACCESS_KEY):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
                        region_name="us-east-1",
                        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def _code(body: bytes) -> str:
    return body.split(b"<Code>", 1)[1].split(b"</Code>", 1)[0].decode()


def test_wrong_secret_is_refused(gateway: GatewayServer, bucket: str) -> None:
    bad = _client(gateway, "not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        bad.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert exc.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        _client(gateway, "whatever", access="AKUNKNOWN").list_buckets()
    assert exc.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    assert "Contents" not in gateway.client().list_objects_v2(Bucket=bucket)


def test_tampered_signed_header_is_refused(gateway: GatewayServer, bucket: str) -> None:
    path = f"/{bucket}/tampered"
    headers = sign_headers(gateway, "PUT", path, b"payload", {"x-amz-meta-owner": "alice", "content-type": "text/plain"})
    assert "x-amz-meta-owner" in headers["Authorization"]
    headers["x-amz-meta-owner"] = "mallory"
    status, body = send_raw(gateway, "PUT", path, headers, b"payload")
    assert (status, _code(body)) == (403, "SignatureDoesNotMatch")
    # The untampered request goes through, so the refusal was about the change.
    headers["x-amz-meta-owner"] = "alice"
    assert send_raw(gateway, "PUT", path, headers, b"payload")[0] == 200


def test_tampered_body_is_refused(gateway: GatewayServer, bucket: str) -> None:
    path = f"/{bucket}/body"
    headers = sign_headers(gateway, "PUT", path, b"original")
    status, body = send_raw(gateway, "PUT", path, headers, b"modified")
    assert (status, _code(body)) == (400, "XAmzContentSHA256Mismatch")
    with pytest.raises(botocore.exceptions.ClientError):
        gateway.client().head_object(Bucket=bucket, Key="body")


def test_expired_presigned_url(gateway: GatewayServer, bucket: str) -> None:
    gateway.client().put_object(Bucket=bucket, Key="soon-expired", Body=b"secret")
    url = presign_client(gateway).generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "soon-expired"}, ExpiresIn=1)
    # Poll (bounded) until the URL's second has passed, rather than sleeping a guess.
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=10).read()
        except urllib.error.HTTPError as exc:
            assert exc.code == 403
            assert b"expired" in exc.read()
            break
        assert time.monotonic() < deadline, "the presigned URL never expired"
        time.sleep(0.1)


def test_presigned_url_reused_for_another_key(gateway: GatewayServer, bucket: str) -> None:
    c = gateway.client()
    c.put_object(Bucket=bucket, Key="allowed", Body=b"ok")
    c.put_object(Bucket=bucket, Key="forbidden", Body=b"private")
    url = presign_client(gateway).generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "allowed"}, ExpiresIn=300)
    assert urllib.request.urlopen(url, timeout=10).read() == b"ok"
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(url.replace("/allowed?", "/forbidden?"), timeout=10)
    assert exc.value.code == 403
    assert _code(exc.value.read()) == "SignatureDoesNotMatch"
    # A presigned GET cannot be turned into a PUT either.
    put = urllib.request.Request(url, data=b"overwrite", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(put, timeout=10)
    assert exc.value.code == 403


@pytest.mark.parametrize("key, code", [
    ("a/../escape", "InvalidArgument"),
    ("../escape", "InvalidArgument"),
    ("a/./b", "InvalidArgument"),
    ("nul\x00byte", "InvalidArgument"),
    ("ctrl\x01char", "InvalidArgument"),
    ("x" * 1025, "KeyTooLongError"),
])
def test_unsafe_keys_are_refused(gateway: GatewayServer, bucket: str, key: str, code: str) -> None:
    c = gateway.client()
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.put_object(Bucket=bucket, Key=key, Body=b"x")
    assert exc.value.response["Error"]["Code"] == code
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.create_multipart_upload(Bucket=bucket, Key=key)
    assert exc.value.response["Error"]["Code"] == code
    assert "Contents" not in c.list_objects_v2(Bucket=bucket)


def test_longest_allowed_key_works(gateway: GatewayServer, bucket: str) -> None:
    c = gateway.client()
    key = "k" * 1024
    c.put_object(Bucket=bucket, Key=key, Body=b"edge")
    assert c.get_object(Bucket=bucket, Key=key)["Body"].read() == b"edge"


def test_body_longer_than_declared(gateway: GatewayServer, bucket: str) -> None:
    # Plain body: the client signed 20 bytes but declares 10; the server reads 10 and
    # the signed hash no longer matches.
    path = f"/{bucket}/longer"
    body = b"0123456789abcdefghij"
    headers = sign_headers(gateway, "PUT", path, body)
    headers["Content-Length"] = "10"
    status, reply = send_raw(gateway, "PUT", path, headers, body)
    assert (status, _code(reply)) == (400, "XAmzContentSHA256Mismatch")
    # aws-chunked: the decoded data is longer than x-amz-decoded-content-length.
    chunked = b"14\r\n" + body + b"\r\n0\r\n\r\n"
    headers = sign_headers(gateway, "PUT", path, chunked, {
        "content-encoding": "aws-chunked", "x-amz-decoded-content-length": "10",
        "content-length": str(len(chunked))}, payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    status, reply = send_raw(gateway, "PUT", path, headers, chunked)
    assert (status, _code(reply)) == (400, "IncompleteBody")
    with pytest.raises(botocore.exceptions.ClientError):
        gateway.client().head_object(Bucket=bucket, Key="longer")


def test_declared_length_over_limit(gateway: GatewayServer, bucket: str) -> None:
    path = f"/{bucket}/huge"
    headers = sign_headers(gateway, "PUT", path, b"", {"content-length": str(6 * 1024**3)},
                           payload_hash="UNSIGNED-PAYLOAD")
    status, reply = send_raw(gateway, "PUT", path, headers)
    assert (status, _code(reply)) == (400, "EntityTooLarge")


def test_slow_client_never_finishing_headers(gateway: GatewayServer, bucket: str) -> None:
    host = urlsplit(gateway.endpoint)
    slow = socket.create_connection((host.hostname, host.port), timeout=30)
    try:
        slow.sendall(b"GET /" + bucket.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        # Others are served meanwhile.
        c = gateway.client()
        c.put_object(Bucket=bucket, Key="meanwhile", Body=b"fine")
        assert c.get_object(Bucket=bucket, Key="meanwhile")["Body"].read() == b"fine"
        # Trickling more header bytes does not keep the connection alive forever.
        closed = False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                slow.sendall(b"X-Slow: 1\r\n")
                slow.settimeout(0.5)
                if slow.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                closed = True
                break
        assert closed, "the server kept a connection with unfinished headers open"
    finally:
        slow.close()


def test_malformed_requests_get_s3_errors(gateway: GatewayServer, bucket: str) -> None:
    c = gateway.client()
    uid = c.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    path = f"/{bucket}/mp?uploadId={uid}"
    for body in [b"<not-xml", b"<CompleteMultipartUpload></CompleteMultipartUpload>",
                 b'<!DOCTYPE x [<!ENTITY a "b">]><CompleteMultipartUpload/>']:
        status, reply = send_raw(gateway, "POST", path, sign_headers(gateway, "POST", path, body), body)
        assert status == 400 and _code(reply) == "MalformedXML", reply
    status, reply = send_raw(gateway, "GET", "/", {"Host": "x", "Authorization": "AWS4-HMAC-SHA256 garbage"})
    assert status == 400 and _code(reply) == "AuthorizationHeaderMalformed"
    # SigV2 is verified like SigV4: an unknown key is refused, whatever the signature.
    status, reply = send_raw(gateway, "GET", f"/{bucket}", {"Host": "x", "Authorization": "AWS AKID:sig",
                                                            "Date": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())})
    assert status == 403 and _code(reply) == "InvalidAccessKeyId"
    status, reply = send_raw(gateway, "GET", f"/{bucket}", {"Host": "x", "Authorization": "Bearer token"})
    assert status == 400 and _code(reply) == "InvalidRequest"
    status, reply = send_raw(gateway, "GET", f"/{bucket}/x", {"Host": "x"})
    assert status == 403 and _code(reply) == "AccessDenied"
    # The gateway answered every case without dying.
    assert gateway.process.poll() is None
    assert any(b["Name"] == bucket for b in c.list_buckets()["Buckets"])
