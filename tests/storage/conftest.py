"""Fixtures for the object store tests.

S3 tests talk HTTP to moto's S3 server, started once per session on 127.0.0.1, or to the
real server named by TAISU_TEST_S3_ENDPOINT (with TAISU_TEST_S3_ACCESS_KEY and
TAISU_TEST_S3_SECRET_KEY), e.g. a MinIO from docker-compose. Each test gets fresh buckets.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from minio.deleteobjects import DeleteObject
from minio.helpers import MIN_PART_SIZE

from taisu_etl.storage import LocalObjectStore, ObjectStore, S3ObjectStore

from .support import S3Server, fresh_bucket_name

_START_TIMEOUT_S = 30


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    endpoint = os.environ.get("TAISU_TEST_S3_ENDPOINT")
    if endpoint:
        access_key = os.environ.get("TAISU_TEST_S3_ACCESS_KEY", "")
        secret_key = os.environ.get("TAISU_TEST_S3_SECRET_KEY", "")
        if not (access_key and secret_key):
            pytest.fail(
                "TAISU_TEST_S3_ENDPOINT is set but TAISU_TEST_S3_ACCESS_KEY or "
                "TAISU_TEST_S3_SECRET_KEY is not: set both"
            )
        if "://" not in endpoint:
            endpoint = f"http://{endpoint}"
        yield S3Server(endpoint.rstrip("/"), access_key, secret_key, is_moto=False)
        return

    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        pytest.fail(f"moto's S3 server is not installed ({exc}): pip install -e '.[dev]'")

    # werkzeug logs every request to stderr; the tests make thousands of them.
    werkzeug_log = logging.getLogger("werkzeug")
    old_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.ERROR)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    # start() waits forever when the server thread dies before it is ready (e.g. the
    # socket cannot be bound), so wait for it from a helper thread with a deadline.
    starter = threading.Thread(target=server.start, daemon=True)
    starter.start()
    starter.join(_START_TIMEOUT_S)
    if starter.is_alive():
        werkzeug_log.setLevel(old_level)
        pytest.fail(f"moto's S3 server did not start on 127.0.0.1 within {_START_TIMEOUT_S} s")
    host, port = server.get_host_and_port()
    try:
        # moto accepts any credentials unless IAM authentication is switched on.
        yield S3Server(f"http://{host}:{port}", "taisu-test-access", "taisu-test-secret", True)
    finally:
        server.stop()
        werkzeug_log.setLevel(old_level)


@pytest.fixture
def make_s3_store(s3_server: S3Server) -> Iterator[Callable[..., S3ObjectStore]]:
    """Factory for S3 stores, each on a new bucket that is emptied and removed afterwards."""
    created: list[str] = []

    def make(*, versioning: bool = False, **kwargs: object) -> S3ObjectStore:
        bucket = fresh_bucket_name()
        store = S3ObjectStore(
            s3_server.endpoint,
            s3_server.access_key,
            s3_server.secret_key,
            bucket,
            create_bucket=True,
            versioning=versioning,
            **kwargs,  # type: ignore[arg-type]
        )
        store.check()
        created.append(bucket)
        return store

    yield make

    client = s3_server.raw_client()
    for bucket in created:
        versions = client.list_objects(bucket, recursive=True, include_version=True)
        targets = [DeleteObject(v.object_name, v.version_id) for v in versions if v.object_name]
        failures = list(client.remove_objects(bucket, targets)) if targets else []
        assert not failures, f"could not empty test bucket {bucket}: {failures[0]}"
        client.remove_bucket(bucket)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Each contract test runs once per implementation."""
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    make: Callable[..., S3ObjectStore] = request.getfixturevalue("make_s3_store")
    # The smallest part size S3 allows, so that a test file of a few MiB goes multipart.
    return make(part_size=MIN_PART_SIZE)
