"""A reproducible, fast USTAR writer, hashing its output as it goes.

Python's `tarfile` builds each header through TarInfo objects and writes small pieces; for
millions of tiny JPEGs that overhead is the cost of the whole release. Every member here is a
regular file with the same fixed metadata (mode 0644, uid/gid 0, empty owner names, mtime 0), so
the header is a template with only the name, size and checksum filled in, and writes are batched.
USTAR (POSIX.1-1988) is read by every tar, Python's tarfile, webdataset and open_clip; our names
(32 hex digits + extension) never need its long-name extensions.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

BLOCK = 512
RECORD = 20 * BLOCK  # GNU tar and tarfile pad the archive to whole 10 KiB records
_MAX_SIZE = 8**11 - 1  # what 11 octal digits hold
_FLUSH_AT = 1 << 20
GZIP_LEVEL = 6
_ZEROS = bytes(BLOCK)


def _template() -> bytes:
    h = bytearray(BLOCK)
    h[100:108] = b"0000644\0"  # mode
    h[108:116] = b"0000000\0"  # uid
    h[116:124] = b"0000000\0"  # gid
    h[136:148] = b"00000000000\0"  # mtime: the epoch, so the bytes do not depend on when we ran
    h[148:156] = b" " * 8  # checksum is computed over the header with this field as spaces
    h[156:157] = b"0"  # regular file
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    return bytes(h)


_TEMPLATE = _template()
# The header is the template with name (0:100), size (124:136) and checksum (148:156) filled in.
# The checksum is the byte sum with its own field as spaces, so it is the template's sum plus the
# bytes of the name and size: no 512-byte sum per member.
_MID = _TEMPLATE[100:124]
_MTIME = _TEMPLATE[136:148]
_TAIL = _TEMPLATE[156:]
_BASE_SUM = sum(_TEMPLATE)
_NAME_PAD = bytes(100)


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte header of a regular file `name` of `size` bytes."""
    raw = name.encode("utf-8")
    if not raw or len(raw) > 100:
        raise ValueError(f"tar member name must be 1-100 bytes of UTF-8: {name!r}")
    if not 0 <= size <= _MAX_SIZE:
        raise ValueError(f"tar member {name!r} is too large for USTAR ({size} bytes)")
    size_field = b"%011o\0" % size
    checksum = b"%06o\0 " % (_BASE_SUM + sum(raw) + sum(size_field))
    return b"".join((raw, _NAME_PAD[len(raw):], _MID, size_field, _MTIME, checksum, _TAIL))


@dataclass(frozen=True)
class Digest:
    """sha256 and size of a file as written."""

    sha256: str
    size: int


class HashingFile:
    """A buffered, write-only file that hashes and counts what goes through it (no second read pass)."""

    def __init__(self, path: str | Path) -> None:
        self._file: BinaryIO = open(path, "wb", buffering=0)
        self._hash = hashlib.sha256()
        self._chunks: list[bytes] = []
        self._pending = 0
        self.size = 0

    def write(self, data: bytes) -> int:
        # Many tiny writes (a tar header, a caption line) cost more in calls than in bytes: gather
        # them and hash and write a megabyte at a time.
        n = len(data)
        self._chunks.append(bytes(data))
        self._pending += n
        self.size += n
        if self._pending >= _FLUSH_AT:
            self.flush()
        return n

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        if self._chunks:
            block = b"".join(self._chunks)
            self._hash.update(block)
            self._file.write(block)
            self._chunks.clear()
            self._pending = 0

    def close(self) -> Digest:
        self.flush()
        self._file.close()
        return Digest(self._hash.hexdigest(), self.size)


class TarWriter:
    """Write regular-file members to `path`, optionally gzip-compressed (`pigz -d` reads it).

    The gzip stream carries no name and mtime 0, so the same members give the same bytes.
    """

    def __init__(self, path: str | Path, *, compress: bool = False) -> None:
        self._out = HashingFile(path)
        # filename="" keeps the temp file's name out of the gzip header.
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._out, compresslevel=GZIP_LEVEL, mtime=0) if compress else None  # type: ignore[arg-type]
        self._sink = self._gz if self._gz is not None else self._out
        self._chunks: list[bytes] = []
        self._pending = 0
        self._offset = 0
        self.members = 0

    def add(self, name: str, data: bytes) -> None:
        size = len(data)
        pad = -size % BLOCK
        self._chunks += (ustar_header(name, size), data, _ZEROS[:pad]) if pad else (ustar_header(name, size), data)
        n = BLOCK + size + pad
        self._pending += n
        self._offset += n
        self.members += 1
        if self._pending >= _FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        if self._chunks:
            self._sink.write(b"".join(self._chunks))
            self._chunks.clear()
            self._pending = 0

    def close(self) -> Digest:
        """End the archive (two zero blocks, padded to a whole record) and return its digest."""
        end = 2 * BLOCK
        end += -(self._offset + end) % RECORD
        self._chunks.append(b"\0" * end)
        self._flush()
        if self._gz is not None:
            self._gz.close()
        return self._out.close()
