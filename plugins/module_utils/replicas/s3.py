# Copyright: selfhost.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The few S3 requests the collection makes itself of a Litestream replica (issue 17): list a prefix, read an object's
first bytes (an LTX header) or its metadata. Litestream's own commands cannot give what a restore to a moment needs
(``litestream ltx`` shows S3's upload time to the second, not the header's time), and the hosts have only Python's
standard library: so this is AWS Signature Version 4 over ``http.client``, path-style addressing, nothing more.

Every answer is hostile input: responses are read up to a bound, a listing's XML is refused if it declares a DTD
(no entities), keys are checked by the caller. The secret key is never put in a message; errors are one sentence
with the HTTP status and S3's error code."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ssl
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from xml.etree import ElementTree

from .._common import Error

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_MAX_LISTING = 8 * 1024 * 1024  # one page of a listing (1000 keys) is far less
_MAX_ERROR = 64 * 1024


class S3Error(Error):
    """A request the store refused (``status``, its HTTP status) or did not answer (``status`` 0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _quote(text: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(text, safe=safe)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signature_headers(
    method: str,
    host: str,
    path: str,
    query: dict[str, str],
    headers: dict[str, str],
    payload_sha256: str,
    access_key: str,
    secret_key: str,
    region: str,
    when: datetime,
) -> dict[str, str]:
    """The headers that sign a request with AWS Signature Version 4 (``path`` as sent, already URI-encoded)."""
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    signed = {k.lower(): v.strip() for k, v in headers.items()}
    signed.update({"host": host, "x-amz-content-sha256": payload_sha256, "x-amz-date": stamp})
    names = sorted(signed)
    canonical = "\n".join(
        [
            method,
            path,
            "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items())),
            "".join(f"{n}:{signed[n]}\n" for n in names),
            ";".join(names),
            payload_sha256,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), day), region), "s3"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return {**{k: v for k, v in signed.items() if k != "host"}, "authorization": authorization}


def _xml(data: bytes) -> ElementTree.Element:
    """An answer's XML, refused if it declares a DTD (S3 never does): without one no entity can be defined, so none
    can be expanded."""
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise S3Error("the S3 store answered with XML that declares a DTD, which S3 never sends")
    return ElementTree.fromstring(data)  # noqa: S314 - no DTD, so no entity (checked above); bounded in size


@dataclass(frozen=True)
class Object:
    key: str
    size: int
    last_modified: str


@dataclass
class Store:
    """One bucket of an S3-compatible store, path-style (``endpoint/bucket/key``)."""

    endpoint: str  # http(s)://HOST[:PORT]
    bucket: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    region: str = "us-east-1"
    skip_verify: bool = False
    ca_file: str = ""
    timeout: float = 30.0

    def _connection(self) -> http.client.HTTPConnection:
        parsed = urllib.parse.urlsplit(self.endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.path not in ("", "/"):
            raise S3Error(f"the S3 endpoint must be http(s)://HOST[:PORT], not {self.endpoint!r:.120}")
        if parsed.scheme == "http":
            return http.client.HTTPConnection(parsed.netloc, timeout=self.timeout)
        context = ssl.create_default_context(cafile=self.ca_file or None)
        if self.skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(parsed.netloc, timeout=self.timeout, context=context)

    def request(
        self,
        method: str,
        key: str = "",
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        limit: int = _MAX_LISTING,
    ) -> tuple[int, dict[str, str], bytes]:
        """One signed request; the status, the headers (lower-case names) and at most ``limit`` bytes of the body."""
        query = dict(query or {})
        path = "/" + _quote(self.bucket) + ("/" + _quote(key, safe="-_.~/") if key else "")
        host = urllib.parse.urlsplit(self.endpoint).netloc
        payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        signed = signature_headers(method, host, path, query, dict(headers or {}), payload, self.access_key,
                                   self.secret_key, self.region, datetime.now(UTC))  # fmt: skip
        target = path + ("?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items())) if query else "")
        connection = self._connection()
        try:
            connection.request(method, target, body=body or None, headers=signed)
            response = connection.getresponse()
            data = response.read(limit + 1)
            answered = {k.lower(): v for k, v in response.getheaders()}
        except (OSError, http.client.HTTPException) as exc:
            raise S3Error(f"the S3 store {self.endpoint} did not answer {method} {self.bucket}/{key}: {exc}") from exc
        finally:
            connection.close()
        if len(data) > limit:
            raise S3Error(f"the S3 store answered {method} {self.bucket}/{key} with more than {limit} bytes")
        return response.status, answered, data

    def _refused(self, what: str, status: int, data: bytes) -> S3Error:
        try:
            code = _xml(data[:_MAX_ERROR]).findtext("Code") or "" if data else ""
        except (ElementTree.ParseError, S3Error):
            code = ""
        return S3Error(f"the S3 store refused to {what} (HTTP {status}{', ' + code if code else ''})", status)

    def list(self, prefix: str) -> Iterator[Object]:
        """Every object whose key begins with ``prefix``, in key order (ListObjectsV2, page after page)."""
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix, **({"continuation-token": token} if token else {})}
            status, _headers, data = self.request("GET", query=query)
            if status != 200:
                raise self._refused(f"list {self.bucket}/{prefix}", status, data)
            try:
                root = _xml(data)
            except ElementTree.ParseError as exc:
                raise S3Error(f"the listing of {self.bucket}/{prefix} is not XML: {exc}") from exc
            for item in root.iter(f"{_NS}Contents"):
                key = item.findtext(f"{_NS}Key") or ""
                size = item.findtext(f"{_NS}Size") or "0"
                if not key.startswith(prefix) or not size.isdigit():
                    raise S3Error(f"the listing of {self.bucket}/{prefix} names {key!r:.120}, outside what was asked")
                yield Object(key, int(size), item.findtext(f"{_NS}LastModified") or "")
            token = root.findtext(f"{_NS}NextContinuationToken") or ""
            if (root.findtext(f"{_NS}IsTruncated") or "false") != "true" or not token:
                return

    def read(self, key: str, length: int) -> bytes:
        """The first ``length`` bytes of the object ``key`` (fewer when it is shorter)."""
        status, _headers, data = self.request("GET", key, headers={"range": f"bytes=0-{length - 1}"}, limit=length)
        if status not in (200, 206):
            raise self._refused(f"read {self.bucket}/{key}", status, data)
        return data[:length]

    def put(self, key: str, body: bytes) -> None:
        status, _headers, data = self.request("PUT", key, body=body, limit=_MAX_ERROR)
        if status != 200:
            raise self._refused(f"write {self.bucket}/{key}", status, data)

    def create_bucket(self) -> None:
        """Make the bucket (an existing one of ours is no error)."""
        status, _headers, data = self.request("PUT", limit=_MAX_ERROR)
        if status not in (200, 409) or (status == 409 and b"BucketAlreadyOwnedByYou" not in data):
            raise self._refused(f"make the bucket {self.bucket}", status, data)
