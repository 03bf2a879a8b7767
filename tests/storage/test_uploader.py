"""The event-loop uploader: the contract on both stores, and the S3 one's wire behaviour.

The contract tests run on the `store` fixture (a local directory and moto's S3 server). The
S3Uploader's retries, error messages and signature are checked against a small fake S3 server
on 127.0.0.1 that records each request and answers from a script; the signature is recomputed
independently with botocore's S3 SigV4 signer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import unquote

import aiohttp.web
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest
from minio.helpers import MIN_PART_SIZE

from taisu_etl.errors import StorageError
from taisu_etl.storage import (
    LocalObjectStore,
    ObjectInfo,
    ObjectStore,
    PutResult,
    S3ObjectStore,
    image_key,
)
from taisu_etl.storage.s3_uploader import S3Uploader
from taisu_etl.storage.uploader import Uploader

from .support import read_http_request

ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "secret"
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
ODD_KEY = "notes/中文 名字 #1.txt"


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message
    assert SECRET_KEY not in message and ACCESS_KEY not in message
    return message


# -- the contract, on both stores ----------------------------------------------------------


def test_put_image_stores_bytes_under_their_sha256(store: ObjectStore) -> None:
    async def scenario() -> None:
        async with store.uploader(8) as up:
            if isinstance(store, S3ObjectStore):
                assert isinstance(up, S3Uploader)  # the event-loop path, not the thread pool
            return await up.put_image(JPEG)

    result = asyncio.run(scenario())
    digest = hashlib.sha256(JPEG).hexdigest()
    assert result.key == image_key(digest) == f"images/{digest[:2]}/{digest[2:4]}/{digest}.jpg"
    assert (result.sha256, result.size, result.created) == (digest, len(JPEG), True)
    assert store.get(result.key) == JPEG
    info = store.stat(result.key)
    assert info is not None and info.size == len(JPEG)
    assert info.content_type == "image/jpeg"


def test_put_with_non_ascii_and_spaces_in_the_key_round_trips(store: ObjectStore) -> None:
    keys = [ODD_KEY, "notes/a+b=c&d~e%f.txt", "notes/plain.bin"]

    async def scenario() -> list[str]:
        async with store.uploader(4) as up:
            infos = [await up.put(key, key.encode()) for key in keys]
        return [info.key for info in infos]

    assert asyncio.run(scenario()) == keys
    for key in keys:
        assert store.get(key) == key.encode()
    assert sorted(info.key for info in store.list("notes/")) == sorted(keys)
    stat = store.stat(ODD_KEY)
    assert stat is not None and stat.content_type == "text/plain"


def test_put_returns_object_info_and_honours_the_content_type(store: ObjectStore) -> None:
    async def scenario() -> ObjectInfo:
        async with store.uploader(2) as up:
            return await up.put("docs/readme", b"hello", content_type="text/markdown")

    info = asyncio.run(scenario())
    assert (info.key, info.size) == ("docs/readme", 5)
    assert info.etag
    assert store.get("docs/readme") == b"hello"
    # The local store keeps no content types (it derives them from the key); S3 stores ours.
    if isinstance(store, S3ObjectStore):
        assert info.content_type == "text/markdown"
        stat = store.stat("docs/readme")
        assert stat is not None and stat.content_type == "text/markdown"
    else:
        assert info.content_type == "application/octet-stream"


def test_many_concurrent_put_images_all_land(store: ObjectStore) -> None:
    blobs = [b"\xff\xd8\xff" + f"image number {i}".encode() * (i + 1) for i in range(50)]

    async def scenario() -> list[PutResult]:
        async with store.uploader(8) as up:
            return await asyncio.gather(*(up.put_image(blob) for blob in blobs))

    results = asyncio.run(scenario())
    assert [r.sha256 for r in results] == [hashlib.sha256(b).hexdigest() for b in blobs]
    assert len({r.key for r in results}) == 50
    for result, blob in zip(results, blobs, strict=True):
        assert store.get(result.key) == blob
    assert len(list(store.list("images/"))) == 50


def test_data_larger_than_a_part_still_lands(store: ObjectStore) -> None:
    # The store fixture's S3 part size is MIN_PART_SIZE: this goes multipart through minio.
    data = bytes(range(251)) * (MIN_PART_SIZE // 251 + 7)
    assert len(data) > MIN_PART_SIZE

    async def scenario() -> ObjectInfo:
        async with store.uploader(2) as up:
            return await up.put("big/blob.bin", data)

    info = asyncio.run(scenario())
    assert info.size == len(data)
    assert store.get("big/blob.bin") == data


def test_the_uploader_refuses_use_outside_async_with(store: ObjectStore) -> None:
    async def scenario() -> None:
        up = store.uploader(2)
        with pytest.raises(RuntimeError, match="async with"):
            await up.put("a/b.txt", b"x")
        with pytest.raises(RuntimeError, match="async with"):
            await up.put_image(JPEG)
        async with up:
            await up.put("a/b.txt", b"x")
        with pytest.raises(RuntimeError, match="async with"):
            await up.put("a/c.txt", b"y")

    asyncio.run(scenario())
    assert store.get("a/b.txt") == b"x"
    assert not store.exists("a/c.txt")


def test_concurrency_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LocalObjectStore(tmp_path).uploader(0)
    remote = S3ObjectStore("http://127.0.0.1:9", ACCESS_KEY, SECRET_KEY, "bucket", region="us-east-1")
    with pytest.raises(ValueError, match="at least 1"):
        remote.uploader(0)
    assert type(LocalObjectStore(tmp_path).uploader(1)) is Uploader


# -- S3Uploader against a scripted fake S3 server --------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    method: str
    raw_path: str  # as sent on the wire, percent-encoded
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


def _s3_error(code: str, message: str = "x") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<Resource>/bucket/k</Resource><RequestId>1</RequestId></Error>"
    ).encode()


class FakeS3:
    """An aiohttp server on 127.0.0.1:<ephemeral> answering PUTs from a script.

    Each request takes the next reply; the last one repeats. A GET ?location answers
    `location` and is recorded like any other request.
    """

    def __init__(self, *replies: Reply, location: str = "us-east-1") -> None:
        self.replies = list(replies) or [Reply()]
        self.location = location
        self.seen: list[Seen] = []
        self.port = 0
        self._runner: aiohttp.web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def puts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "PUT"]

    def store(
        self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, region: str | None = "us-east-1"
    ) -> S3ObjectStore:
        return S3ObjectStore(self.endpoint, access_key, secret_key, "bucket", region=region)

    async def _handle(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        body = await request.read()
        self.seen.append(
            Seen(
                method=request.method,
                raw_path=request.raw_path.split("?", 1)[0],
                query=request.query_string,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        if request.method == "GET" and "location" in request.query:
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<LocationConstraint '
                f'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{self.location}</LocationConstraint>'
            )
            return aiohttp.web.Response(body=xml.encode(), content_type="application/xml")
        puts = len(self.puts)
        reply = self.replies[min(puts, len(self.replies)) - 1]
        return aiohttp.web.Response(status=reply.status, body=reply.body, headers=reply.headers)

    async def __aenter__(self) -> FakeS3:
        app = aiohttp.web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = aiohttp.web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await aiohttp.web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


T = TypeVar("T")


def _run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


_OK = Reply(200, b"", {"ETag": '"d41d8cd98f00b204e9800998ecf8427e"'})


def test_server_errors_are_retried_and_then_the_put_succeeds() -> None:
    async def scenario() -> tuple[FakeS3, object]:
        async with FakeS3(Reply(503, _s3_error("SlowDown")), Reply(503, b""), _OK) as fake:
            async with fake.store().uploader(4) as up:
                info = await up.put_image(JPEG)
        return fake, info

    fake, info = _run(scenario)
    assert len(fake.seen) == 3 and all(s.method == "PUT" for s in fake.seen)
    assert all(s.body == JPEG for s in fake.seen)
    assert all(s.headers["authorization"].startswith("AWS4-HMAC-SHA256 ") for s in fake.seen)
    assert info.key == image_key(hashlib.sha256(JPEG).hexdigest())


def test_server_errors_that_persist_give_up_after_three_retries() -> None:
    async def scenario() -> tuple[FakeS3, BaseException, float]:
        async with FakeS3(Reply(503, _s3_error("ServiceUnavailable"))) as fake:
            started = time.monotonic()
            async with fake.store().uploader(4) as up:
                with pytest.raises(StorageError) as caught:
                    await up.put("a/b.txt", b"data")
            return fake, caught.value, time.monotonic() - started

    fake, error, elapsed = _run(scenario)
    message = _one_line(error)
    assert "kept failing with server errors" in message
    assert fake.endpoint in message and "write a/b.txt" in message
    assert len(fake.seen) == 4
    assert 1.3 <= elapsed < 3  # back-off 0.2 + 0.4 + 0.8 s


@pytest.mark.parametrize("status", [500, 502, 504])
def test_other_retryable_statuses_are_retried_too(status: int) -> None:
    async def scenario() -> FakeS3:
        async with FakeS3(Reply(status, b"oops"), _OK) as fake:
            async with fake.store().uploader(1) as up:
                await up.put("a/b.txt", b"data")
        return fake

    fake = _run(scenario)
    assert len(fake.seen) == 2


def _put_error(reply: Reply) -> tuple[FakeS3, str]:
    async def scenario() -> tuple[FakeS3, str]:
        async with FakeS3(reply) as fake:
            async with fake.store().uploader(2) as up:
                with pytest.raises(StorageError) as caught:
                    await up.put("a/b.txt", b"data")
        return fake, _one_line(caught.value)

    return _run(scenario)


def test_no_such_bucket_says_the_bucket_does_not_exist() -> None:
    fake, message = _put_error(Reply(404, _s3_error("NoSuchBucket"), {"Content-Type": "application/xml"}))
    assert "bucket bucket does not exist" in message and fake.endpoint in message
    assert len(fake.seen) == 1  # not retried


def test_bad_signature_says_the_credentials_were_rejected() -> None:
    fake, message = _put_error(Reply(403, _s3_error("SignatureDoesNotMatch", "The request signature")))
    assert "rejected the credentials (SignatureDoesNotMatch)" in message
    assert len(fake.seen) == 1


def test_access_denied_says_so() -> None:
    _, message = _put_error(Reply(403, _s3_error("AccessDenied", "Access Denied.")))
    assert "access denied to bucket bucket" in message and "write a/b.txt" in message


def test_other_s3_error_codes_name_the_code_and_message() -> None:
    _, message = _put_error(Reply(400, _s3_error("EntityTooLarge", "Your proposed\nupload is big")))
    assert "refused to write a/b.txt (EntityTooLarge: Your proposed upload is big)" in message


@pytest.mark.parametrize(
    "body",
    [
        b"<html><head><title>400 Bad Request</title></head><body>nope</body></html>",
        b"<!DOCTYPE html><html><body><p>console<br></p></body></html>",
        b"plain text, not xml",
        b"",
    ],
)
def test_a_non_s3_answer_says_it_is_not_an_s3_object_store(body: bytes) -> None:
    fake, message = _put_error(Reply(400, body, {"Content-Type": "text/html"}))
    assert "did not answer like an S3 object store" in message and fake.endpoint in message


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_listening_says_it_cannot_reach_the_store() -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    store = S3ObjectStore(endpoint, ACCESS_KEY, SECRET_KEY, "bucket", region="us-east-1")

    async def scenario() -> str:
        async with store.uploader(2) as up:
            with pytest.raises(StorageError) as caught:
                await up.put_image(JPEG)
        return _one_line(caught.value)

    started = time.monotonic()
    message = _run(scenario)
    assert time.monotonic() - started < 2
    assert message.startswith(f"cannot reach the object store at {endpoint} (")
    assert "TAISU_S3_ENDPOINT" in message


def test_nothing_listening_gives_the_blocking_paths_message() -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    store = S3ObjectStore(endpoint, ACCESS_KEY, SECRET_KEY, "bucket", region="us-east-1")
    with pytest.raises(StorageError) as blocking:
        store.put("a/b.txt", b"x")

    async def scenario() -> str:
        async with store.uploader(2) as up:
            with pytest.raises(StorageError) as caught:
                await up.put("a/b.txt", b"x")
        return str(caught.value)

    assert _run(scenario) == str(blocking.value)


class DroppingServer:
    """A raw TCP server that reads each request whole and then hangs up on the first `drops`."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.requests = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_http_request(reader)
                self.requests += 1
                if self.requests <= self.drops:
                    break
                writer.write(b'HTTP/1.1 200 OK\r\nETag: "abc"\r\nContent-Length: 0\r\n\r\n')
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> DroppingServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def test_a_put_survives_one_dropped_connection() -> None:
    async def scenario() -> tuple[int, str]:
        async with DroppingServer(drops=1) as server:
            store = S3ObjectStore(f"http://127.0.0.1:{server.port}", ACCESS_KEY, SECRET_KEY, "bucket", region="us-east-1")
            async with store.uploader(2) as up:
                info = await up.put("a/b.txt", b"data")
        return server.requests, info.etag

    assert _run(scenario) == (2, "abc")


