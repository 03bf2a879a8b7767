"""What only the local-directory store does: files, atomic writes, the root directory."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from taisu_etl.errors import StorageError
from taisu_etl.storage import LocalObjectStore


def test_keys_are_files_under_the_root(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")

    result = store.put_image(b"pixels")

    assert (tmp_path / "objects" / result.key).read_bytes() == b"pixels"
    assert store.describe() == f"local:{tmp_path / 'objects'}"
    assert store.presigned_get_url(result.key) == (tmp_path / "objects" / result.key).as_uri()


def test_root_is_created_on_first_write(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "er" / "objects"
    store = LocalObjectStore(root)
    assert not root.exists()
    assert list(store.list()) == []
    assert store.stat("a") is None
    assert not root.exists()

    store.put("a/b.txt", b"hi")

    assert (root / "a" / "b.txt").read_bytes() == b"hi"


def test_check_creates_the_root(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    store.check()
    assert (tmp_path / "objects").is_dir()


def test_check_rejects_a_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "objects").write_bytes(b"not a directory")
    store = LocalObjectStore(tmp_path / "objects")

    with pytest.raises(StorageError) as caught:
        store.check()

    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "objects") in message
    assert "not a directory" in message


def test_a_failed_write_leaves_the_old_object_and_no_temporaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    store.put("releases/part.tar", b"complete old version")
    source = tmp_path / "new.tar"
    source.write_bytes(b"x" * (3 * 1024 * 1024))

    def copy_half_then_die(src: object, dst: object, length: int = 0) -> None:
        dst.write(src.read(1024 * 1024))  # type: ignore[attr-defined]
        raise KeyboardInterrupt  # stands in for a kill in the middle of the copy

    monkeypatch.setattr(shutil, "copyfileobj", copy_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        store.put_file("releases/part.tar", source)

    assert store.get("releases/part.tar") == b"complete old version"
    assert os.listdir(tmp_path / "objects" / "releases") == ["part.tar"]


def test_a_new_key_is_absent_until_its_write_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalObjectStore(tmp_path / "objects")

    def fail_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(StorageError) as caught:
        store.put("images/new.jpg", b"bytes")

    assert "No space left on device" in str(caught.value)
    assert store.stat("images/new.jpg") is None
    assert os.listdir(tmp_path / "objects" / "images") == []


def test_temporaries_left_by_a_hard_crash_are_invisible(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    store.put("a/real.txt", b"real")
    leftover = tmp_path / "objects" / "a" / ".0123456789abcdef.taisu-tmp"
    leftover.write_bytes(b"half an obj")

    assert [info.key for info in store.list()] == ["a/real.txt"]
    with pytest.raises(ValueError):
        store.get("a/.0123456789abcdef.taisu-tmp")


def test_a_key_cannot_be_both_file_and_directory(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    store.put("a/b", b"file")

    with pytest.raises(StorageError, match="cannot store 'a/b/c'"):
        store.put("a/b/c", b"below a file")
    with pytest.raises(StorageError, match="cannot store 'a'"):
        store.put("a", b"over a directory")
    assert store.stat("a") is None
    assert store.get("a/b") == b"file"


def test_directories_are_not_objects(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    store.put("a/b", b"file")

    assert store.stat("a") is None
    with pytest.raises(KeyError):
        store.get("a")
    assert store.delete_all_versions("a") == 0
    assert store.get("a/b") == b"file"


def test_new_files_follow_the_umask(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects", fsync=True)
    old = os.umask(0o022)
    try:
        store.put("shared.bin", b"x")
    finally:
        os.umask(old)

    mode = stat.S_IMODE((tmp_path / "objects" / "shared.bin").stat().st_mode)
    assert mode == 0o644


def test_etag_changes_when_the_object_changes(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    first = store.put("k", b"one")
    second = store.put("k", b"three")

    assert first.etag != second.etag
    assert store.stat("k") == second
