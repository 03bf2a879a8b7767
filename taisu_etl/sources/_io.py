"""Byte-level helpers shared by the readers: opening (transparently decompressing), sniffing, lines.

Compression is recognised by its magic bytes, not the file name, so a gzip file named `.csv`
still reads and a plain file named `.csv.gz` is not refused for its name.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from taisu_etl.errors import InputError
from taisu_etl.sources.records import BadRow

# A line longer than this is not a caption row: reading it whole could exhaust memory (a 30 GB
# single-line JSON given to a line reader, a binary file with no newline), so it is skipped.
MAX_LINE_BYTES = 4 << 20

SNIFF_BYTES = 8192

# Errors a decompressor raises on truncated or corrupt data.
STREAM_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError, OSError)

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"PAR1", "a Parquet file"),
    (b"PK\x03\x04", "a ZIP archive (or an .xlsx/.docx file)"),
    (b"%PDF", "a PDF document"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x7fELF", "an executable"),
    (b"\x1f\x8b", "gzip data"),
    (b"\xfd7zXZ\x00", "xz data"),
)


class TruncatedInput(InputError):
    """An input that breaks off part-way (truncated or corrupt data): everything before `position` was read whole.

    Readers raise it instead of yielding a bad row, so that nobody reading rows mistakes a partial
    file for a whole one; the ingest stage keeps the rows before the break and records the break
    as a `truncated_input` issue (`bad_row`).
    """

    def __init__(self, path: str, position: str, detail: str) -> None:
        self.position = position  # "after line 17", "after row 17", "after entry 17", "before the first line"
        self.detail = " ".join(detail.split())  # decoders' messages can span lines; an error is one line
        super().__init__(path, self.detail)

    def bad_row(self) -> BadRow:
        return BadRow(self.path, self.position, "truncated_input", self.detail)


def compression_of(head: bytes) -> str | None:
    """'gzip', 'bz2', 'xz' or None, from the first bytes of a file."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh") and head[3:4].isdigit() and head[4:10] == b"1AY&SY":
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    return None


def read_head(path: str | os.PathLike[str], size: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def open_binary(path: str | os.PathLike[str]) -> BinaryIO:
    """Open `path` for binary reading, decompressing gzip/bzip2/xz on the fly."""
    kind = compression_of(read_head(path))
    if kind == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if kind == "bz2":
        return bz2.open(path, "rb")  # type: ignore[return-value]
    if kind == "xz":
        return lzma.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def describe_binary(head: bytes) -> str | None:
    """What `head` looks like if it is clearly not text (a known signature or NUL bytes), else None."""
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text (convert it to UTF-8)"
    if head[:12].startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "a WebP image"
    if b"\x00" in head:
        return "binary data (it contains NUL bytes)"
    return None


def _decompressed_head(path: str | os.PathLike[str], size: int) -> bytes:
    """Up to `size` decompressed bytes; of truncated data, those before the break (the line reader
    then stops at the break and says where). TruncatedInput when not one byte can be decompressed."""
    got = bytearray()
    with open_binary(path) as f:
        while len(got) < size:
            try:
                chunk = f.read1(size - len(got))  # read() would drop the bytes decompressed before the break
            except STREAM_ERRORS as exc:
                if got:
                    break
                raise TruncatedInput(
                    str(path), "before the first line", f"compressed data is truncated or corrupt from the start ({exc}); re-download the file"
                ) from None
            if not chunk:
                break
            got += chunk
    return bytes(got)


def text_head(path: str | os.PathLike[str], what: str) -> bytes:
    """The first decompressed bytes of a file that must be text; InputError if it is not."""
    raw = read_head(path, SNIFF_BYTES)
    if compression_of(raw) is not None:
        raw = _decompressed_head(path, SNIFF_BYTES)
    found = describe_binary(raw)
    if found is not None:
        raise InputError(str(path), f"not {what}: it looks like {found}; check the file name and format")
    return raw


def require_file(path: str | os.PathLike[str]) -> None:
    p = Path(path)
    if not p.exists():
        raise InputError(str(path), "no such file; check the path")
    if not p.is_file():
        raise InputError(str(path), "not a regular file; give the path of a file")


def iter_lines(f: BinaryIO, origin: str, max_len: int | None = None) -> Iterator[tuple[int, bytes | None]]:
    """(line number, raw line with its newline) per physical line; None for a line over `max_len`
    (default MAX_LINE_BYTES).

    Bounded memory whatever the input: an over-long line is drained in chunks and never held.
    A truncated compressed stream is a TruncatedInput naming the last good line; no part of the
    line it broke in is yielded.
    """
    if max_len is None:
        max_len = MAX_LINE_BYTES
    lineno = 0
    while True:
        try:
            chunk = f.readline(max_len + 1)
        except STREAM_ERRORS as exc:
            raise TruncatedInput(
                origin, f"after line {lineno}" if lineno else "before the first line",
                f"compressed data is truncated or corrupt after line {lineno} ({exc}); re-download the file",
            ) from None
        if not chunk:
            return
        lineno += 1
        if len(chunk) <= max_len or chunk.endswith(b"\n"):
            yield lineno, chunk
            continue
        try:
            while True:
                more = f.readline(1 << 20)
                if not more or more.endswith(b"\n"):
                    break
        except STREAM_ERRORS as exc:
            raise TruncatedInput(
                origin, f"after line {lineno - 1}", f"compressed data is truncated or corrupt in line {lineno} ({exc}); re-download the file"
            ) from None
        yield lineno, None


def too_long_detail() -> str:
    return f"line longer than {MAX_LINE_BYTES} bytes"