def test_a_connection_that_keeps_dropping_says_it_is_broken() -> None:
    async def scenario() -> tuple[int, str, str]:
        async with DroppingServer(drops=10) as server:
            endpoint = f"http://127.0.0.1:{server.port}"
            store = S3ObjectStore(endpoint, ACCESS_KEY, SECRET_KEY, "bucket", region="us-east-1")
            async with store.uploader(2) as up:
                with pytest.raises(StorageError) as caught:
                    await up.put("a/b.txt", b"data")
        return server.requests, endpoint, _one_line(caught.value)

    requests, endpoint, message = _run(scenario)
    # Two attempts, as the blocking path makes: the idempotent PUT is sent once more on a new connection.
    assert requests == 2
    assert message.startswith(f"cannot reach the object store at {endpoint} (connection broken)")


def test_the_etag_comes_back_unquoted_with_the_put_details() -> None:
    async def scenario() -> ObjectInfo:
        reply = Reply(200, b"", {"ETag": '"5d41402abc4b2a76b9719d911017c592"'})
        async with FakeS3(reply) as fake:
            async with fake.store().uploader(2) as up:
                return await up.put("docs/hello.txt", b"hello")

    info = _run(scenario)
    assert info.etag == "5d41402abc4b2a76b9719d911017c592"
    assert (info.key, info.size, info.content_type) == ("docs/hello.txt", 5, "text/plain")
    age = dt.datetime.now(dt.UTC) - info.last_modified
    assert abs(age.total_seconds()) < 60  # from the reply's Date header


