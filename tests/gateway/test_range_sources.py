"""The mount's two S3 sources against real servers (the gateway and SeaweedFS).

`SigV4Client` signs requests itself; every case here is also run through
`BotocoreSource` so the two are held to the same answers.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import pytest

from mlfs.s3.client import S3Settings
from mlfs.s3.source import RangeSource, S3Answered, S3Unreachable, direct_settings, open_source
from tests.servers import ACCESS_KEY, SECRET_KEY, S3Server, s3_env

# Keys whose canonical URI differs from the plain text: spaces, reserved and non-ASCII.
KEYS = ["plain.bin", "dir/with space/a+b=c~d.bin", "odd%25&$@!'()*,;.bin", "ünï/cödé.bin"]
DATA = os.urandom(300_000)


def source_for(server: S3Server, kind: str, secret: str = SECRET_KEY) -> RangeSource:
    env = dict(s3_env(server.endpoint), AWS_SECRET_ACCESS_KEY=secret)
    if kind == "botocore":
        env["MLFS_S3_CLIENT"] = "botocore"
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        source = open_source(S3Settings(own_retries=True, connect_timeout=2, read_timeout=10))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert type(source).__name__ == ("SigV4Client" if kind == "sigv4" else "BotocoreSource")
    return source


@pytest.fixture(params=["sigv4", "botocore"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def read_all(source: RangeSource, bucket: str, key: str, start: int, end: int,
             etag: str | None = None) -> tuple[bytes, str | None]:
    body, content_range = source.get_range(bucket, key, start, end, etag)
    try:
        buf = bytearray(end - start + 1)
        got = body.readinto(memoryview(buf))
    finally:
        body.close()
    return bytes(buf[:got]), content_range


def test_ranges_of_awkward_keys(s3_backend: S3Server, bucket: str, kind: str) -> None:
    client = s3_backend.client()
    for key in KEYS:
        client.put_object(Bucket=bucket, Key=key, Body=DATA)
    source = source_for(s3_backend, kind)
    try:
        for key in KEYS:
            etag = client.head_object(Bucket=bucket, Key=key)["ETag"]
            data, content_range = read_all(source, bucket, key, 1000, 70_000, etag)
            assert data == DATA[1000:70_000], key
            assert content_range == f"bytes 1000-69999/{len(DATA)}", key
            source.head_object(bucket, key)
        source.head_bucket(bucket)
    finally:
        source.close()


def test_a_connection_reused_after_a_body_left_unread_serves_the_right_bytes(
        s3_backend: S3Server, bucket: str, kind: str) -> None:
    s3_backend.client().put_object(Bucket=bucket, Key="k", Body=DATA)
    source = source_for(s3_backend, kind)
    try:
        for i in range(20):
            body, _ = source.get_range(bucket, "k", 0, len(DATA), None)
            if i % 2:
                body.close()  # unread: its connection must not carry the rest into the next reply
                continue
            buf = bytearray(len(DATA) + 1)
            assert body.readinto(memoryview(buf)) == len(DATA)
            body.close()
            assert bytes(buf[: len(DATA)]) == DATA
            assert read_all(source, bucket, "k", 5, 9)[0] == DATA[5:9]
    finally:
        source.close()


@pytest.mark.parametrize("case", ["missing key", "missing bucket", "wrong etag"])
def test_error_answers(s3_backend: S3Server, bucket: str, kind: str, case: str) -> None:
    s3_backend.client().put_object(Bucket=bucket, Key="k", Body=DATA)
    source = source_for(s3_backend, kind)
    calls: dict[str, tuple[Callable[[], object], int, set[str]]] = {
        "missing key": (lambda: source.head_object(bucket, "nope"), 404, {"404", "NoSuchKey"}),
        "missing bucket": (lambda: source.head_bucket("no-such-bucket-here"), 404, {"404", "NoSuchBucket"}),
        "wrong etag": (lambda: read_all(source, bucket, "k", 0, 10, '"0123456789abcdef0123456789abcdef"'),
                       412, {"PreconditionFailed", "412"}),
    }
    call, status, codes = calls[case]
    try:
        with pytest.raises(S3Answered) as err:
            call()
        assert err.value.status == status and err.value.code in codes, (err.value.status, err.value.code)
        # The connection that carried the error answer still serves the next request.
        assert read_all(source, bucket, "k", 0, 10)[0] == DATA[:10]
    finally:
        source.close()


def test_a_wrong_secret_is_refused(gateway: S3Server, bucket_on, kind: str) -> None:  # type: ignore[no-untyped-def]
    # The gateway checks signatures (the test SeaweedFS runs without identities).
    bucket = bucket_on(gateway)
    gateway.client().put_object(Bucket=bucket, Key="k", Body=DATA)
    source = source_for(gateway, kind, secret="not-the-secret")
    try:
        with pytest.raises(S3Answered) as err:
            read_all(source, bucket, "k", 0, 10)
        assert (err.value.status, err.value.code) == (403, "SignatureDoesNotMatch")
    finally:
        source.close()


def test_nothing_listening_is_unreachable(kind: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        fake = S3Server(endpoint=f"http://127.0.0.1:{port}", process=None)  # type: ignore[arg-type]
        source = source_for(fake, kind)
        try:
            with pytest.raises(S3Unreachable):
                source.head_object("b", "k")
        finally:
            source.close()


ENDPOINT = "http://127.0.0.1:9"
KEYS_ENV = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_CONFIG_FILE": "/nonexistent/mlfs-test-config"}


@pytest.mark.parametrize(("env", "settings", "region"), [
    ({**KEYS_ENV, "AWS_ENDPOINT_URL": ENDPOINT, "AWS_REGION": "eu-west-1"}, S3Settings(), "eu-west-1"),
    ({**KEYS_ENV, "AWS_ENDPOINT_URL_S3": ENDPOINT}, S3Settings(), "us-east-1"),  # no region, no config file
    ({**KEYS_ENV}, S3Settings(endpoint_url=ENDPOINT, region="r1"), "r1"),
    # botocore's choice: AWS's own endpoints, a profile, no keys, keys elsewhere, a config file
    ({**KEYS_ENV, "AWS_REGION": "us-east-1"}, S3Settings(), None),
    ({**KEYS_ENV, "AWS_ENDPOINT_URL": ENDPOINT, "AWS_PROFILE": "p"}, S3Settings(), None),
    ({**KEYS_ENV, "AWS_ENDPOINT_URL": ENDPOINT}, S3Settings(profile="p"), None),
    ({"AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL": ENDPOINT}, S3Settings(), None),
    ({**KEYS_ENV, "AWS_ENDPOINT_URL": ENDPOINT, "AWS_CONFIG_FILE": __file__}, S3Settings(), None),
    ({**KEYS_ENV, "AWS_ENDPOINT_URL": ENDPOINT, "MLFS_S3_CLIENT": "botocore"}, S3Settings(), None),
    ({**KEYS_ENV, "AWS_ENDPOINT_URL": ENDPOINT, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}, S3Settings(), None),
])
def test_when_the_direct_client_is_chosen(env: dict[str, str], settings: S3Settings, region: str | None) -> None:
    chosen = direct_settings(settings, env)
    if region is None:
        assert chosen is None
    else:
        assert chosen is not None and (chosen["endpoint"], chosen["region"]) == (ENDPOINT, region)
