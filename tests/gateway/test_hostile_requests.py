"""Hostile and half-supported requests against a real `mlfs serve`: each is refused
exactly, or answered as S3 answers it. Every test is a row of the fault-case table."""

from __future__ import annotations

import base64
import hashlib
import socket
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from urllib.parse import quote, urlsplit

import boto3
import botocore.config
import botocore.exceptions
import pytest

from tests.faults.cases import FaultCase
from tests.gateway.clients import presign_client, send_raw, sign_headers
from tests.gateway.server import GatewayServer
from tests.servers import ACCESS_KEY, SECRET_KEY

pytestmark = pytest.mark.s3
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@pytest.fixture
def bucket(gateway: GatewayServer, bucket_on) -> str:  # type: ignore[no-untyped-def]
    return bucket_on(gateway)


def _code(body: bytes) -> str:
    return body.split(b"<Code>", 1)[1].split(b"</Code>", 1)[0].decode()


def _error(exc: pytest.ExceptionInfo) -> tuple[int, str]:
    response = exc.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def _exists(server: GatewayServer, bucket: str, key: str) -> bool:
    try:
        server.client().head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        return False
    return True


def _raw_exchange(server: GatewayServer, request: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes on one connection; everything the server answers until it closes or goes quiet.

    A server that closes with unread request bytes makes the kernel send a reset, which
    may discard its answer before we read it: a reset is returned as b"RESET".
    """
    host = urlsplit(server.endpoint)
    with socket.create_connection((host.hostname, host.port), timeout=timeout) as sock:
        sock.sendall(request)
        reply = b""
        sock.settimeout(2.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                return reply or b"RESET"
            if not chunk:
                break
            reply += chunk
        return reply


# ---------------------------------------------------------------- finding 7: what a signature covers
@pytest.mark.parametrize("header, value", [
    ("x-amz-copy-source", "SOURCE"),
    ("x-amz-meta-owner", "mallory"),
    ("x-amz-tagging", "class=public"),
    ("content-md5", None),
    ("content-type", "text/html"),
])
def test_header_added_after_signing_is_refused(gateway: GatewayServer, bucket_on, fault_case: FaultCase,  # type: ignore[no-untyped-def]
                                               header: str, value: str | None) -> None:
    bucket = bucket_on(gateway)
    c = gateway.client()
    c.put_object(Bucket=bucket, Key="secret", Body=b"private bytes")
    path = f"/{bucket}/target"
    body = b"what the signer meant"
    headers = sign_headers(gateway, "PUT", path, body)
    if value == "SOURCE":
        value = f"/{bucket}/secret"
    headers[header] = value if value is not None else base64.b64encode(hashlib.md5(body).digest()).decode()
    status, reply = send_raw(gateway, "PUT", path, headers, body)
    assert (status, _code(reply)) == (403, "AccessDenied")
    assert not _exists(gateway, bucket, "target")
    fault_case.record(f"unsigned {header}: 403 AccessDenied, nothing written")


def test_signature_for_another_region_is_refused(gateway: GatewayServer, bucket: str, fault_case: FaultCase) -> None:
    other = boto3.client("s3", endpoint_url=gateway.endpoint, aws_access_key_id=ACCESS_KEY,
                         aws_secret_access_key=SECRET_KEY, region_name="eu-west-1",
                         config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        other.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert _error(exc) == (400, "AuthorizationHeaderMalformed")
    assert "us-east-1" in exc.value.response["Error"]["Message"]
    url = boto3.client("s3", endpoint_url=gateway.endpoint, aws_access_key_id=ACCESS_KEY,
                       aws_secret_access_key=SECRET_KEY, region_name="eu-west-1",
                       config=botocore.config.Config(signature_version="s3v4", s3={"addressing_style": "path"}),
                       ).generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"})
    with pytest.raises(urllib.error.HTTPError) as http_exc:
        urllib.request.urlopen(url, timeout=10)
    assert (http_exc.value.code, _code(http_exc.value.read())) == (400, "AuthorizationQueryParametersError")
    assert not _exists(gateway, bucket, "k")
    fault_case.record("scope region eu-west-1: 400, nothing written")


def test_non_ascii_signature_is_403_not_500(gateway: GatewayServer, bucket: str, fault_case: FaultCase) -> None:
    path = f"/{bucket}/k"
    headers = sign_headers(gateway, "PUT", path, b"x")
    auth = headers["Authorization"]
    headers["Authorization"] = auth[: auth.index("Signature=") + len("Signature=")] + "\u00e9" * 64
    host = urlsplit(gateway.endpoint)
    request = (f"PUT {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
               + "Content-Length: 1\r\n\r\nx").encode("latin-1")
    reply = _raw_exchange(gateway, request)
    assert reply.startswith(b"HTTP/1.1 403"), reply[:200]
    assert b"<Code>SignatureDoesNotMatch</Code>" in reply
    assert host.hostname  # the gateway still answers others
    gateway.client().list_buckets()
    fault_case.record("Latin-1 signature: 403 SignatureDoesNotMatch")


# ---------------------------------------------------------------- SigV2
def test_sigv2_presigned_urls_as_boto3_makes_them(gateway: GatewayServer, bucket: str, fault_case: FaultCase) -> None:
    c = gateway.client()
    c.put_object(Bucket=bucket, Key="shared.bin", Body=b"weights")
    # boto3's default for a custom endpoint in us-east-1: query-string SigV2.
    v2 = boto3.client("s3", endpoint_url=gateway.endpoint, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                      config=botocore.config.Config(s3={"addressing_style": "path"}))
    url = v2.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared.bin"}, ExpiresIn=300)
    assert "AWSAccessKeyId=" in url and "Signature=" in url
    assert urllib.request.urlopen(url, timeout=10).read() == b"weights"
    put_url = v2.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "up.bin"}, ExpiresIn=300)
    urllib.request.urlopen(urllib.request.Request(put_url, data=b"uploaded", method="PUT",
                                                  headers={"Content-Type": ""}), timeout=10)
    assert c.get_object(Bucket=bucket, Key="up.bin")["Body"].read() == b"uploaded"
    # The signature covers the key, the method and the expiry.
    for bad in (url.replace("/shared.bin?", "/up.bin?"), url.replace("Expires=", "Expires=1")):
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(bad, timeout=10)
        assert (exc.value.code, _code(exc.value.read())) == (403, "SignatureDoesNotMatch")
    expired = v2.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared.bin"}, ExpiresIn=-10)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(expired, timeout=10)
    assert (exc.value.code, _code(exc.value.read())) == (403, "AccessDenied")
    fault_case.record("SigV2 presigned GET/PUT work; tampered or expired: 403")


def test_sigv2_header_auth(gateway: GatewayServer, bucket: str, fault_case: FaultCase) -> None:
    def client(secret: str):  # type: ignore[no-untyped-def]
        return boto3.client("s3", endpoint_url=gateway.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=secret, region_name="us-east-1",
                            config=botocore.config.Config(signature_version="s3", s3={"addressing_style": "path"},
                                                          retries={"max_attempts": 1}))
    v2 = client(SECRET_KEY)
    v2.put_object(Bucket=bucket, Key="dir/a b+c", Body=b"v2 body", Metadata={"who": "v2"}, ContentType="text/plain")
    got = v2.get_object(Bucket=bucket, Key="dir/a b+c")
    assert (got["Body"].read(), got["Metadata"], got["ContentType"]) == (b"v2 body", {"who": "v2"}, "text/plain")
    uid = v2.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    etag = v2.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=b"part")["ETag"]
    v2.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert [o["Key"] for o in v2.list_objects(Bucket=bucket)["Contents"]] == ["dir/a b+c", "mp"]
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        client("wrong-secret").put_object(Bucket=bucket, Key="forged", Body=b"x")
    assert _error(exc) == (403, "SignatureDoesNotMatch")
    assert not _exists(gateway, bucket, "forged")
    fault_case.record("SigV2 header auth works; wrong secret: 403")


# ---------------------------------------------------------------- finding 11: sub-resources
def _signed(gateway: GatewayServer, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    return send_raw(gateway, method, path, sign_headers(gateway, method, path, body, headers), body)


TAGGING = b'<Tagging><TagSet><Tag><Key>k</Key><Value>v</Value></Tag></TagSet></Tagging>'


@pytest.mark.parametrize("method, query, body", [
    ("DELETE", "tagging", b""),
    ("PUT", "tagging", TAGGING),
    ("GET", "tagging", b""),
    ("PUT", "versioning", b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>"),
    ("PUT", "acl", b""),
    ("GET", "uploadId=x", b""),
    ("POST", "", b"--form\r\n"),
])
def test_unimplemented_bucket_subresource_is_501(gateway: GatewayServer, bucket_on, fault_case: FaultCase,  # type: ignore[no-untyped-def]
                                                  method: str, query: str, body: bytes) -> None:
    bucket = bucket_on(gateway)
    status, reply = _signed(gateway, method, f"/{bucket}?{query}" if query else f"/{bucket}", body)
    assert (status, _code(reply)) == (501, "NotImplemented")
    gateway.client().head_bucket(Bucket=bucket)  # DELETE ?tagging did not delete it
    fresh = f"{bucket}-new"
    status, reply = _signed(gateway, method, f"/{fresh}?{query}" if query else f"/{fresh}", body)
    assert status == 501
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        gateway.client().head_bucket(Bucket=fresh)  # PUT ?versioning did not create one
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    fault_case.record(f"{method} bucket?{query or 'browser-form'}: 501, bucket unchanged")


@pytest.mark.parametrize("headers", [
    {"x-amz-server-side-encryption-customer-algorithm": "AES256",
     "x-amz-server-side-encryption-customer-key": base64.b64encode(b"k" * 32).decode(),
     "x-amz-server-side-encryption-customer-key-md5": base64.b64encode(hashlib.md5(b"k" * 32).digest()).decode()},
    {"x-amz-server-side-encryption": "aws:kms"},
    {"x-amz-object-lock-mode": "COMPLIANCE", "x-amz-object-lock-retain-until-date": "2099-01-01T00:00:00Z"},
], ids=["sse-c", "sse-kms", "object-lock"])
def test_encryption_and_locks_are_refused_not_ignored(gateway: GatewayServer, bucket: str, fault_case: FaultCase,
                                                      headers: dict[str, str]) -> None:
    status, reply = _signed(gateway, "PUT", f"/{bucket}/plain", b"would be stored in clear", headers)
    assert (status, _code(reply)) == (501, "NotImplemented")
    assert not _exists(gateway, bucket, "plain")
    status, reply = _signed(gateway, "POST", f"/{bucket}/plain?uploads", b"", headers)
    assert (status, _code(reply)) == (501, "NotImplemented")
    fault_case.record(f"{next(iter(headers))}: 501, nothing stored")


def test_bucket_with_object_lock_is_refused(gateway: GatewayServer, fault_case: FaultCase) -> None:
    c = gateway.client()
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.create_bucket(Bucket="locked-bucket", ObjectLockEnabledForBucket=True)
    assert _error(exc) == (501, "NotImplemented")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.head_bucket(Bucket="locked-bucket")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    fault_case.record("ObjectLockEnabledForBucket: 501, no bucket")


# ---------------------------------------------------------------- finding 10
def test_anonymous_response_overrides_are_refused(gateway: GatewayServer, fault_case: FaultCase) -> None:
    c = gateway.client()
    c.create_bucket(Bucket="public-read")
    try:
        c.put_object(Bucket="public-read", Key="page", Body=b"<script>alert(1)</script>")
        plain = f"{gateway.endpoint}/public-read/page"
        assert urllib.request.urlopen(plain, timeout=10).headers["Content-Type"] == "binary/octet-stream"
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(plain + "?response-content-type=text/html", timeout=10)
        assert (exc.value.code, _code(exc.value.read())) == (400, "InvalidRequest")
        # A signed request may still ask for overrides.
        url = presign_client(gateway).generate_presigned_url(
            "get_object", Params={"Bucket": "public-read", "Key": "page", "ResponseContentType": "text/plain"})
        assert urllib.request.urlopen(url, timeout=10).headers["Content-Type"] == "text/plain"
    finally:
        c.delete_object(Bucket="public-read", Key="page")
        c.delete_bucket(Bucket="public-read")
    fault_case.record("anonymous response-content-type: 400")


def test_control_characters_in_listing_queries_keep_xml_valid(gateway: GatewayServer, bucket: str,
                                                              fault_case: FaultCase) -> None:
    c = gateway.client()
    c.put_object(Bucket=bucket, Key="a", Body=b"x")
    for query in (f"list-type=2&prefix={quote(chr(1))}&delimiter={quote(chr(2))}",
                  f"prefix={quote(chr(0x1b))}&marker={quote(chr(7))}", f"uploads&prefix={quote(chr(1))}"):
        status, reply = _signed(gateway, "GET", f"/{bucket}?{query}")
        assert status == 200, reply
        ET.fromstring(reply)  # parses: control characters did not go out raw
    fault_case.record("control characters in prefix/marker: valid XML")


def test_multipart_listing_filters_then_pages(gateway: GatewayServer, bucket: str, fault_case: FaultCase) -> None:
    c = gateway.client()
    for key in ["a/1", "a/2", "a/3", "b/1", "a/4", "c"]:
        c.create_multipart_upload(Bucket=bucket, Key=key)
    seen, marker, pages = [], "", 0
    while True:
        page = c.list_multipart_uploads(Bucket=bucket, Prefix="a/", MaxUploads=3, KeyMarker=marker)
        seen += [u["Key"] for u in page.get("Uploads", [])]
        pages += 1
        if not page["IsTruncated"]:
            break
        marker = page["NextKeyMarker"]
        assert pages < 5
    assert (seen, pages) == (["a/1", "a/2", "a/3", "a/4"], 2)
    fault_case.record("ListMultipartUploads: prefix first, truncation reported")


# ---------------------------------------------------------------- finding 12: S3 semantics
def test_conditional_put(gateway: GatewayServer, bucket: str, fault_case: FaultCase) -> None:
    c = gateway.client()
    first = c.put_object(Bucket=bucket, Key="lock", Body=b"holder 1", IfNoneMatch="*")["ETag"]
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.put_object(Bucket=bucket, Key="lock", Body=b"holder 2", IfNoneMatch="*")
    assert _error(exc) == (412, "PreconditionFailed")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.put_object(Bucket=bucket, Key="lock", Body=b"stale writer", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert _error(exc) == (412, "PreconditionFailed")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.put_object(Bucket=bucket, Key="missing", Body=b"x", IfMatch=first)
    assert _error(exc) == (404, "NoSuchKey")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.put_object(Bucket=bucket, Key="lock", Body=b"x", IfNoneMatch=first)
    assert _error(exc) == (412, "PreconditionFailed")
    assert c.get_object(Bucket=bucket, Key="lock")["Body"].read() == b"holder 1"
    c.put_object(Bucket=bucket, Key="lock", Body=b"holder 3", IfMatch=first)
    assert c.get_object(Bucket=bucket, Key="lock")["Body"].read() == b"holder 3"
    fault_case.record("If-None-Match */ETag and If-Match honoured")


def test_create_only_writers_race(gateway: GatewayServer, bucket: str, fault_case: FaultCase) -> None:
    from concurrent.futures import ThreadPoolExecutor

    c = gateway.client()

    def create(i: int) -> str:
        try:
            c.put_object(Bucket=bucket, Key="once", Body=b"writer %d" % i, IfNoneMatch="*")
            return "won"
        except botocore.exceptions.ClientError as exc:
            return exc.response["Error"]["Code"]

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(create, range(32)))
    assert sorted(set(outcomes)) == ["PreconditionFailed", "won"]
    assert outcomes.count("won") == 1
    winner = outcomes.index("won")
    assert c.get_object(Bucket=bucket, Key="once")["Body"].read() == b"writer %d" % winner
    fault_case.record("32 create-only writers: exactly one wins")


def test_conditional_complete_and_copy(gateway: GatewayServer, bucket: str, fault_case: FaultCase) -> None:
    c = gateway.client()
    c.put_object(Bucket=bucket, Key="taken", Body=b"first")
    uid = c.create_multipart_upload(Bucket=bucket, Key="taken")["UploadId"]
    etag = c.upload_part(Bucket=bucket, Key="taken", UploadId=uid, PartNumber=1, Body=b"second")["ETag"]
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.complete_multipart_upload(Bucket=bucket, Key="taken", UploadId=uid, IfNoneMatch="*",
                                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert _error(exc) == (412, "PreconditionFailed")
    path = f"/{bucket}/taken"
    status, reply = _signed(gateway, "PUT", path, b"", {"x-amz-copy-source": f"/{bucket}/taken",
                                                         "x-amz-metadata-directive": "REPLACE", "if-none-match": "*"})
    assert (status, _code(reply)) == (412, "PreconditionFailed")
    assert c.get_object(Bucket=bucket, Key="taken")["Body"].read() == b"first"
    fault_case.record("If-None-Match on complete and copy: 412")


def test_repeated_completion_answers_200(gateway: GatewayServer, bucket: str, fault_case: FaultCase) -> None:
    c = gateway.client()
    uid = c.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    etag = c.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=b"only part")["ETag"]
    parts = {"Parts": [{"PartNumber": 1, "ETag": etag}]}
    first = c.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload=parts)
    again = c.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload=parts)
    assert again["ETag"] == first["ETag"]
    c.put_object(Bucket=bucket, Key="mp", Body=b"replaced")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload=parts)
    assert _error(exc) == (404, "NoSuchUpload")
    fault_case.record("repeated CompleteMultipartUpload: 200, same ETag")


def test_repeated_part_number_in_completion(gateway: GatewayServer, bucket: str, fault_case: FaultCase) -> None:
    c = gateway.client()
    uid = c.create_multipart_upload(Bucket=bucket, Key="dup")["UploadId"]
    etag = c.upload_part(Bucket=bucket, Key="dup", UploadId=uid, PartNumber=1, Body=b"once")["ETag"]
    c.complete_multipart_upload(Bucket=bucket, Key="dup", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": etag}, {"PartNumber": 1, "ETag": etag}]})
    assert c.get_object(Bucket=bucket, Key="dup")["Body"].read() == b"once"
    fault_case.record("part number listed twice: one part, 200")


def test_delete_bucket_with_open_uploads(gateway: GatewayServer, fault_case: FaultCase) -> None:
    c = gateway.client()
    c.create_bucket(Bucket="uploads-only")
    uid = c.create_multipart_upload(Bucket="uploads-only", Key="k")["UploadId"]
    c.upload_part(Bucket="uploads-only", Key="k", UploadId=uid, PartNumber=1, Body=b"orphaned part " * 1000)
    c.delete_bucket(Bucket="uploads-only")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.head_bucket(Bucket="uploads-only")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert gateway.data_dir is not None
    digest = hashlib.sha256(b"orphaned part " * 1000).hexdigest()
    assert not (gateway.data_dir / "store" / "chunks" / digest[:2] / digest).exists()
    fault_case.record("DeleteBucket with an open upload: 204, part freed")


def test_copy_source_key_with_question_mark(gateway: GatewayServer, bucket: str, fault_case: FaultCase) -> None:
    c = gateway.client()
    c.put_object(Bucket=bucket, Key="what?really", Body=b"odd name")
    c.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "what?really"})
    assert c.get_object(Bucket=bucket, Key="copy")["Body"].read() == b"odd name"
    status, reply = _signed(gateway, "PUT", f"/{bucket}/v", b"",
                            {"x-amz-copy-source": f"/{bucket}/copy?versionId=3HL4kqtJlcpXroDTDmJ"})
    assert (status, _code(reply)) == (501, "NotImplemented")
    fault_case.record("copy source with '?': copied; versionId: 501")


def test_part_copy_range_past_source_end(gateway: GatewayServer, bucket: str, fault_case: FaultCase) -> None:
    c = gateway.client()
    c.put_object(Bucket=bucket, Key="src", Body=b"0123456789")
    uid = c.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    for bad in ("bytes=0-10", "bytes=5-2", "bytes=-3", "bytes=20-30"):
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            c.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1,
                               CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange=bad)
        assert _error(exc) == (400, "InvalidArgument"), bad
    c.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1,
                       CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange="bytes=2-9")
    assert [p["Size"] for p in c.list_parts(Bucket=bucket, Key="dst", UploadId=uid)["Parts"]] == [8]
    fault_case.record("UploadPartCopy range past the end: 400")


def test_not_modified_carries_etag(gateway: GatewayServer, bucket: str, fault_case: FaultCase) -> None:
    c = gateway.client()
    etag = c.put_object(Bucket=bucket, Key="k", Body=b"cached")["ETag"]
    path = f"/{bucket}/k"
    headers = sign_headers(gateway, "GET", path, b"", {"if-none-match": etag})
    host = urlsplit(gateway.endpoint)
    import http.client

    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        assert (resp.status, resp.getheader("etag")) == (304, etag)
        assert resp.getheader("last-modified") is not None
    finally:
        conn.close()
    fault_case.record("304 carries ETag and Last-Modified")


def test_listing_edge_cases(gateway: GatewayServer, bucket: str, fault_case: FaultCase) -> None:
    c = gateway.client()
    for key in ["a b/1", "a b/2", "top"]:
        c.put_object(Bucket=bucket, Key=key, Body=b"x")
    zero = c.list_objects(Bucket=bucket, Delimiter="/", MaxKeys=0)
    assert (zero["IsTruncated"], zero.get("Contents"), zero.get("CommonPrefixes")) == (False, None, None)
    zero2 = c.list_objects_v2(Bucket=bucket, Delimiter="/", MaxKeys=0)
    assert (zero2["IsTruncated"], zero2["KeyCount"]) == (False, 0)
    assert all("Owner" not in o for o in c.list_objects_v2(Bucket=bucket)["Contents"])
    assert all(o["Owner"]["ID"] for o in c.list_objects_v2(Bucket=bucket, FetchOwner=True)["Contents"])
    # botocore always asks V1 listings for encoding-type=url and leaves Prefix as sent.
    assert c.list_objects(Bucket=bucket, Prefix="a b/")["Prefix"] == "a b/"
    assert [o["Key"] for o in c.list_objects(Bucket=bucket, Prefix="a b/")["Contents"]] == ["a b/1", "a b/2"]
    fault_case.record("max-keys=0, fetch-owner, V1 Prefix: as S3")


def test_digest_and_expiry_error_codes(gateway: GatewayServer, bucket: str, fault_case: FaultCase) -> None:
    short_md5 = base64.b64encode(b"not sixteen").decode()
    status, reply = _signed(gateway, "PUT", f"/{bucket}/k", b"body", {"content-md5": short_md5})
    assert (status, _code(reply)) == (400, "InvalidDigest")
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    status, reply = _signed(gateway, "PUT", f"/{bucket}/k", b"body", {"content-md5": wrong_md5})
    assert (status, _code(reply)) == (400, "BadDigest")
    url = presign_client(gateway).generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"})
    too_long = url.replace("X-Amz-Expires=3600", "X-Amz-Expires=604801")
    assert too_long != url
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(too_long, timeout=10)
    assert (exc.value.code, _code(exc.value.read())) == (403, "AccessDenied")
    fault_case.record("short Content-MD5: InvalidDigest; 8-day expiry: 403")


# ---------------------------------------------------------------- HTTP framing abuse
def test_empty_content_length_gets_an_answer(gateway: GatewayServer, bucket: str, fault_case: FaultCase) -> None:
    reply = _raw_exchange(gateway, f"PUT /{bucket}/k HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 400"), reply[:100]
    assert not _exists(gateway, bucket, "k")
    fault_case.record("empty Content-Length: 400")


@pytest.mark.parametrize("framing", [
    "Content-Length: 4\r\nTransfer-Encoding: chunked",
    "Transfer-Encoding: chunked\r\nContent-Length: 4",
    "Content-Length: 4\r\nContent-Length: 200",
    "Transfer-Encoding: chunked, identity",
    "Transfer-Encoding: xchunked\r\nContent-Length: 4",
], ids=["cl-te", "te-cl", "cl-cl", "te-identity", "te-bogus"])
def test_request_smuggling_is_refused(gateway: GatewayServer, bucket: str, fault_case: FaultCase, framing: str) -> None:
    c = gateway.client()
    c.put_object(Bucket=bucket, Key="victim", Body=b"must survive")
    smuggled_path = f"/{bucket}/victim"
    smuggled_headers = sign_headers(gateway, "DELETE", smuggled_path)
    smuggled = (f"DELETE {smuggled_path} HTTP/1.1\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in smuggled_headers.items()) + "\r\n")
    body = f"0\r\n\r\n{smuggled}".encode()
    front = f"GET /{bucket}/victim HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n".encode()
    reply = _raw_exchange(gateway, front + body)
    # The first request is refused and the connection closed: the second never runs.
    assert b"HTTP/1.1 204" not in reply
    # 400 from the gateway; 501 from the HTTP layer for a coding it does not know.
    assert reply.startswith((b"HTTP/1.1 400", b"HTTP/1.1 501")) or reply == b"RESET", reply[:100]
    assert reply.count(b"HTTP/1.1 ") <= 1, reply
    assert c.get_object(Bucket=bucket, Key="victim")["Body"].read() == b"must survive"
    outcome = f"{reply[9:12].decode()} and close" if reply.startswith(b"HTTP/1.1") else "connection reset"
    fault_case.record(f"{framing.replace(chr(13) + chr(10), ' + ')}: {outcome}, no second request")
