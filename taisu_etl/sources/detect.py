"""Which reader a file needs: by its name, confirmed (or, for odd names, decided) by its first bytes.

A file whose bytes contradict its name (a PNG called `.csv`, a `.parquet` without PAR1) is an
InputError here, before a single row is read, rather than thousands of `unparsable` rows later.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from taisu_etl.errors import InputError
from taisu_etl.sources._io import compression_of, read_head, require_file, text_head
from taisu_etl.sources.records import BadRow, SourceRow
from taisu_etl.sources.tabular import check_parquet_magic, read_csv, read_jsonl, read_parquet
from taisu_etl.sources.taisu import caption_form, check_archive, is_archive_name

FORMATS = ("csv", "tsv", "jsonl", "parquet", "taisu-archive", "taisu-captions")
URL_LIST_FORMATS = ("csv", "tsv", "jsonl", "parquet")

_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "taisu-captions",
    ".txt": "taisu-captions",
}
_COMPRESSED = (".gz", ".bz2", ".xz")
_WHAT = {"csv": "a CSV file", "tsv": "a TSV file", "jsonl": "a JSON-lines file"}


def detect_format(path: str | os.PathLike[str]) -> str:
    """One of FORMATS for `path`; InputError if the content is not what the name says, or unknowable."""
    origin = str(path)
    require_file(path)
    if is_archive_name(path):
        check_archive(path)
        return "taisu-archive"
    name = Path(path).name.lower()
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    guess = _BY_SUFFIX.get(Path(name).suffix)
    if guess == "parquet":
        check_parquet_magic(path)
        return guess
    if guess in ("csv", "tsv"):
        text_head(path, _WHAT[guess])
        return guess
    if guess == "jsonl":
        return _jsonl_kind(text_head(path, _WHAT[guess]))
    if guess == "taisu-captions":
        head = text_head(path, "a TaiSu caption file")
        if name.endswith(".json") and _has_url_key(head):
            return "jsonl"  # a URL list in JSON lines that was named .json
        caption_form(path)
        return guess
    return _sniff(path, origin)


def _first_line(head: bytes) -> bytes:
    for line in head.lstrip(b"\xef\xbb\xbf").splitlines():
        if line.strip():
            return line.strip()
    return b""


def _has_url_key(head: bytes) -> bool:
    try:
        obj = json.loads(_first_line(head))
    except ValueError:
        return False
    return isinstance(obj, dict) and any(k in obj for k in ("url", "URL"))


def _jsonl_kind(head: bytes) -> str:
    """'taisu-captions' when the first line is a TaiSu caption record, else 'jsonl' (a URL list)."""
    try:
        obj = json.loads(_first_line(head))
    except ValueError:
        return "jsonl"
    if not isinstance(obj, dict) or any(k in obj for k in ("url", "URL")):
        return "jsonl"
    if "id" in obj and ("w" in obj or "g" in obj):
        return "taisu-captions"
    if len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
        return "taisu-captions"
    return "jsonl"


def _sniff(path: str | os.PathLike[str], origin: str) -> str:
    raw = read_head(path, 16)
    if raw.startswith(b"PAR1"):
        check_parquet_magic(path)
        return "parquet"
    if compression_of(raw) is not None or _looks_like_tar(path):
        try:
            check_archive(path)
            return "taisu-archive"
        except InputError:
            pass  # a compressed text file: decided below from its decompressed text
    head = text_head(path, "a source file")
    line = _first_line(head)
    if line.startswith(b"{"):
        kind = _jsonl_kind(head)
        if kind == "taisu-captions":
            caption_form(path)
        return kind
    if b"*****" in line:
        return "taisu-captions"
    if b"\t" in line:
        return "tsv"
    if b"," in line:
        return "csv"
    raise InputError(
        origin,
        "cannot tell the format from the name or the content; name it .csv, .tsv, .jsonl or .parquet "
        "(URL lists), .tar/.tgz (TaiSu images), or .json/.txt (TaiSu captions)",
    )


def _looks_like_tar(path: str | os.PathLike[str]) -> bool:
    with open(path, "rb") as f:
        f.seek(257)
        return f.read(5) == b"ustar"


# Option names differ per reader (JSON has keys, tables have columns); callers use one spelling.
_JSONL_OPTIONS = {"url_column": "url_key", "caption_column": "caption_key", "extra_columns": "extra_keys"}


def read_source(path: str | os.PathLike[str], fmt: str | None = None, **options: Any) -> Iterator[SourceRow | BadRow]:
    """Records of one URL-list file (csv, tsv, jsonl, parquet), its format detected unless given.

    options go to the reader: url_column, caption_column, extra_columns for every format
    (JSON lines also take url_key/caption_key/extra_keys), delimiter/quoting/encoding for
    CSV/TSV, encoding for JSON lines, batch_size for Parquet.
    The format is checked now, so a wrong file fails at the call, before any row is read.
    """
    kind = fmt or detect_format(path)
    if kind in ("csv", "tsv"):
        if kind == "tsv":
            options.setdefault("delimiter", "\t")
        return read_csv(path, **options)
    if kind == "jsonl":
        return read_jsonl(path, **{_JSONL_OPTIONS.get(k, k): v for k, v in options.items()})
    if kind == "parquet":
        return read_parquet(path, **options)
    if kind in ("taisu-archive", "taisu-captions"):
        raise InputError(
            str(path),
            "a TaiSu release file: archives and caption files are read together with read_taisu(archives, captions)",
        )
    raise ValueError(f"unknown format {kind!r}; use one of {', '.join(FORMATS)}")
