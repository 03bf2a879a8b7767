"""Object store on MinIO or any S3-compatible server, through the `minio` client.

Every failure the user can fix becomes a one-line StorageError naming the endpoint and the
setting to change; credentials never appear in messages. The HTTP pool retries little and
times out fast on connect, so a wrong endpoint fails in seconds instead of minutes.
"""

from __future__ import annotations

import io
import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlsplit
from xml.etree import ElementTree

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import ENABLED
from minio.credentials import Credentials
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import MAX_PART_SIZE, MIN_PART_SIZE, ObjectWriteResult, check_bucket_name
from minio.versioningconfig import VersioningConfig
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
    SSLError,
)

from taisu_etl.errors import StorageError
from taisu_etl.storage.base import (
    ObjectInfo,
    ObjectStore,
    guess_content_type,
    validate_key,
    validate_prefix,
)

if TYPE_CHECKING:
    from taisu_etl.storage.s3_uploader import S3Uploader

DEFAULT_PART_SIZE = 64 * 1024 * 1024
_MAX_PRESIGN_S = 7 * 24 * 3600  # the S3 signature v4 limit
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidSecurity",
}
_MISSING_KEY_CODES = {"NoSuchKey", "NoSuchObject", "NoSuchVersion"}


class S3ObjectStore(ObjectStore):
    """Objects in one bucket of an S3-compatible server.

    Construction does no I/O; call `check()` once at start-up, which also creates the bucket
    (and turns on versioning) when `create_bucket` (and `versioning`) are set.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        region: str | None = None,
        secure: bool | None = None,
        create_bucket: bool = False,
        versioning: bool = False,
        part_size: int = DEFAULT_PART_SIZE,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 120.0,
    ) -> None:
        host, is_secure = _parse_endpoint(endpoint, secure)
        self.endpoint_url = f"{'https' if is_secure else 'http'}://{host}"
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError:
            raise StorageError(
                f"{bucket!r} is not a valid bucket name: use 3-63 lower-case letters, digits, "
                "dots and hyphens (TAISU_S3_BUCKET)"
            ) from None
        if bool(access_key) != bool(secret_key):
            raise StorageError(
                "only one of the object store access key and secret key is set: set both "
                "TAISU_S3_ACCESS_KEY and TAISU_S3_SECRET_KEY, or neither for anonymous access"
            )
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes")
        self.bucket = bucket
        self.secure = is_secure
        self.part_size = part_size
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        # Kept for the event-loop uploader, which signs its own requests (S3Uploader).
        self.credentials = Credentials(access_key, secret_key) if access_key else None
        self._region = region
        self._create_bucket = create_bucket
        self._versioning = versioning
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            # Kept-alive connections for up to 64 threads calling `put` at once: with fewer,
            # every upload beyond the pool's size opens and then drops a connection. (The fetch
            # stage's uploads go through `uploader()`, which has its own connections.)
            maxsize=64,
            cert_reqs="CERT_REQUIRED",
            ca_certs=_ca_file(),
            # One retry per failure kind: enough for a dropped keep-alive connection, few
            # enough that a dead endpoint is reported at once. Status retries cover
            # MinIO's transient 503 "server busy".
            retries=urllib3.Retry(
                total=3,
                connect=1,
                read=1,
                backoff_factor=0.2,
                status_forcelist=[500, 502, 503, 504],
            ),
        )
        try:
            self._client = Minio(
                host,
                access_key=access_key or None,
                secret_key=secret_key or None,
                secure=is_secure,
                region=region,
                http_client=http,
            )
        except ValueError as exc:
            raise StorageError(
                f"bad object store endpoint {self.endpoint_url} ({exc}): "
                "set TAISU_S3_ENDPOINT to http://host:port or https://host"
            ) from None

    def describe(self) -> str:
        return f"s3://{self.bucket} at {self.endpoint_url}"

    def uploader(self, concurrency: int = 64) -> S3Uploader:
        """PUTs from an event loop over kept-alive connections, cheaper per object than `put` in threads."""
        from taisu_etl.storage.s3_uploader import S3Uploader  # imports this module

        return S3Uploader(self, concurrency)

    def ssl_context(self) -> ssl.SSLContext:
        """TLS verification as the blocking client does it (SSL_CERT_FILE, else certifi)."""
        return ssl.create_default_context(cafile=_ca_file())

    def bucket_region(self) -> str:
        """The region requests to the bucket are signed for: the configured one, else the server's."""
        if self._region:
            return self._region
        with self._errors(f"find the region of bucket {self.bucket}"):
            # minio keeps no public call for this; it asks GetBucketLocation once and caches it.
            return self._client._get_region(self.bucket)

    # -- errors ---------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn client and network failures inside the block into StorageError."""
        try:
            yield
        except S3Error as exc:
            raise self._s3_error(exc, action) from exc
        except ServerError as exc:
            raise StorageError(
                f"the object store at {self.endpoint_url} failed to {action} "
                f"(HTTP {exc.status_code}): retry later or check the server's logs"
            ) from exc
        except InvalidResponseError as exc:
            # minio-py takes only application/xml as XML; rclone's `serve s3` (and other
            # S3-compatible servers) send their error documents as text/xml.
            raise self._error_document(getattr(exc, "_body", None), action) from exc
        # ParseError: a web page answering 200 where XML was due, e.g. MinIO's console
        # port (9001) given instead of its API port (9000).
        except ElementTree.ParseError as exc:
            raise self._not_s3(action) from exc
        except HTTPError as exc:
            raise self._network_error(exc, action) from exc

    def _error_document(self, body: str | bytes | None, action: str, status: int | None = None) -> StorageError:
        """An S3 `<Error>` document, whatever its Content-Type, says what the server refused;
        anything else (a web page, an empty answer) means the endpoint is not S3."""
        root = _error_root(body)
        code = root.findtext("Code") if root is not None else None
        if not code:
            return self._not_s3(action)
        return self._refused(code, root.findtext("Message") or (f"HTTP {status}" if status else ""), action)

    def _s3_error(self, exc: S3Error, action: str) -> StorageError:
        return self._refused(exc.code or "", exc.message or "", action)

    def _refused(self, code: str, message: str, action: str) -> StorageError:
        """The server answered with an S3 error code: say what to change."""
        code = code or "unknown error"
        where = self.endpoint_url
        if code == "NoSuchBucket":
            return StorageError(
                f"bucket {self.bucket} does not exist at {where}: create it "
                "(taisu-etl storage init) or set TAISU_S3_BUCKET"
            )
        if code in _CREDENTIAL_CODES:
            return StorageError(
                f"the object store at {where} rejected the credentials ({code}): check "
                "TAISU_S3_ACCESS_KEY and TAISU_S3_SECRET_KEY"
            )
        if code == "AccessDenied":
            return StorageError(
                f"access denied to bucket {self.bucket} at {where} when trying to {action} "
                "(AccessDenied): check TAISU_S3_ACCESS_KEY and TAISU_S3_SECRET_KEY and that "
                "the user's policy allows this bucket"
            )
        detail = _one_line(message)
        return StorageError(
            f"the object store at {where} refused to {action} ({code}"
            f"{': ' + detail if detail else ''}): check the server's logs"
        )

    def _not_s3(self, action: str) -> StorageError:
        return StorageError(
            f"the server at {self.endpoint_url} did not answer like an S3 object store "
            f"when asked to {action}: check TAISU_S3_ENDPOINT"
        )

    def _tls_failed(self) -> StorageError:
        return StorageError(
            f"cannot reach the object store at {self.endpoint_url} (TLS handshake failed): if "
            "the server speaks plain HTTP, set TAISU_S3_ENDPOINT to http://host:port"
        )

    def _server_failing(self, action: str) -> StorageError:
        return StorageError(
            f"the object store at {self.endpoint_url} kept failing with server errors when "
            f"asked to {action}: retry later or check the server's logs"
        )

    def _timed_out(self, action: str) -> StorageError:
        return StorageError(
            f"the object store at {self.endpoint_url} did not answer within "
            f"{self.read_timeout_s:g} s when asked to {action}: check that the server is healthy"
        )

    def _unreachable(self, reason: str) -> StorageError:
        return StorageError(
            f"cannot reach the object store at {self.endpoint_url} ({reason}): start MinIO or "
            "set TAISU_S3_ENDPOINT"
        )

    def _network_error(self, exc: HTTPError, action: str) -> StorageError:
        cause = exc.reason if isinstance(exc, MaxRetryError) and exc.reason else exc
        if isinstance(cause, SSLError):
            return self._tls_failed()
        if isinstance(cause, ResponseError):
            return self._server_failing(action)
        if isinstance(cause, ReadTimeoutError):
            return self._timed_out(action)
        if isinstance(cause, NameResolutionError):
            reason = "host name not found"
        elif isinstance(cause, NewConnectionError):
            os_error = cause.__cause__ if isinstance(cause.__cause__, OSError) else None
            reason = (os_error.strerror or "").lower() if os_error else ""
            reason = reason or "connection failed"
        elif isinstance(cause, ConnectTimeoutError):
            reason = "connection timed out"
        elif isinstance(cause, ProtocolError):
            reason = "connection broken"
        else:
            reason = type(cause).__name__
        return self._unreachable(reason)

    # -- operations -----------------------------------------------------------------------

    def _written(
        self, key: str, size: int, result: ObjectWriteResult, content_type: str
    ) -> ObjectInfo:
        # S3 PUT responses carry no Last-Modified as a rule; the Date header is the server's
        # clock at the write, close enough and one request cheaper than a HEAD.
        headers = result.http_headers
        return ObjectInfo(
            key=key,
            size=size,
            etag=result.etag or "",
            last_modified=parse_http_date(headers.get("last-modified") or headers.get("date")),
            content_type=content_type,
        )

    def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        validate_key(key)
        ctype = content_type or guess_content_type(key)
        with self._errors(f"write {key}"):
            result = self._client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type=ctype
            )
        return self._written(key, len(data), result, ctype)

    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> ObjectInfo:
        validate_key(key)
        ctype = content_type or guess_content_type(key)
        size = os.path.getsize(path)
        with self._errors(f"write {key}"):
            result = self._client.fput_object(
                self.bucket, key, os.fspath(path), content_type=ctype, part_size=self.part_size
            )
        return self._written(key, size, result, ctype)

    def get(self, key: str) -> bytes:
        validate_key(key)
        with self._errors(f"read {key}"):
            response = self._get_response(key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def open(self, key: str) -> BinaryIO:
        validate_key(key)
        with self._errors(f"read {key}"):
            response = self._get_response(key)
        return io.BufferedReader(_ResponseStream(response, self), buffer_size=1024 * 1024)

    def _get_response(self, key: str) -> urllib3.BaseHTTPResponse:
        try:
            return self._client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING_KEY_CODES:
                raise KeyError(key) from None
            raise
        except InvalidResponseError as exc:
            # A server that sends its error documents as text/xml (rclone's `serve s3`): minio-py
            # does not parse them, so a missing key must be recognised here.
            if _error_code(getattr(exc, "_body", None)) in _MISSING_KEY_CODES:
                raise KeyError(key) from None
            raise

    def stat(self, key: str) -> ObjectInfo | None:
        validate_key(key)
        with self._errors(f"stat {key}"):
            try:
                obj = self._client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING_KEY_CODES:
                    return None
                raise
        return ObjectInfo(
            key=key,
            size=obj.size or 0,
            etag=obj.etag or "",
            last_modified=obj.last_modified or datetime.now(UTC),
            content_type=obj.content_type,
        )

    def list(self, prefix: str = "", recursive: bool = True) -> Iterator[ObjectInfo]:
        """Objects under `prefix` in the server's order, which S3 defines as UTF-8 byte
        order: the same as sorting the keys as Python strings."""
        validate_prefix(prefix)
        return self._list(prefix, recursive)

    def _list(self, prefix: str, recursive: bool) -> Iterator[ObjectInfo]:
        with self._errors(f"list {prefix or 'the bucket'}"):
            for obj in self._client.list_objects(
                self.bucket, prefix=prefix or None, recursive=recursive
            ):
                if obj.is_dir or obj.object_name is None:
                    continue
                yield ObjectInfo(
                    key=obj.object_name,
                    size=obj.size or 0,
                    etag=obj.etag or "",
                    last_modified=obj.last_modified or datetime.now(UTC),
                    content_type=None,
                )

    def presigned_get_url(self, key: str, expires_s: int = 3600) -> str:
        validate_key(key)
        if not 1 <= expires_s <= _MAX_PRESIGN_S:
            raise ValueError(f"expires_s must be between 1 and {_MAX_PRESIGN_S} seconds")
        # Not purely local: without a configured region the client asks the server for the
        # bucket's region once.
        with self._errors(f"sign a download URL for {key}"):
            return self._client.presigned_get_object(
                self.bucket, key, expires=timedelta(seconds=expires_s)
            )

    def delete_all_versions(self, key: str) -> int:
        return self._delete_versions(key, keep_current=False)

    def _delete_versions(self, key: str, *, keep_current: bool) -> int:
        validate_key(key)
        what = "old versions" if keep_current else "versions"
        with self._errors(f"delete the {what} of {key}"):
            targets = [DeleteObject(key, vid) for vid, latest in self._versions(key) if not (keep_current and latest)]
            if not targets:
                return 0
            failures = list(self._client.remove_objects(self.bucket, targets))
        if failures:
            first = failures[0]
            raise StorageError(
                f"the object store at {self.endpoint_url} kept {len(failures)} of "
                f"{len(targets)} {what} of {key!r} ({first.code}): check that the user may "
                "delete object versions and that no object lock holds them"
            )
        return len(targets)

    def _versions(self, key: str) -> list[tuple[str | None, bool]]:
        """(version id, is latest) of every version and delete marker of exactly `key`, newest first."""
        # Non-recursive, so that keys below "key/" come back as one common prefix instead of
        # being listed one by one; the name test drops "key2" and friends.
        return [
            (obj.version_id, str(obj.is_latest).lower() == "true" and not obj.is_delete_marker)
            for obj in self._client.list_objects(self.bucket, prefix=key, recursive=False, include_version=True)
            if obj.object_name == key and not obj.is_dir
        ]

    def versions(self, key: str) -> list[str]:
        validate_key(key)
        with self._errors(f"list the versions of {key}"):
            return [vid or "null" for vid, _ in self._versions(key)]

    def delete_noncurrent_versions(self, key: str) -> int:
        return self._delete_versions(key, keep_current=True)

    def check(self) -> None:
        with self._errors(f"check bucket {self.bucket}"):
            if self._client.bucket_exists(self.bucket):
                if self._create_bucket and self._versioning:
                    self._enable_versioning()
                return
            if not self._create_bucket:
                raise StorageError(
                    f"bucket {self.bucket} does not exist at {self.endpoint_url}: create it "
                    "(taisu-etl storage init) or set TAISU_S3_BUCKET"
                )
            try:
                self._client.make_bucket(self.bucket, location=self._region)
            except S3Error as exc:
                # Another worker may have created it between our check and our request.
                if exc.code != "BucketAlreadyOwnedByYou":
                    raise
            if self._versioning:
                self._enable_versioning()

    def _enable_versioning(self) -> None:
        if self._client.get_bucket_versioning(self.bucket).status != ENABLED:
            self._client.set_bucket_versioning(self.bucket, VersioningConfig(ENABLED))


class _ResponseStream(io.RawIOBase):
    """A raw stream over an HTTP response that hands the connection back on close."""

    def __init__(self, response: urllib3.BaseHTTPResponse, store: S3ObjectStore) -> None:
        self._response = response
        self._store = store

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        with self._store._errors("read an object"):
            return self._response.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._response.close()
            self._response.release_conn()
        super().close()


def _parse_endpoint(endpoint: str, secure: bool | None) -> tuple[str, bool]:
    """Split "http://host:port", "https://host" or "host:port" into (host[:port], secure)."""
    text = endpoint.strip()
    if "@" in text:
        # Checked before anything echoes the endpoint back, so no password is ever printed.
        raise StorageError(
            "the object store endpoint must not contain credentials: put them in "
            "TAISU_S3_ACCESS_KEY and TAISU_S3_SECRET_KEY"
        )
    if not text:
        raise StorageError("the object store endpoint is empty: set TAISU_S3_ENDPOINT")
    if any(char.isspace() or not char.isprintable() for char in text):
        raise StorageError(
            f"object store endpoint {text!r} contains spaces or control characters: "
            "fix TAISU_S3_ENDPOINT"
        )
    if "://" in text:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise StorageError(
                f"object store endpoint {text} must start with http:// or https://: "
                "fix TAISU_S3_ENDPOINT"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise StorageError(
                f"object store endpoint {text} must be scheme://host[:port] without a path: "
                "fix TAISU_S3_ENDPOINT"
            )
        url_secure = scheme == "https"
        if secure is not None and secure != url_secure:
            raise StorageError(
                f"object store endpoint {text} says {scheme}:// but secure={secure} was "
                "requested: make them agree"
            )
        netloc, is_secure = parts.netloc, url_secure
    else:
        if "/" in text:
            raise StorageError(
                f"object store endpoint {text} must be host[:port] or scheme://host[:port]: "
                "fix TAISU_S3_ENDPOINT"
            )
        # Like the minio client and mc: without a scheme, TLS unless told otherwise.
        netloc, is_secure = text, True if secure is None else secure
    try:
        parsed = urlsplit(f"//{netloc}")
        parsed.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise StorageError(
            f"object store endpoint {text} has a bad host or port: fix TAISU_S3_ENDPOINT"
        ) from None
    if not parsed.hostname:
        raise StorageError(f"object store endpoint {text} has no host: fix TAISU_S3_ENDPOINT")
    return netloc, is_secure


def _ca_file() -> str:
    return os.environ.get("SSL_CERT_FILE") or certifi.where()


def parse_http_date(value: str | None) -> datetime:
    """An HTTP date header as a datetime; now when it is missing or unreadable."""
    try:
        return parsedate_to_datetime(value) if value else datetime.now(UTC)
    except (TypeError, ValueError):
        return datetime.now(UTC)


def _error_root(body: str | bytes | None) -> ElementTree.Element | None:
    """The `<Error>` element of an S3 error document, or None when `body` is not one."""
    try:
        root = ElementTree.fromstring(body) if body else None
    except ElementTree.ParseError:
        return None
    return root if root is not None and root.tag == "Error" else None


def _error_code(body: str | bytes | None) -> str | None:
    root = _error_root(body)
    return root.findtext("Code") if root is not None else None


def _one_line(text: str) -> str:
    return " ".join(text.split())
