"""The contract both object stores keep: each test runs on a local directory and on S3."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import pytest

from taisu_etl.storage import ObjectStore, S3ObjectStore, image_key

JPEG_ISH = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40


def _download(url: str) -> bytes:
    # An empty ProxyHandler keeps a proxy from the environment out of the way of 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return response.read()


def test_check_passes_on_a_usable_store(store: ObjectStore) -> None:
    store.check()


def test_put_image_is_content_addressed(store: ObjectStore) -> None:
    result = store.put_image(JPEG_ISH)

    digest = hashlib.sha256(JPEG_ISH).hexdigest()
    assert result.sha256 == digest
    assert result.key == image_key(digest) == f"images/{digest[:2]}/{digest[2:4]}/{digest}.jpg"
    assert result.size == len(JPEG_ISH)
    assert result.created is True
    assert store.get(result.key) == JPEG_ISH
    info = store.stat(result.key)
    assert info is not None
    assert info.size == len(JPEG_ISH)
    assert info.content_type == "image/jpeg"


def test_put_image_twice_does_not_write_again(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = store.put_image(JPEG_ISH)
    before = store.stat(first.key)
    writes: list[str] = []
    real_put = store.put

    def counting_put(key: str, data: bytes, content_type: str | None = None) -> object:
        writes.append(key)
        return real_put(key, data, content_type)

    monkeypatch.setattr(store, "put", counting_put)

    second = store.put_image(JPEG_ISH)

    assert second.created is False
    assert (second.key, second.sha256, second.size) == (first.key, first.sha256, first.size)
    assert writes == []
    assert store.stat(first.key) == before


def test_put_image_keeps_the_extension_and_content_type(store: ObjectStore) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    result = store.put_image(png, ext="png")

    assert result.key.endswith(".png")
    info = store.stat(result.key)
    assert info is not None and info.content_type == "image/png"


def test_missing_key(store: ObjectStore) -> None:
    assert store.stat("nothing/here.txt") is None
    assert store.exists("nothing/here.txt") is False
    with pytest.raises(KeyError):
        store.get("nothing/here.txt")
    with pytest.raises(KeyError):
        store.open("nothing/here.txt")
    assert store.delete_all_versions("nothing/here.txt") == 0


def test_put_get_stat(store: ObjectStore) -> None:
    info = store.put("releases/v1/manifest.json", b'{"a": 1}')

    assert info.key == "releases/v1/manifest.json"
    assert info.size == 8
    assert info.etag
    assert store.exists("releases/v1/manifest.json")
    assert store.get("releases/v1/manifest.json") == b'{"a": 1}'
    stat = store.stat("releases/v1/manifest.json")
    assert stat is not None
    assert (stat.key, stat.size) == ("releases/v1/manifest.json", 8)
    assert stat.content_type == "application/json"
    assert stat.last_modified.tzinfo is not None


def test_put_replaces(store: ObjectStore) -> None:
    store.put("k.txt", b"old")
    store.put("k.txt", b"new content")

    assert store.get("k.txt") == b"new content"
    stat = store.stat("k.txt")
    assert stat is not None and stat.size == len(b"new content")


def test_empty_object(store: ObjectStore) -> None:
    store.put("empty.bin", b"")

    assert store.get("empty.bin") == b""
    stat = store.stat("empty.bin")
    assert stat is not None and stat.size == 0


KEYS = [
    "b",
    "a/b",
    "a-c",
    "a.b",
    "a/a",
    "x/y/z",
    "captions/太素/说明.txt",
    "captions/太素.txt",
    "captions/a.txt",
]


def test_list_is_sorted_and_filtered_by_prefix(store: ObjectStore) -> None:
    for key in KEYS:
        store.put(key, key.encode())

    def keys(prefix: str = "", recursive: bool = True) -> list[str]:
        return [info.key for info in store.list(prefix, recursive=recursive)]

    # "a-c" < "a.b" < "a/a": key order, not directory-walk order.
    assert keys() == sorted(KEYS)
    assert keys("a/") == ["a/a", "a/b"]
    assert keys("a") == ["a-c", "a.b", "a/a", "a/b"]
    assert keys("captions/") == ["captions/a.txt", "captions/太素.txt", "captions/太素/说明.txt"]
    assert keys("captions/太") == ["captions/太素.txt", "captions/太素/说明.txt"]
    assert keys("x/y/") == ["x/y/z"]
    assert keys("nope") == []


def test_list_non_recursive_skips_deeper_keys(store: ObjectStore) -> None:
    for key in KEYS:
        store.put(key, key.encode())

    def keys(prefix: str = "") -> list[str]:
        return [info.key for info in store.list(prefix, recursive=False)]

    assert keys() == ["a-c", "a.b", "b"]
    assert keys("a/") == ["a/a", "a/b"]
    assert keys("captions/") == ["captions/a.txt", "captions/太素.txt"]
    assert keys("x/") == []


def test_list_reports_sizes(store: ObjectStore) -> None:
    store.put("sizes/one", b"1")
    store.put("sizes/three", b"333")

    infos = list(store.list("sizes/"))

    assert [(i.key, i.size) for i in infos] == [("sizes/one", 1), ("sizes/three", 3)]
    assert all(i.etag and i.last_modified.tzinfo is not None for i in infos)


def test_list_of_an_empty_store(store: ObjectStore) -> None:
    assert list(store.list()) == []


def test_open_streams_the_object(store: ObjectStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    store.put("big/blob.bin", data)

    chunks = []
    with store.open("big/blob.bin") as stream:
        while chunk := stream.read(64 * 1024):
            chunks.append(chunk)
    assert b"".join(chunks) == data
    assert stream.closed


def test_put_file_streams_a_multi_megabyte_file(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(11 * 1024 * 1024 + 5)
    source = tmp_path / "release-part-0001.tar"
    source.write_bytes(data)

    info = store.put_file("releases/v1/part-0001.tar", source)

    assert info.size == len(data)
    stat = store.stat("releases/v1/part-0001.tar")
    assert stat is not None and stat.size == len(data)
    assert stat.content_type == "application/x-tar"
    if isinstance(store, S3ObjectStore):
        # A multipart upload's ETag ends in "-<parts>": 11 MiB in 5 MiB parts is 3.
        assert stat.etag.endswith("-3"), stat.etag
    with store.open("releases/v1/part-0001.tar") as stream:
        assert hashlib.sha256(stream.read()).digest() == hashlib.sha256(data).digest()


def test_put_file_of_a_missing_file(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.put_file("k.bin", tmp_path / "absent.bin")
    assert not store.exists("k.bin")


def test_presigned_get_url_downloads_the_bytes(store: ObjectStore) -> None:
    result = store.put_image(JPEG_ISH)

    url = store.presigned_get_url(result.key, expires_s=600)

    if isinstance(store, S3ObjectStore):
        assert url.startswith(store.endpoint_url + "/")
    else:
        assert url.startswith("file:///")
    assert _download(url) == JPEG_ISH


def test_delete_all_versions_removes_the_object_only(store: ObjectStore) -> None:
    store.put("k", b"one")
    store.put("k2", b"two")
    if isinstance(store, S3ObjectStore):  # a local directory cannot hold both "k" and "k/child"
        store.put("k/child", b"three")

    assert store.delete_all_versions("k") == 1

    assert store.stat("k") is None
    assert store.get("k2") == b"two"
    if isinstance(store, S3ObjectStore):
        assert store.get("k/child") == b"three"
    assert store.delete_all_versions("k") == 0


def test_versions_lists_what_a_takedown_must_find_gone(store: ObjectStore) -> None:
    assert store.versions("v") == []
    store.put("v", b"one")
    store.put("v", b"two")
    store.delete_noncurrent_versions("v")
    assert len(store.versions("v")) == 1 and store.get("v") == b"two"
    store.delete_all_versions("v")
    assert store.versions("v") == []


BAD_KEYS = [
    "",
    "/etc/passwd",
    "../evil",
    "a/../../evil",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "..",
    ".",
    "nul\x00byte",
    "new\nline",
    "x" * 1025,
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_keys_are_rejected(store: ObjectStore, key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        store.put(key, b"data")
    with pytest.raises(ValueError):
        store.get(key)
    with pytest.raises(ValueError):
        store.stat(key)
    with pytest.raises(ValueError):
        store.open(key)
    with pytest.raises(ValueError):
        store.presigned_get_url(key)
    with pytest.raises(ValueError):
        store.delete_all_versions(key)
    assert list(store.list()) == []
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("prefix", ["/abs", "../x", "a/../b", "a//b", "a\\b"])
def test_bad_list_prefixes_are_rejected(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(ValueError):
        list(store.list(prefix))


def test_describe_names_the_store(store: ObjectStore) -> None:
    text = store.describe()

    assert text.startswith("s3://" if isinstance(store, S3ObjectStore) else "local:")
    assert text in repr(store)
