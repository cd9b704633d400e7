"""S3 behaviour shared by the gateway and SeaweedFS: one test body, two real servers."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime, timedelta

import botocore.exceptions
import pytest

from tests.gateway.clients import presign_client
from tests.servers import S3Server

pytestmark = pytest.mark.s3


def error_code(exc: pytest.ExceptionInfo) -> str:
    return exc.value.response["Error"]["Code"]


def status(exc: pytest.ExceptionInfo) -> int:
    return exc.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_put_get_head_delete(s3_backend: S3Server, bucket: str) -> None:
    c = s3_backend.client()
    data = os.urandom(100_000)
    put = c.put_object(Bucket=bucket, Key="dir/file.bin", Body=data, ContentType="application/x-test",
                       Metadata={"origin": "unit-test", "n": "1"})
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    got = c.get_object(Bucket=bucket, Key="dir/file.bin")
    assert got["Body"].read() == data
    assert got["ContentType"] == "application/x-test"
    assert got["Metadata"] == {"origin": "unit-test", "n": "1"}
    assert got["ETag"] == put["ETag"]
    head = c.head_object(Bucket=bucket, Key="dir/file.bin")
    assert head["ContentLength"] == len(data)
    assert head["Metadata"]["origin"] == "unit-test"
    c.delete_object(Bucket=bucket, Key="dir/file.bin")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.get_object(Bucket=bucket, Key="dir/file.bin")
    assert error_code(exc) == "NoSuchKey"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.head_object(Bucket=bucket, Key="dir/file.bin")
    assert status(exc) == 404
    c.delete_object(Bucket=bucket, Key="never-existed")  # S3 deletes are idempotent


def test_empty_object_and_overwrite(s3_backend: S3Server, bucket: str) -> None:
    c = s3_backend.client()
    c.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert c.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""
    c.put_object(Bucket=bucket, Key="empty", Body=b"now full")
    assert c.get_object(Bucket=bucket, Key="empty")["Body"].read() == b"now full"


def test_ranged_get(s3_backend: S3Server, bucket: str) -> None:
    c = s3_backend.client()
    data = bytes(range(256)) * 40
    c.put_object(Bucket=bucket, Key="r", Body=data)
    for header, want in [("bytes=0-9", data[:10]), ("bytes=100-", data[100:]), ("bytes=-7", data[-7:]),
                         ("bytes=10000-20000", data[10000:]), ("bytes=5-5", data[5:6])]:
        got = c.get_object(Bucket=bucket, Key="r", Range=header)
        assert got["Body"].read() == want, header
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["ContentRange"].endswith(f"/{len(data)}")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.get_object(Bucket=bucket, Key="r", Range=f"bytes={len(data)}-")
    assert status(exc) == 416
    assert error_code(exc) == "InvalidRange"


def test_conditional_requests(s3_backend: S3Server, bucket: str) -> None:
    c = s3_backend.client()
    etag = c.put_object(Bucket=bucket, Key="c", Body=b"conditional")["ETag"]
    assert c.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"conditional"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.get_object(Bucket=bucket, Key="c", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert status(exc) == 412
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert status(exc) == 304
    assert c.get_object(Bucket=bucket, Key="c", IfNoneMatch='"other"')["Body"].read() == b"conditional"
    future = datetime.now(UTC) + timedelta(days=1)
    past = datetime.now(UTC) - timedelta(days=1)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.get_object(Bucket=bucket, Key="c", IfModifiedSince=future)
    assert status(exc) == 304
    assert c.get_object(Bucket=bucket, Key="c", IfModifiedSince=past)["Body"].read() == b"conditional"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.get_object(Bucket=bucket, Key="c", IfUnmodifiedSince=past)
    assert status(exc) == 412


def test_list_objects_v2(s3_backend: S3Server, bucket: str) -> None:
    c = s3_backend.client()
    keys = [f"data/{i:03d}.bin" for i in range(25)] + ["data/sub/a", "data/sub/b", "other/x", "top"]
    for key in keys:
        c.put_object(Bucket=bucket, Key=key, Body=key.encode())
    everything = [o["Key"] for p in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 7}) for o in p.get("Contents", [])]
    assert everything == sorted(keys)
    page = c.list_objects_v2(Bucket=bucket, Prefix="data/", Delimiter="/", MaxKeys=10)
    assert [o["Key"] for o in page["Contents"]] == [f"data/{i:03d}.bin" for i in range(10)]
    assert page["IsTruncated"]
    seen = [o["Key"] for o in page["Contents"]]
    prefixes = []
    while page["IsTruncated"]:
        page = c.list_objects_v2(Bucket=bucket, Prefix="data/", Delimiter="/", MaxKeys=10,
                                 ContinuationToken=page["NextContinuationToken"])
        seen += [o["Key"] for o in page.get("Contents", [])]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert seen == [f"data/{i:03d}.bin" for i in range(25)]
    assert prefixes == ["data/sub/"]
    root = c.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in root["CommonPrefixes"]] == ["data/", "other/"]
    assert [o["Key"] for o in root["Contents"]] == ["top"]
    after = c.list_objects_v2(Bucket=bucket, StartAfter="data/sub/a")
    assert [o["Key"] for o in after["Contents"]] == ["data/sub/b", "other/x", "top"]
    assert c.list_objects_v2(Bucket=bucket, Prefix="nothing/")["KeyCount"] == 0


def test_list_objects_v1(s3_backend: S3Server, bucket: str) -> None:
    c = s3_backend.client()
    keys = [f"k{i:02d}" for i in range(12)]
    for key in keys:
        c.put_object(Bucket=bucket, Key=key, Body=b"x")
    first = c.list_objects(Bucket=bucket, MaxKeys=5)
    assert [o["Key"] for o in first["Contents"]] == keys[:5]
    assert first["IsTruncated"]
    rest = c.list_objects(Bucket=bucket, Marker="k04")
    assert [o["Key"] for o in rest["Contents"]] == keys[5:]
    assert not rest["IsTruncated"]


def test_special_characters_in_keys(s3_backend: S3Server, bucket: str) -> None:
    c = s3_backend.client()
    keys = ["spaces in name.txt", "plus+sign", "ümlaut/ß.bin", "percent%20literal", "q?uestion&amp=1", "tilde~star*"]
    for key in keys:
        c.put_object(Bucket=bucket, Key=key, Body=key.encode())
    for key in keys:
        assert c.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()
    listed = [o["Key"] for o in c.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(listed) == sorted(keys)


def test_copy_object(s3_backend: S3Server, bucket: str) -> None:
    c = s3_backend.client()
    c.put_object(Bucket=bucket, Key="src", Body=b"copy me", Metadata={"a": "1"}, ContentType="text/plain")
    c.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    got = c.get_object(Bucket=bucket, Key="dst")
    assert got["Body"].read() == b"copy me"
    assert got["Metadata"] == {"a": "1"}
    c.copy_object(Bucket=bucket, Key="dst2", CopySource={"Bucket": bucket, "Key": "src"},
                  MetadataDirective="REPLACE", Metadata={"b": "2"}, ContentType="text/x-new")
    got = c.get_object(Bucket=bucket, Key="dst2")
    assert got["Metadata"] == {"b": "2"}
    assert got["ContentType"] == "text/x-new"
    c.delete_object(Bucket=bucket, Key="src")
    assert c.get_object(Bucket=bucket, Key="dst")["Body"].read() == b"copy me"


def test_multipart_upload(s3_backend: S3Server, bucket: str) -> None:
    c = s3_backend.client()
    parts_data = [os.urandom(5 * 1024 * 1024), os.urandom(5 * 1024 * 1024), os.urandom(1234)]
    upload = c.create_multipart_upload(Bucket=bucket, Key="mp", ContentType="application/x-mp",
                                       Metadata={"kind": "multipart"})
    uid = upload["UploadId"]
    etags = []
    for n, data in enumerate(parts_data, start=1):
        etags.append(c.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=n, Body=data)["ETag"])
    listed = c.list_parts(Bucket=bucket, Key="mp", UploadId=uid)
    assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2, 3]
    assert [p["Size"] for p in listed["Parts"]] == [len(d) for d in parts_data]
    done = c.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]})
    want_etag = hashlib.md5(b"".join(hashlib.md5(d).digest() for d in parts_data)).hexdigest() + "-3"
    assert done["ETag"] == f'"{want_etag}"'
    got = c.get_object(Bucket=bucket, Key="mp")
    assert got["Body"].read() == b"".join(parts_data)
    assert got["ETag"] == f'"{want_etag}"'
    assert got["Metadata"] == {"kind": "multipart"}
    tail = c.get_object(Bucket=bucket, Key="mp", Range="bytes=-2000")["Body"].read()
    assert tail == b"".join(parts_data)[-2000:]


def test_multipart_abort_and_errors(s3_backend: S3Server, bucket: str) -> None:
    c = s3_backend.client()
    uid = c.create_multipart_upload(Bucket=bucket, Key="gone")["UploadId"]
    c.upload_part(Bucket=bucket, Key="gone", UploadId=uid, PartNumber=1, Body=b"x" * 1000)
    c.abort_multipart_upload(Bucket=bucket, Key="gone", UploadId=uid)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.upload_part(Bucket=bucket, Key="gone", UploadId=uid, PartNumber=2, Body=b"y")
    assert error_code(exc) == "NoSuchUpload"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.get_object(Bucket=bucket, Key="gone")
    assert error_code(exc) == "NoSuchKey"


def test_tagging(s3_backend: S3Server, bucket: str) -> None:
    c = s3_backend.client()
    c.put_object(Bucket=bucket, Key="t", Body=b"tagged", Tagging="stage=prod&team=ml")
    tags = {t["Key"]: t["Value"] for t in c.get_object_tagging(Bucket=bucket, Key="t")["TagSet"]}
    assert tags == {"stage": "prod", "team": "ml"}
    c.put_object_tagging(Bucket=bucket, Key="t", Tagging={"TagSet": [{"Key": "stage", "Value": "dev"}]})
    tags = {t["Key"]: t["Value"] for t in c.get_object_tagging(Bucket=bucket, Key="t")["TagSet"]}
    assert tags == {"stage": "dev"}
    c.delete_object_tagging(Bucket=bucket, Key="t")
    assert c.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == []


def test_delete_objects(s3_backend: S3Server, bucket: str) -> None:
    c = s3_backend.client()
    for i in range(5):
        c.put_object(Bucket=bucket, Key=f"d{i}", Body=b"x")
    result = c.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": f"d{i}"} for i in range(4)]})
    assert sorted(d["Key"] for d in result["Deleted"]) == [f"d{i}" for i in range(4)]
    assert [o["Key"] for o in c.list_objects_v2(Bucket=bucket)["Contents"]] == ["d4"]


def test_bucket_operations(s3_backend: S3Server, bucket_on) -> None:  # type: ignore[no-untyped-def]
    c = s3_backend.client()
    name = f"bk-ops-{int(time.time() * 1000) % 10**9}"
    c.create_bucket(Bucket=name)
    c.head_bucket(Bucket=name)
    if s3_backend.name == "gateway":  # SeaweedFS lists only buckets with an owner record
        assert name in [b["Name"] for b in c.list_buckets()["Buckets"]]
    if s3_backend.name == "gateway":  # SeaweedFS deletes non-empty buckets
        c.put_object(Bucket=name, Key="k", Body=b"x")
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            c.delete_bucket(Bucket=name)
        assert error_code(exc) == "BucketNotEmpty"
        c.delete_object(Bucket=name, Key="k")
    c.delete_bucket(Bucket=name)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.head_bucket(Bucket=name)
    assert status(exc) == 404
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.put_object(Bucket=name, Key="k", Body=b"x")
    # SeaweedFS answers AccessDenied here; S3 (and the gateway) say NoSuchBucket.
    assert error_code(exc) == ("NoSuchBucket" if s3_backend.name == "gateway" else "AccessDenied")


def test_presigned_get_and_put(s3_backend: S3Server, bucket: str) -> None:
    import urllib.request

    c = presign_client(s3_backend)
    put_url = c.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "p"}, ExpiresIn=300)
    req = urllib.request.Request(put_url, data=b"presigned body", method="PUT")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    get_url = c.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p"}, ExpiresIn=300)
    with urllib.request.urlopen(get_url, timeout=10) as resp:
        assert resp.read() == b"presigned body"


def test_upload_part_copy(s3_backend: S3Server, bucket: str) -> None:
    c = s3_backend.client()
    src = os.urandom(6 * 1024 * 1024)
    c.put_object(Bucket=bucket, Key="src", Body=src)
    uid = c.create_multipart_upload(Bucket=bucket, Key="assembled")["UploadId"]
    first = c.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=uid, PartNumber=1,
                               CopySource={"Bucket": bucket, "Key": "src"})["CopyPartResult"]["ETag"]
    second = c.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=uid, PartNumber=2,
                                CopySource={"Bucket": bucket, "Key": "src"},
                                CopySourceRange="bytes=100-199")["CopyPartResult"]["ETag"]
    c.complete_multipart_upload(Bucket=bucket, Key="assembled", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": first}, {"PartNumber": 2, "ETag": second}]})
    assert c.get_object(Bucket=bucket, Key="assembled")["Body"].read() == src + src[100:200]
