"""S3 PUTs sent from the event loop over kept-alive connections, signed by a SigV4 signer equal to minio's.

Why not minio's `put_object` in a thread pool, as `S3ObjectStore.put` does: on a 2-core machine,
64 threads of minio PUTs (2.8 KB objects, s3rver on the same machine) cost 0.60 ms of client CPU
per PUT and the server took 620-1,080 PUT/s; the same PUTs from one event loop through aiohttp
cost 0.24-0.29 ms and it took 990-1,330 PUT/s (3,000 PUTs each way, side by side: `python
bench/fetch.py --probe-s3`). The fetch stage already runs an event loop, so its uploads ride on
it. They go through `Http1Pool` rather than aiohttp since then: 0.14 -> 0.045 ms of client CPU per
PUT against rclone's S3 server (see storage/http1.py).

The request is the one minio sends on plain HTTP: path-style URL, SigV4 over Host,
Content-Length, Content-Type, x-amz-content-sha256 (the body's real sha256, so a server that
checks it, as MinIO and AWS do, refuses bytes damaged on the way) and x-amz-date, signed by
`SigV4Signer`, which gives minio's signature at a seventh of its cost (it keeps the day's signing
key instead of deriving it per request: 24 -> 3.4 us a PUT, `tests/storage/test_sigv4.py` holds
the two equal). Failures become the same StorageError messages as the blocking path, with the
same retries: one for a connection that could not be made, one for a connection that broke
(sent again on a new connection), three with back-off for a 500/502/503/504.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
from datetime import UTC, datetime
from types import TracebackType
from urllib.parse import quote, urlsplit

from minio.time import to_amz_date

from taisu_etl.errors import StorageError
from taisu_etl.storage.base import ObjectInfo, guess_content_type, validate_key
from taisu_etl.storage.http1 import (
    AnswerTimeout,
    ConnectionBroken,
    ConnectTimeout,
    Http1Pool,
)
from taisu_etl.storage.s3 import S3ObjectStore, parse_http_date
from taisu_etl.storage.sigv4 import SigV4Signer
from taisu_etl.storage.uploader import Uploader

_RETRY_STATUS = frozenset({500, 502, 503, 504})
_STATUS_RETRIES = 3
_CONNECTION_RETRIES = 1
_BACKOFF_S = 0.2
_USER_AGENT = "taisu-etl"


class S3Uploader(Uploader):
    """Concurrent PUTs to one S3 bucket over a pool of kept-alive connections (see the module docstring)."""

    def __init__(self, store: S3ObjectStore, concurrency: int) -> None:
        super().__init__(store, concurrency)
        self._s3 = store
        parts = urlsplit(store.endpoint_url)
        self._host = parts.netloc
        self._hostname = parts.hostname or ""
        self._port = parts.port or (443 if store.secure else 80)
        self._region = ""
        self._signer: SigV4Signer | None = None
        self._connections: Http1Pool | None = None

    async def __aenter__(self) -> S3Uploader:
        await super().__aenter__()
        try:
            self._region = await asyncio.to_thread(self._s3.bucket_region)
        except BaseException:
            await super().__aexit__(None, None, None)
            raise
        credentials = self._s3.credentials
        if credentials is not None:  # None: anonymous access, as the blocking path allows
            self._signer = SigV4Signer(credentials.access_key, credentials.secret_key, self._region,
                                       session_token=credentials.session_token)
        self._connections = Http1Pool(
            self._hostname, self._port, ssl_context=self._s3.ssl_context() if self._s3.secure else None,
            limit=self.concurrency, connect_timeout_s=self._s3.connect_timeout_s, read_timeout_s=self._s3.read_timeout_s,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        connections, self._connections = self._connections, None
        try:
            if connections is not None:
                await connections.close()
        finally:
            await super().__aexit__(exc_type, exc, tb)

    async def _put(self, key: str, data: bytes, content_type: str | None, sha256: str | None) -> ObjectInfo:
        """One signed PUT; data larger than a part goes through minio's multipart upload."""
        if self._connections is None:
            raise RuntimeError("use the uploader inside `async with`")
        if len(data) > self._s3.part_size:
            return await super()._put(key, data, content_type, sha256)
        validate_key(key)
        ctype = content_type or guess_content_type(key)
        action = f"write {key}"
        path = f"/{self._s3.bucket}/{quote(key, safe='/')}"
        if "\r" in ctype or "\n" in ctype:
            raise ValueError(f"content type {ctype!r} has a line break")
        digest = sha256 or hashlib.sha256(data).hexdigest()
        status_retries = connection_retries = 0
        fresh = False
        while True:
            headers = self._signed(path, ctype, len(data), digest)
            head = "".join([f"PUT {path} HTTP/1.1\r\n", *(f"{k}: {v}\r\n" for k, v in headers.items()),
                            f"User-Agent: {_USER_AGENT}\r\n\r\n"]).encode("latin-1")
            try:
                answer = await self._connections.request(head, data, fresh=fresh)
            except (OSError, TimeoutError) as exc:
                error, retry = self._connection_error(exc, action)
                if retry and connection_retries < _CONNECTION_RETRIES:
                    connection_retries += 1
                    fresh = True  # another kept-alive connection may have been closed the same way
                    continue
                raise error from exc
            status, reply, body = answer.status, answer.headers, answer.body
            if 200 <= status < 300:
                return ObjectInfo(
                    key=key,
                    size=len(data),
                    etag=(reply.get("etag") or "").strip('"'),
                    last_modified=parse_http_date(reply.get("last-modified") or reply.get("date")),
                    content_type=ctype,
                )
            if status in _RETRY_STATUS:
                if status_retries < _STATUS_RETRIES:
                    await asyncio.sleep(_BACKOFF_S * 2**status_retries)
                    status_retries += 1
                    continue
                raise self._s3._server_failing(action)
            # An S3 error document becomes the blocking path's message; anything else is not S3.
            raise self._s3._error_document(body, action, status)

    def _signed(self, path: str, content_type: str, size: int, digest: str) -> dict[str, str]:
        if self._signer is not None:
            return self._signer.put_headers(self._host, path, content_type, size, digest)
        return {
            "Host": self._host,
            "Content-Type": content_type,
            "Content-Length": str(size),
            "x-amz-content-sha256": digest,
            "x-amz-date": to_amz_date(datetime.now(UTC).replace(microsecond=0)),
        }

    def _connection_error(self, exc: BaseException, action: str) -> tuple[StorageError, bool]:
        """The StorageError for a failed request, and whether one more try may help."""
        if isinstance(exc, ssl.SSLError):
            return self._s3._tls_failed(), False
        if isinstance(exc, ConnectTimeout):
            return self._s3._unreachable("connection timed out"), True
        if isinstance(exc, (AnswerTimeout, TimeoutError)):
            return self._s3._timed_out(action), False
        if isinstance(exc, ConnectionBroken):
            # A kept-alive connection the server had closed, or one cut mid-answer: the PUT is
            # idempotent, so it is sent once more, on a new connection.
            return self._s3._unreachable("connection broken"), True
        if isinstance(exc, socket.gaierror):
            return self._s3._unreachable("host name not found"), False
        # Connecting failed: the errno's own text is what the blocking path says ("connection refused").
        errno = exc.errno if isinstance(exc, OSError) else None
        return self._s3._unreachable(os.strerror(errno).lower() if errno else "connection failed"), True
