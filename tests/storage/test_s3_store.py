"""What only the S3 store does: versions, bucket set-up, endpoints and its error messages."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from taisu_etl.errors import StorageError
from taisu_etl.storage import S3ObjectStore

from .support import S3Server, free_port, fresh_bucket_name

MakeStore = Callable[..., S3ObjectStore]
SECRET = "s3cr3t-never-shown-9f8e7d"


def _versions(server: S3Server, store: S3ObjectStore, prefix: str = "") -> list[tuple[str, bool]]:
    """(key, is delete marker) of every version under `prefix`, sorted."""
    versions = server.raw_client().list_objects(
        store.bucket, prefix=prefix, recursive=True, include_version=True
    )
    return sorted((v.object_name or "", bool(v.is_delete_marker)) for v in versions)


def _assert_one_line(exc: StorageError) -> str:
    message = str(exc)
    assert message and "\n" not in message and "\r" not in message
    return message


@pytest.mark.s3
def test_create_bucket_turns_on_versioning(s3_server: S3Server, make_s3_store: MakeStore) -> None:
    store = make_s3_store(versioning=True)

    status = s3_server.raw_client().get_bucket_versioning(store.bucket).status
    assert status == "Enabled"
    store.check()  # a second start-up finds everything in place


@pytest.mark.s3
def test_put_image_twice_keeps_one_version(s3_server: S3Server, make_s3_store: MakeStore) -> None:
    store = make_s3_store(versioning=True)

    key = store.put_image(b"image bytes").key
    assert store.put_image(b"image bytes").created is False

    assert _versions(s3_server, store) == [(key, False)]


@pytest.mark.s3
def test_delete_all_versions_removes_versions_and_delete_markers(
    s3_server: S3Server, make_s3_store: MakeStore
) -> None:
    store = make_s3_store(versioning=True)
    for n in range(3):
        store.put("k", f"version {n}".encode())
    store.put("k2", b"sibling")
    s3_server.raw_client().remove_object(store.bucket, "k")  # leaves a delete marker
    assert _versions(s3_server, store, "k") == [
        ("k", False),
        ("k", False),
        ("k", False),
        ("k", True),
        ("k2", False),
    ]

    assert store.delete_all_versions("k") == 4

    assert _versions(s3_server, store, "k") == [("k2", False)]
    assert store.get("k2") == b"sibling"
    assert store.delete_all_versions("k") == 0


@pytest.mark.s3
def test_versions_and_delete_noncurrent_keep_only_the_current_bytes(make_s3_store: MakeStore) -> None:
    store = make_s3_store(versioning=True)
    assert store.versions("k") == []
    for n in range(3):
        store.put("k", f"version {n}".encode())
    store.put("k2", b"sibling")
    assert len(store.versions("k")) == 3

    assert store.delete_noncurrent_versions("k") == 2

    assert len(store.versions("k")) == 1 and store.get("k") == b"version 2"
    assert store.get("k2") == b"sibling" and len(store.versions("k2")) == 1
    assert store.delete_noncurrent_versions("k") == 0
    store.delete_all_versions("k")
    assert store.versions("k") == []


@pytest.mark.s3
def test_missing_bucket_is_named(s3_server: S3Server) -> None:
    bucket = fresh_bucket_name()
    store = S3ObjectStore(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, bucket)

    with pytest.raises(StorageError) as caught:
        store.check()
    message = _assert_one_line(caught.value)
    assert f"bucket {bucket} does not exist at {s3_server.endpoint}" in message
    assert "taisu-etl storage init" in message and "TAISU_S3_BUCKET" in message

    for operation in (
        lambda: store.put_image(b"x"),
        lambda: store.get("k"),
        lambda: list(store.list()),
    ):
        with pytest.raises(StorageError, match=bucket):
            operation()


def test_unreachable_endpoint_fails_fast_with_one_line() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there any more
    store = S3ObjectStore(endpoint, "taisu-access", SECRET, "taisu-images")

    for operation in (
        store.check,
        lambda: store.put_image(b"x"),
        lambda: store.get("k"),
        lambda: store.presigned_get_url("k"),
    ):
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            operation()
        assert time.monotonic() - started < 5
        message = _assert_one_line(caught.value)
        assert message.startswith(f"cannot reach the object store at {endpoint} (")
        assert "TAISU_S3_ENDPOINT" in message
        assert SECRET not in message and "taisu-access" not in message


@contextmanager
def _credentials_enforced(server: S3Server) -> Iterator[tuple[str, str]]:
    """Yield a valid (access key, secret key) pair while the server checks credentials.

    moto accepts any credentials by default; with IAM authentication switched on it checks
    the signature against its IAM users, like MinIO does, so a user is made for the test.
    """
    if not server.is_moto:
        yield server.access_key, server.secret_key
        return
    import boto3
    from moto.core.authorization import enable_iam_authentication

    iam = boto3.client(
        "iam",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
    )
    user = f"taisu-{fresh_bucket_name()}"
    iam.create_user(UserName=user)
    allow_s3 = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    policy = {"Version": "2012-10-17", "Statement": [allow_s3]}
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    with enable_iam_authentication():
        yield key["AccessKeyId"], key["SecretAccessKey"]


@pytest.mark.s3
def test_wrong_credentials_are_reported(s3_server: S3Server, make_s3_store: MakeStore) -> None:
    bucket = make_s3_store().bucket
    with _credentials_enforced(s3_server) as (access_key, secret_key):
        S3ObjectStore(s3_server.endpoint, access_key, secret_key, bucket).check()

        for bad_access, bad_secret in ((access_key, SECRET), ("AKIATAISUNOSUCHKEY00", SECRET)):
            store = S3ObjectStore(s3_server.endpoint, bad_access, bad_secret, bucket)
            with pytest.raises(StorageError) as caught:
                store.check()
            message = _assert_one_line(caught.value)
            assert s3_server.endpoint in message
            assert "TAISU_S3_ACCESS_KEY" in message and "TAISU_S3_SECRET_KEY" in message
            assert SECRET not in message and secret_key not in message
            with pytest.raises(StorageError):
                store.put_image(b"x")


@pytest.mark.parametrize(
    ("endpoint", "secure", "expected"),
    [
        ("http://127.0.0.1:9000", None, "http://127.0.0.1:9000"),
        ("http://127.0.0.1:9000/", None, "http://127.0.0.1:9000"),
        ("HTTPS://minio.example.org", None, "https://minio.example.org"),
        ("https://minio.example.org", True, "https://minio.example.org"),
        ("minio:9000", None, "https://minio:9000"),
        ("minio:9000", False, "http://minio:9000"),
        ("  http://[::1]:9000 ", None, "http://[::1]:9000"),
    ],
)
def test_endpoint_forms(endpoint: str, secure: bool | None, expected: str) -> None:
    store = S3ObjectStore(endpoint, "taisu-access", SECRET, "taisu-images", secure=secure)

    assert store.endpoint_url == expected
    assert store.describe() == f"s3://taisu-images at {expected}"
    assert SECRET not in repr(store) and "taisu-access" not in repr(store)


@pytest.mark.parametrize(
    ("endpoint", "secure", "complaint"),
    [
        (f"http://admin:{SECRET}@127.0.0.1:9000", None, "must not contain credentials"),
        (f"admin:{SECRET}@127.0.0.1:9000", None, "must not contain credentials"),
        ("http://127.0.0.1:9000/bucket", None, "without a path"),
        ("ftp://127.0.0.1", None, "http:// or https://"),
        ("http://127.0.0.1:9000", True, "make them agree"),
        ("http://127.0.0.1:99999", None, "bad host or port"),
        ("127.0.0.1:9000/x", None, "host[:port]"),
        ("", None, "TAISU_S3_ENDPOINT"),
        ("http://127.0.0.1:9000\nX-Injected: 1", None, "control characters"),
    ],
)
def test_bad_endpoints(endpoint: str, secure: bool | None, complaint: str) -> None:
    with pytest.raises(StorageError) as caught:
        S3ObjectStore(endpoint, "taisu-access", SECRET, "taisu-images", secure=secure)

    message = _assert_one_line(caught.value)
    assert complaint in message
    assert SECRET not in message


@pytest.mark.parametrize("bucket", ["", "ab", "Upper", "under_score", "x" * 64])
def test_bad_bucket_names(bucket: str) -> None:
    with pytest.raises(StorageError, match="TAISU_S3_BUCKET"):
        S3ObjectStore("http://127.0.0.1:9000", "taisu-access", SECRET, bucket)


def test_access_key_without_secret() -> None:
    with pytest.raises(StorageError, match="set both"):
        S3ObjectStore("http://127.0.0.1:9000", "taisu-access", "", "taisu-images")


def test_part_size_within_s3_limits() -> None:
    with pytest.raises(ValueError):
        S3ObjectStore("http://127.0.0.1:9000", "a", "b", "taisu-images", part_size=1024)


def test_presign_expiry_within_s3_limits() -> None:
    store = S3ObjectStore("http://127.0.0.1:9000", "a", "b", "taisu-images")
    for expires_s in (0, 7 * 24 * 3600 + 1):
        with pytest.raises(ValueError):
            store.presigned_get_url("k", expires_s=expires_s)


class _FakeServer(http.server.BaseHTTPRequestHandler):
    """Answers every request with a fixed status and body."""

    status = 200
    # What the MinIO console port (9001 instead of the API's 9000) serves to any path.
    body = b"<!doctype html><html><head><meta charset=utf-8><title>Console</title></head></html>"
    content_type = "text/html"

    def _answer(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.body)

    do_GET = do_HEAD = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def _fake_server(status: int, **answer: object) -> Iterator[str]:
    handler = type("Handler", (_FakeServer,), {"status": status, **answer})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_server_that_is_not_s3() -> None:
    with _fake_server(200) as endpoint:
        store = S3ObjectStore(endpoint, "taisu-access", SECRET, "taisu-images")
        with pytest.raises(StorageError) as caught:
            store.check()

    message = _assert_one_line(caught.value)
    assert f"the server at {endpoint} did not answer like an S3 object store" in message


def test_a_server_that_keeps_failing() -> None:
    with _fake_server(503) as endpoint:
        store = S3ObjectStore(endpoint, "taisu-access", SECRET, "taisu-images")
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            store.put("k", b"x")

    assert time.monotonic() - started < 5
    message = _assert_one_line(caught.value)
    assert endpoint in message and "retry later" in message


def _error_document(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>").encode()


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (403, "SignatureDoesNotMatch", "rejected the credentials (SignatureDoesNotMatch): check TAISU_S3_ACCESS_KEY"),
        (404, "NoSuchBucket", "bucket taisu-images does not exist"),
    ],
)
def test_an_error_document_sent_as_text_xml_is_read(status: int, code: str, expected: str) -> None:
    # rclone's `serve s3` answers errors as text/xml, which minio-py does not take for XML: the
    # user must still hear what was refused, not that the endpoint is not S3.
    body = _error_document(code, "The request signature we calculated does not match")
    with _fake_server(status, body=body, content_type="text/xml; charset=utf-8") as endpoint:
        store = S3ObjectStore(endpoint, "taisu-access", SECRET, "taisu-images")
        with pytest.raises(StorageError) as caught:
            store.put("k", b"x")

    message = _assert_one_line(caught.value)
    assert expected in message
    assert "did not answer like an S3 object store" not in message