def _botocore_authorization(seen: Seen, port: int, region: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The Authorization header botocore's S3 SigV4 signer gives the request the server saw."""
    headers = seen.headers
    amz_date = headers["x-amz-date"]
    frozen = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    # add_auth takes its timestamp from get_current_datetime(); freeze it at the request's.
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: frozen)
    request = botocore.awsrequest.AWSRequest(
        method="PUT",
        url=f"http://127.0.0.1:{port}{seen.raw_path}",
        data=seen.body,
        headers={
            "Host": headers["host"],
            "Content-Type": headers["content-type"],
            "Content-Length": headers["content-length"],
            "x-amz-content-sha256": headers["x-amz-content-sha256"],
            "x-amz-date": amz_date,
        },
    )
    signer = botocore.auth.S3SigV4Auth(
        botocore.credentials.Credentials(ACCESS_KEY, SECRET_KEY), "s3", region
    )
    signer.add_auth(request)
    assert request.headers["X-Amz-Date"] == amz_date
    # S3SigV4Auth recomputes the payload hash from the body: it must match what was sent.
    assert request.headers["X-Amz-Content-SHA256"] == headers["x-amz-content-sha256"]
    return request.headers["Authorization"]


@pytest.mark.parametrize("key", ["images/ab/cd/plain.jpg", ODD_KEY, "notes/a+b=c&d~e%f (1).txt"])
def test_the_signature_matches_botocores(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    body = b"\x00\x01 some bytes \xff" * 33

    async def scenario() -> FakeS3:
        async with FakeS3(_OK) as fake:
            async with fake.store().uploader(2) as up:
                await up.put(key, body)
        return fake

    fake = _run(scenario)
    [seen] = fake.seen
    assert seen.method == "PUT" and seen.query == ""
    assert seen.body == body
    assert seen.raw_path.startswith("/bucket/") and seen.raw_path.isascii()
    assert unquote(seen.raw_path) == f"/bucket/{key}"
    assert seen.headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
    assert seen.headers["content-length"] == str(len(body))
    assert seen.headers["host"] == f"127.0.0.1:{fake.port}"
    authorization = seen.headers["authorization"]
    assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert "SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date," in authorization
    assert authorization == _botocore_authorization(seen, fake.port, "us-east-1", monkeypatch)


def test_without_a_region_the_bucket_location_is_asked_once_and_signed_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> FakeS3:
        async with FakeS3(_OK, location="eu-west-3") as fake:
            async with fake.store(region=None).uploader(4) as up:
                await asyncio.gather(*(up.put(f"k/{i}.bin", b"%d" % i) for i in range(3)))
        return fake

    fake = _run(scenario)
    assert [s.method for s in fake.seen].count("GET") == 1
    assert fake.seen[0].method == "GET" and "location" in fake.seen[0].query
    assert len(fake.puts) == 3
    for seen in fake.puts:
        assert "/eu-west-3/s3/aws4_request" in seen.headers["authorization"]
        assert seen.headers["authorization"] == _botocore_authorization(seen, fake.port, "eu-west-3", monkeypatch)


def test_anonymous_access_sends_no_authorization() -> None:
    async def scenario() -> FakeS3:
        async with FakeS3(_OK) as fake:
            async with fake.store("", "").uploader(2) as up:
                await up.put_image(JPEG)
        return fake

    fake = _run(scenario)
    [seen] = fake.seen
    assert "authorization" not in seen.headers
    assert seen.headers["x-amz-content-sha256"] == hashlib.sha256(JPEG).hexdigest()
    assert seen.headers["content-type"] == "image/jpeg"
    assert seen.body == JPEG
