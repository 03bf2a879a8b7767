"""Key rules shared by every store."""

from __future__ import annotations

import hashlib

import pytest

from taisu_etl.storage import image_key, validate_key

DIGEST = hashlib.sha256(b"an image").hexdigest()


def test_image_key_layout() -> None:
    assert image_key(DIGEST) == f"images/{DIGEST[:2]}/{DIGEST[2:4]}/{DIGEST}.jpg"
    assert image_key(DIGEST, "png").endswith(f"/{DIGEST}.png")


def test_image_key_is_canonical() -> None:
    assert image_key(DIGEST.upper(), "JPG") == image_key(DIGEST, "jpg")


@pytest.mark.parametrize(
    "digest",
    ["", DIGEST[:-1], DIGEST + "0", "g" * 64, hashlib.md5(b"x").hexdigest(), f" {DIGEST[1:]}"],
)
def test_image_key_rejects_what_is_not_a_sha256(digest: str) -> None:
    with pytest.raises(ValueError, match="sha256"):
        image_key(digest)


@pytest.mark.parametrize("ext", ["", ".jpg", "j/pg", "../x", "jpg ", "x" * 17])
def test_image_key_rejects_bad_extensions(ext: str) -> None:
    with pytest.raises(ValueError, match="extension"):
        image_key(DIGEST, ext)


@pytest.mark.parametrize(
    "key",
    ["a", "a/b/c.txt", "releases/v1/SHA256SUMS", "captions/太素.json", ".hidden", "a..b", "x" * 1024],
)
def test_good_keys(key: str) -> None:
    assert validate_key(key) == key


def test_key_length_counts_utf8_bytes() -> None:
    with pytest.raises(ValueError, match="1024 bytes"):
        validate_key("太" * 342)  # 1026 bytes
