"""`aws-chunked` request bodies: decode incrementally, check every signature and checksum.

Wire format (each chunk): `<hex size>[;chunk-signature=<sig>]\\r\\n<data>\\r\\n`, ending
with a zero-size chunk, optional trailer lines (`x-amz-checksum-crc32:...`,
`x-amz-trailer-signature:...`) and an empty line. A signed chunk's signature chains from
the previous one (the seed is the request signature), so chunks can be neither altered,
dropped nor reordered. Data is handed on as it arrives; a bad signature fails the whole
upload before anything is committed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import zlib
from typing import Any

from mlfs.gateway.errors import S3Error
from mlfs.gateway.sigv4 import EMPTY_SHA256, Signer

_MAX_LINE = 4096
_MAX_TRAILER_LINES = 16


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


# Trailer checksums we can verify; others (crc32c, crc64nvme need native code) are
# accepted without checking, like any unsigned header checksum.
_CHECKSUMS = {
    "x-amz-checksum-crc32": _Crc32,
    "x-amz-checksum-sha1": hashlib.sha1,
    "x-amz-checksum-sha256": hashlib.sha256,
}


class AwsChunkedDecoder:
    def __init__(self, signer: Signer | None, trailer_name: str | None) -> None:
        self._signer = signer
        self._previous = signer.seed_signature if signer else ""
        self._buf = bytearray()
        self._state = "size"
        self._remaining = 0
        self._chunk_sig: str | None = None
        self._chunk_hash: Any = None
        self._trailers: list[tuple[str, str]] = []
        self._trailer_name = trailer_name.lower() if trailer_name else None
        checksum = _CHECKSUMS.get(self._trailer_name or "")
        self._checksum = checksum() if checksum else None

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> list[bytes]:
        """Decoded payload bytes contained in `data` (possibly none)."""
        if self._state == "done":
            if data:
                raise S3Error("IncompleteBody", "Data after the final aws-chunked chunk.")
            return []
        self._buf += data
        out: list[bytes] = []
        while self._buf and self._state != "done":
            if self._state == "size":
                line = self._line()
                if line is None:
                    break
                self._start_chunk(line)
            elif self._state == "data":
                piece = bytes(self._buf[: self._remaining])
                del self._buf[: len(piece)]
                self._remaining -= len(piece)
                if self._chunk_hash is not None:
                    self._chunk_hash.update(piece)
                if self._checksum is not None:
                    self._checksum.update(piece)
                out.append(piece)
                if self._remaining == 0:
                    self._state = "crlf"
            elif self._state == "crlf":
                if len(self._buf) < 2:
                    break
                if self._buf[:2] != b"\r\n":
                    raise S3Error("IncompleteBody", "Malformed aws-chunked body.")
                del self._buf[:2]
                self._end_chunk()
                self._state = "size"
            elif self._state == "trailer":
                line = self._line()
                if line is None:
                    break
                if line == "":
                    self._finish_trailers()
                    self._state = "done"
                else:
                    if len(self._trailers) >= _MAX_TRAILER_LINES:
                        raise S3Error("InvalidRequest", "Too many aws-chunked trailers.")
                    name, sep, value = line.partition(":")
                    if not sep:
                        raise S3Error("InvalidRequest", "Malformed aws-chunked trailer.")
                    self._trailers.append((name.strip().lower(), value.strip()))
        if self._state == "done" and self._buf:
            raise S3Error("IncompleteBody", "Data after the final aws-chunked chunk.")
        return out

    def _line(self) -> str | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > _MAX_LINE:
                raise S3Error("InvalidRequest", "aws-chunked header line too long.")
            return None
        line = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 2]
        return line

    def _start_chunk(self, line: str) -> None:
        size_text, _, ext = line.partition(";")
        try:
            size = int(size_text, 16)
        except ValueError:
            raise S3Error("InvalidRequest", "Malformed aws-chunked chunk size.") from None
        if len(size_text) > 16 or size < 0:
            raise S3Error("InvalidRequest", "Malformed aws-chunked chunk size.")
        self._chunk_sig = None
        if ext.startswith("chunk-signature="):
            self._chunk_sig = ext[len("chunk-signature="):]
        if self._signer is not None:
            if self._chunk_sig is None:
                raise S3Error("SignatureDoesNotMatch", "Missing aws-chunked chunk signature.")
            self._chunk_hash = hashlib.sha256()
        self._remaining = size
        if size == 0:
            self._end_chunk()
            self._state = "trailer"
        else:
            self._state = "data"

    def _end_chunk(self) -> None:
        if self._signer is None:
            return
        string_to_sign = "\n".join([
            "AWS4-HMAC-SHA256-PAYLOAD", self._signer.amz_date, self._signer.scope,
            self._previous, EMPTY_SHA256, self._chunk_hash.hexdigest(),
        ])
        self._verify(string_to_sign, self._chunk_sig or "")

    def _finish_trailers(self) -> None:
        names = dict(self._trailers)
        if self._trailer_name and self._trailer_name not in names:
            raise S3Error("InvalidRequest", f"Missing trailer {self._trailer_name}.")
        if self._signer is not None and self._trailers:
            signature = names.get("x-amz-trailer-signature")
            if signature is None:
                raise S3Error("SignatureDoesNotMatch", "Missing aws-chunked trailer signature.")
            canonical = "".join(f"{n}:{v}\n" for n, v in self._trailers if n != "x-amz-trailer-signature")
            string_to_sign = "\n".join([
                "AWS4-HMAC-SHA256-TRAILER", self._signer.amz_date, self._signer.scope,
                self._previous, hashlib.sha256(canonical.encode()).hexdigest(),
            ])
            self._verify(string_to_sign, signature)
        if self._checksum is not None and self._trailer_name:
            want = names[self._trailer_name]
            got = base64.b64encode(self._checksum.digest()).decode()
            if got != want:
                raise S3Error("BadDigest", f"The {self._trailer_name} you specified did not match the calculated checksum.")

    def _verify(self, string_to_sign: str, signature: str) -> None:
        assert self._signer is not None
        expected = self._signer.sign(string_to_sign)
        if not hmac.compare_digest(expected, signature):
            raise S3Error("SignatureDoesNotMatch", "An aws-chunked chunk signature does not match.")
        self._previous = signature
