"""A minimal S3 client of the three requests a mount makes, signed with SigV4.

GET with a Range, HEAD of an object, HEAD of a bucket: path-style URLs on an explicit
endpoint, static keys, `http.client` connections kept alive in a small pool. It
exists for start-up (see `mlfs.s3.source`); its per-request cost is also lower than
botocore's, which runs an event system around every call.

Signing follows the SigV4 specification for S3: the canonical request covers the
method, the URI-encoded path, no query, the host, `x-amz-content-sha256` (the empty
payload's digest), `x-amz-date` and the session token when there is one. Range and
If-Match are sent unsigned, as S3 allows for headers outside `x-amz-*`.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import re
import threading
import time
from urllib.parse import quote, urlsplit

from mlfs.s3.source import S3Answered, S3Unreachable, fill

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_ERROR_BODY_MAX = 64 * 1024
_CODE = re.compile(rb"<Code>([^<]{1,128})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{0,512})</Message>")
# What a connection kept alive may fail with when the server closed it meanwhile:
# the request is sent again once, on a new connection.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class SigV4Client:
    kind = "sigv4"

    def __init__(self, endpoint: str, region: str, access_key: str, secret_key: str, token: str | None = None,
                 connect_timeout: float = 10.0, read_timeout: float = 30.0, ca_bundle: str | None = None,
                 max_pool: int = 16) -> None:
        parts = urlsplit(endpoint)
        self.endpoint = endpoint
        self._https = parts.scheme == "https"
        self._netloc = parts.netloc
        self._host = parts.hostname or ""
        self._port = parts.port
        # The Host header as botocore sends it: the port only when it is not the default.
        default = 443 if self._https else 80
        self._host_header = self._host if self._port in (None, default) else f"{self._host}:{self._port}"
        if ":" in self._host:  # an IPv6 literal keeps its brackets in Host
            self._host_header = f"[{self._host}]" + ("" if self._port in (None, default) else f":{self._port}")
        self._base = parts.path.rstrip("/")
        self._region, self._access_key, self._token = region, access_key, token
        self._secret = secret_key
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._ca_bundle = ca_bundle
        self._ssl = None
        self._max_idle = max(1, max_pool)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._keys: dict[str, bytes] = {}  # signing key per date

    # ------------------------------------------------------------------ requests
    def get_range(self, bucket: str, key: str, start: int, end: int,
                  etag: str | None) -> tuple[_Body, str | None]:
        extra = {"Range": f"bytes={start}-{end - 1}"}
        if etag:
            extra["If-Match"] = etag
        conn, resp = self._request("GET", bucket, key, extra)
        if resp.status not in (200, 206):
            self._fail(conn, resp)
        return _Body(self, conn, resp), resp.getheader("Content-Range")

    def head_object(self, bucket: str, key: str) -> None:
        self._head(bucket, key)

    def head_bucket(self, bucket: str) -> None:
        self._head(bucket, "")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _head(self, bucket: str, key: str) -> None:
        conn, resp = self._request("HEAD", bucket, key, {})
        if resp.status >= 300:
            self._fail(conn, resp)
        resp.read()
        self._release(conn, resp)

    def _request(self, method: str, bucket: str, key: str,
                 extra: dict[str, str]) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        path = f"{self._base}/{quote(bucket, safe='')}" + (f"/{quote(key, safe='/~')}" if key else "")
        for attempt in (0, 1):
            conn, reused = self._connection()
            try:
                conn.request(method, path, headers={**self._signed_headers(method, path), **extra})
                return conn, conn.getresponse()
            except _STALE as exc:
                conn.close()
                if not reused or attempt:
                    raise S3Unreachable(str(exc) or type(exc).__name__) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise S3Unreachable(str(exc) or type(exc).__name__) from None
        raise AssertionError("unreachable")

    def _fail(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        """Raise S3Answered for an error reply (its code from the XML body, when it has one)."""
        try:
            body = resp.read(_ERROR_BODY_MAX) if resp.length is None or resp.length <= _ERROR_BODY_MAX else b""
        except (OSError, http.client.HTTPException):
            body = b""
        self._release(conn, resp)
        code = _CODE.search(body)
        message = _MESSAGE.search(body)
        raise S3Answered(resp.status, code.group(1).decode(errors="replace") if code else str(resp.status),
                         message.group(1).decode(errors="replace") if message else resp.reason)

    # --------------------------------------------------------------- connections
    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        if self._https:
            if self._ssl is None:
                import ssl

                self._ssl = ssl.create_default_context(cafile=self._ca_bundle)
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._connect_timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise S3Unreachable(str(exc) or type(exc).__name__) from None
        if conn.sock is not None:
            conn.sock.settimeout(self._read_timeout)
        return conn, False

    def _release(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        """Keep the connection for the next request if its reply was read to the end."""
        if resp.isclosed() and not resp.will_close:
            with self._lock:
                if len(self._idle) < self._max_idle:
                    self._idle.append(conn)
                    return
        conn.close()

    # ------------------------------------------------------------------- signing
    def _signed_headers(self, method: str, path: str) -> dict[str, str]:
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        date = amz_date[:8]
        headers = {"host": self._host_header, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": amz_date}
        if self._token:
            headers["x-amz-security-token"] = self._token
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join([method, path or "/", "", "".join(f"{n}:{headers[n]}\n" for n in names),
                               signed, EMPTY_SHA256])
        scope = f"{date}/{self._region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self._signing_key(date), to_sign.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={self._access_key}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={signature}")
        headers["Host"] = headers.pop("host")  # http.client then adds no Host of its own
        return headers

    def _signing_key(self, date: str) -> bytes:
        key = self._keys.get(date)
        if key is None:
            key = ("AWS4" + self._secret).encode()
            for part in (date, self._region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = {date: key}  # one date at a time: the old one is never needed again
        return key


class _Body:
    """A GET's body: read into buffers; its connection goes back to the pool when read to the end."""

    def __init__(self, client: SigV4Client, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self._client, self._conn, self._resp = client, conn, resp

    def readinto(self, buffer: memoryview) -> int:
        try:
            return fill(self._resp.readinto, buffer)
        except (OSError, http.client.HTTPException) as exc:
            raise S3Unreachable(f"body broke off: {exc or type(exc).__name__}") from None

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            if self._resp.isclosed():
                self._client._release(conn, self._resp)
            else:
                # Unread bytes would be taken for the next reply: the connection goes.
                self._resp.close()
                conn.close()
