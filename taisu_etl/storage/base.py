"""The object store interface shared by the local-directory and S3 implementations.

Keys are '/'-separated relative paths. Both stores accept the same keys, so data written in
embedded mode can be copied to MinIO unchanged: no empty, '.' or '..' segments, no leading
'/', no backslashes or control characters, at most 1024 bytes of UTF-8 (S3's limit).
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from taisu_etl.storage.uploader import Uploader

MAX_KEY_BYTES = 1024
DEFAULT_CONTENT_TYPE = "application/octet-stream"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_EXT = re.compile(r"[a-z0-9]{1,16}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one stored object.

    `etag` is an opaque change tag: the S3 ETag, or size and mtime for the local store.
    `content_type` is None where the store does not say (S3 listings).
    """

    key: str
    size: int
    etag: str
    last_modified: datetime
    content_type: str | None


@dataclass(frozen=True)
class PutResult:
    """Outcome of `put_image`: `created` is False when the content was already stored."""

    key: str
    sha256: str
    size: int
    created: bool


def image_key(sha256_hex: str, ext: str = "jpg") -> str:
    """Content-addressed key of an image: `images/<h[:2]>/<h[2:4]>/<h>.<ext>`."""
    digest = sha256_hex.lower()
    if not _HEX64.fullmatch(digest):
        raise ValueError(f"not a sha256 hex digest: {sha256_hex!r}")
    ext = ext.lower()
    if not _EXT.fullmatch(ext):
        raise ValueError(f"bad image extension {ext!r}: use letters and digits only, e.g. 'jpg'")
    return f"images/{digest[:2]}/{digest[2:4]}/{digest}.{ext}"


def validate_key(key: str) -> str:
    """Return `key` unchanged, or raise ValueError saying why no store accepts it."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"object key must be a non-empty string, got {key!r}")
    _check_chars(key, "object key")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"bad object key {key!r}: empty, '.' or '..' path segment")
    return key


def validate_prefix(prefix: str) -> str:
    """Like `validate_key`, except the last segment may be partial or empty (e.g. "images/")."""
    if not isinstance(prefix, str):
        raise ValueError(f"list prefix must be a string, got {prefix!r}")
    if not prefix:
        return prefix
    _check_chars(prefix, "list prefix")
    for segment in prefix.split("/")[:-1]:
        if segment in ("", ".", ".."):
            raise ValueError(f"bad list prefix {prefix!r}: empty, '.' or '..' path segment")
    return prefix


def _check_chars(text: str, what: str) -> None:
    if text.startswith("/"):
        raise ValueError(f"bad {what} {text!r}: must be relative (no leading '/')")
    if "\\" in text:
        raise ValueError(f"bad {what} {text!r}: backslashes are not allowed, use '/'")
    if _CONTROL.search(text):
        raise ValueError(f"bad {what} {text!r}: control characters are not allowed")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"bad {what}: longer than {MAX_KEY_BYTES} bytes of UTF-8")


def guess_content_type(key: str) -> str:
    """Content type implied by the key's extension, or application/octet-stream."""
    return mimetypes.guess_type(key, strict=False)[0] or DEFAULT_CONTENT_TYPE


class ObjectStore(ABC):
    """A bucket of immutable-by-convention objects, addressed by key.

    Failures the user can fix (unreachable server, bad credentials, missing bucket, full
    disk) raise `StorageError` with a one-line message; a missing key raises `KeyError`.
    """

    def put_image(
        self, data: bytes, ext: str = "jpg", content_type: str | None = None, *, check_existing: bool = True
    ) -> PutResult:
        """Store image bytes under their sha256; an already stored copy is not uploaded again.

        The content type defaults to the one the extension implies (image/jpeg for "jpg").
        """
        digest = hashlib.sha256(data).hexdigest()
        key = image_key(digest, ext)
        if not check_existing:
            # The caller knows the key is new (or does not mind rewriting the same bytes): one
            # request instead of two. On a versioned bucket a rewrite adds a version of equal bytes.
            self.put(key, data, content_type=content_type)
            return PutResult(key=key, sha256=digest, size=len(data), created=True)
        existing = self.stat(key)
        # Same key means same bytes, unless an earlier writer was cut off mid-way on a store
        # without atomic writes; a size mismatch is the cheap tell, and rewriting repairs it.
        if existing is not None and existing.size == len(data):
            return PutResult(key=key, sha256=digest, size=len(data), created=False)
        self.put(key, data, content_type=content_type)
        return PutResult(key=key, sha256=digest, size=len(data), created=True)

    def uploader(self, concurrency: int = 64) -> Uploader:
        """Up to `concurrency` uploads at once from an event loop, as an async context manager."""
        from taisu_etl.storage.uploader import Uploader  # imports this module

        return Uploader(self, concurrency)

    def exists(self, key: str) -> bool:
        """True when an object is stored under `key`."""
        return self.stat(key) is not None

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        """Store `data` under `key`, replacing it; the content type defaults to the key's."""

    @abstractmethod
    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> ObjectInfo:
        """Stream a local file to `key` without loading it into memory (multipart on S3)."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object; raises KeyError(key) when it does not exist."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the object for the caller to close; KeyError if missing."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Information about the object, or None when it does not exist."""

    @abstractmethod
    def list(self, prefix: str = "", recursive: bool = True) -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order.

        With recursive=False only objects with no '/' after the prefix are listed.
        """

    @abstractmethod
    def presigned_get_url(self, key: str, expires_s: int = 3600) -> str:
        """A URL that downloads the object without credentials (file:// for the local store)."""

    @abstractmethod
    def delete_all_versions(self, key: str) -> int:
        """Remove every stored version and delete marker of exactly `key`; returns how many."""

    @abstractmethod
    def versions(self, key: str) -> list[str]:
        """Ids of every stored version and delete marker of exactly `key`, newest first.

        What a takedown's verification counts: an empty list means nothing of the key is left.
        A store without versioning has one version (id "current") while the object exists.
        """

    @abstractmethod
    def delete_noncurrent_versions(self, key: str) -> int:
        """Remove every version and delete marker of `key` except the current object; returns how many.

        After a rewrite (a takedown patch of a release shard) the old bytes must not stay
        recoverable on a versioned bucket.
        """

    @abstractmethod
    def check(self) -> None:
        """Verify that the store is usable now; raise StorageError with the fix otherwise."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store lives, for logs and messages; never contains credentials."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
