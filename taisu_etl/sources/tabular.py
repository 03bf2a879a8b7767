"""Streaming readers of URL + caption lists: CSV/TSV with a header, JSON lines, Parquet.

Wukong's release (`wukong_100m_N.csv`, columns `url,caption`) and LAION-style Parquet (`URL`,
`TEXT`) read as they are: when the default column names are absent the LAION names are tried.

Memory stays flat: text files are read one physical line at a time and decoded per line, so one
line of bad UTF-8 costs one bad row, not the file; Parquet is read in record batches of the
needed columns only. Problems with a row become `BadRow`s (a NUL character in a field the ledger
would store is one: `nul_char`); problems with the file (wrong columns, not a CSV at all) raise
one `InputError`, and a file that breaks off (truncated compression, corrupt Parquet data) raises
its subclass `TruncatedInput` after the rows before the break.
"""

from __future__ import annotations

import csv
import json
import os
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from taisu_etl.errors import InputError
from taisu_etl.sources._io import TruncatedInput, describe_binary, iter_lines, open_binary, require_file, text_head, too_long_detail
from taisu_etl.sources.records import BadRow, SourceRow, nul_field, nul_row
from taisu_etl.urls import normalise_url

Record = SourceRow | BadRow

DEFAULT_URL = "url"
DEFAULT_CAPTION = "caption"
# Tried, in order, only when the caller kept the default name and the file lacks it.
_ALIASES = {DEFAULT_URL: ("URL", "image_url", "img_url"), DEFAULT_CAPTION: ("TEXT", "text", "caption_zh")}

# A quoted field running over more physical lines than this is a stray quote, not a caption.
MAX_RECORD_LINES = 100

_HTTP = frozenset({"http", "https"})


# --------------------------------------------------------------------------- shared row logic


def check_url(raw: Any, origin: str, position: str, line: int | None) -> tuple[str, str] | BadRow:
    """(stripped URL, normalised URL), or the BadRow saying why the value is not a usable URL."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return BadRow(origin, position, "missing_url", "no URL in this row", line)
    if not isinstance(raw, str):
        return BadRow(origin, position, "unparsable", f"URL is a {type(raw).__name__}, not a string: {raw!r}", line)
    url = raw.strip()
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        return BadRow(origin, position, "unparsable", f"URL cannot be parsed ({exc}): {_clip(url)}", line)
    if scheme not in _HTTP:
        said = f"scheme {scheme!r}" if scheme else "no scheme"
        return BadRow(origin, position, "bad_scheme", f"{said}, only http(s) is fetched: {_clip(url)}", line)
    try:
        return url, normalise_url(url)
    except ValueError as exc:
        return BadRow(origin, position, "unparsable", str(exc), line)


def _clip(text: str, width: int = 120) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _resolve(found: Sequence[str], wanted: str, default: str, option: str, origin: str, line: int | None) -> str:
    """The name in `found` to use for `wanted`; InputError listing what the file has otherwise."""
    if wanted in found:
        return wanted
    candidates = [wanted]
    if wanted == default:
        candidates.extend(_ALIASES.get(default, ()))
    lowered = {name.lower(): name for name in found}
    for name in candidates:
        if name in found:
            return name
        if name.lower() in lowered:
            return lowered[name.lower()]
    shown = ", ".join(repr(n) for n in found) or "none"
    raise InputError(
        origin,
        f"no column {wanted!r} (found columns: {shown}); set {option}= to the name this file uses",
        line=line,
    )


def _make_row(
    url_value: Any,
    caption: Any,
    origin: str,
    position: str,
    line: int | None,
    extra: dict[str, Any] | None,
) -> Record:
    values = {"URL": url_value, "caption": caption}
    if extra:
        values.update((f"column {name!r}", value) for name, value in extra.items())
    nul = nul_field(values)
    if nul is not None:
        return nul_row(nul, origin, position, line)
    checked = check_url(url_value, origin, position, line)
    if isinstance(checked, BadRow):
        return checked
    if caption is not None and not isinstance(caption, str):
        return BadRow(origin, position, "unparsable", f"caption is a {type(caption).__name__}, not a string", line)
    url, normalised = checked
    return SourceRow(url, caption, origin, position, extra=extra, line=line, normalised_url=normalised)


# --------------------------------------------------------------------------- CSV / TSV


class _Line:
    __slots__ = ("number", "text", "error")

    def __init__(self, number: int, text: str | None, error: str | None) -> None:
        self.number = number
        self.text = text  # None: the line was too long to read
        self.error = error  # the UnicodeDecodeError message when the bytes were not valid


class _Broken(Exception):
    """Raised from the line feed to make csv.reader give up on the record in progress."""


def _decoded_lines(f: Any, origin: str, encoding: str) -> Iterator[_Line]:
    for number, raw in iter_lines(f, origin):
        if raw is None:
            yield _Line(number, None, None)
            continue
        try:
            text = raw.decode(encoding)
            error = None
        except UnicodeDecodeError as exc:
            # Keep the line's structure (delimiters, quotes) so the next record starts where it should.
            text = raw.decode(encoding, errors="replace")
            error = f"not valid {encoding}: {exc.reason} at byte {exc.start}"
        if number == 1 and text.startswith("\ufeff"):
            text = text[1:]
        yield _Line(number, text, error)


def _csv_records(
    lines: Iterator[_Line], delimiter: str, quoting: bool
) -> Iterator[tuple[_Line, list[str] | None, str | None]]:
    """(first line, fields, error) per CSV record; fields None when the record is unparsable.

    csv.reader gives correct quoting (commas and newlines inside quoted captions), but after a
    syntax error its position is lost. So the lines of the record in progress are kept; on an
    error the first line is reported and the others are fed again to a fresh reader, and a stray
    quote costs one row instead of swallowing the rows after it.
    """
    replay: deque[_Line] = deque()
    options: dict[str, Any] = {"delimiter": delimiter, "strict": True}
    if not quoting:
        options["quoting"] = csv.QUOTE_NONE
    while True:
        current: list[_Line] = []

        def feed(current: list[_Line] = current) -> Iterator[str]:
            while True:
                if replay:
                    line = replay.popleft()
                else:
                    pulled = next(lines, None)
                    if pulled is None:
                        return
                    line = pulled
                current.append(line)
                if line.text is None:
                    raise _Broken(too_long_detail())
                if len(current) > MAX_RECORD_LINES:
                    raise _Broken(f"quoted field not closed within {MAX_RECORD_LINES} lines")
                yield line.text

        reader = csv.reader(feed(), **options)
        try:
            for fields in reader:
                first = current[0]
                error = next((line.error for line in current if line.error), None)
                current.clear()
                yield first, fields, error
            return
        except (csv.Error, _Broken) as exc:
            if not current:  # cannot happen (the reader only fails on lines it was fed); never loop
                raise
            first = current[0]
            replay.extendleft(reversed(current[1:]))
            if first.text is None:
                detail = too_long_detail()
            elif isinstance(exc, _Broken):
                detail = str(exc)
            elif "end of data" in str(exc):
                detail = "quoted field not closed before the end of the file"
            else:
                detail = f"CSV syntax: {exc}"
            yield first, None, first.error or detail


def read_csv(
    path: str | os.PathLike[str],
    *,
    url_column: str = DEFAULT_URL,
    caption_column: str | None = DEFAULT_CAPTION,
    delimiter: str | None = None,
    extra_columns: Sequence[str] = (),
    encoding: str = "utf-8",
    quoting: bool = True,
) -> Iterator[Record]:
    """Rows of a CSV/TSV file with a header line (gzip/bzip2/xz compressed or not).

    delimiter: None picks a tab for `.tsv` / `.tsv.gz` names and a comma otherwise.
    caption_column: None for a list of URLs without captions.
    extra_columns: other columns to carry into `SourceRow.extra` (e.g. width, height).
    quoting: False reads quote characters literally (TSVs written without CSV quoting).
    """
    origin = str(path)
    sep = delimiter if delimiter is not None else ("\t" if _is_tsv(path) else ",")
    what = "a TSV file" if sep == "\t" else "a CSV file"
    require_file(path)
    text_head(path, what)
    with open_binary(path) as f:
        records = _csv_records(_decoded_lines(f, origin, encoding), sep, quoting)
        header = None
        for first, fields, error in records:
            if fields == []:
                continue
            if fields is None or error is not None:
                hint = "; if the file is not UTF-8, pass encoding= (e.g. 'gb18030')" if first.error else ""
                raise InputError(origin, f"header line cannot be read as {what} ({error}){hint}", line=first.number)
            header = [name.strip() for name in fields]
            header_line = first.number
            break
        if header is None:
            raise InputError(origin, f"empty: {what} needs a header line naming its columns")
        url_name = _resolve(header, url_column, DEFAULT_URL, "url_column", origin, header_line)
        cap_name = (
            _resolve(header, caption_column, DEFAULT_CAPTION, "caption_column", origin, header_line)
            if caption_column is not None
            else None
        )
        url_i = header.index(url_name)
        cap_i = header.index(cap_name) if cap_name is not None else None
        extras = [
            (name, header.index(_resolve(header, name, name, "extra_columns", origin, header_line)))
            for name in extra_columns
        ]
        width = len(header)

        for first, fields, error in records:
            line = first.number
            position = f"line {line}"
            if fields is None:
                reason = "bad_utf8" if first.error else "unparsable"
                yield BadRow(origin, position, reason, error or "unparsable", line)
                continue
            if not fields or (len(fields) == 1 and not fields[0].strip() and width > 1):
                continue  # blank line
            if error is not None:
                yield BadRow(origin, position, "bad_utf8", error, line)
                continue
            if len(fields) != width:
                yield BadRow(origin, position, "unparsable", f"{len(fields)} fields where the header has {width}", line)
                continue
            extra = {name: fields[i] for name, i in extras} if extras else None
            caption = fields[cap_i] if cap_i is not None else None
            yield _make_row(fields[url_i], caption, origin, position, line, extra)


def _is_tsv(path: str | os.PathLike[str]) -> bool:
    suffixes = [s.lower() for s in Path(path).suffixes]
    return ".tsv" in suffixes[-2:] or ".tab" in suffixes[-2:]


# --------------------------------------------------------------------------- JSON lines


def read_jsonl(
    path: str | os.PathLike[str],
    *,
    url_key: str = DEFAULT_URL,
    caption_key: str | None = DEFAULT_CAPTION,
    extra_keys: Sequence[str] = (),
    encoding: str = "utf-8",
) -> Iterator[Record]:
    """Rows of a JSON-lines file: one object per line (gzip/bzip2/xz compressed or not).

    With the default keys, `URL`/`TEXT` are used on lines that lack `url`/`caption`.
    """
    origin = str(path)
    require_file(path)
    text_head(path, "a JSON-lines file")
    url_keys = (url_key, *_ALIASES[DEFAULT_URL]) if url_key == DEFAULT_URL else (url_key,)
    cap_keys: tuple[str, ...] = ()
    if caption_key is not None:
        cap_keys = (caption_key, *_ALIASES[DEFAULT_CAPTION]) if caption_key == DEFAULT_CAPTION else (caption_key,)
    with open_binary(path) as f:
        for line, raw in iter_lines(f, origin):
            position = f"line {line}"
            if raw is None:
                yield BadRow(origin, position, "unparsable", too_long_detail(), line)
                continue
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as exc:
                yield BadRow(
                    origin, position, "bad_utf8", f"not valid {encoding}: {exc.reason} at byte {exc.start}", line
                )
                continue
            if line == 1:
                text = text.lstrip("\ufeff")
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError as exc:
                yield BadRow(origin, position, "unparsable", f"not JSON: {exc}", line)
                continue
            if not isinstance(obj, dict):
                yield BadRow(origin, position, "unparsable", f"a JSON {type(obj).__name__}, not an object", line)
                continue
            url_value = next((obj[k] for k in url_keys if k in obj), None)
            caption = next((obj[k] for k in cap_keys if k in obj), None)
            extra = {k: obj[k] for k in extra_keys if k in obj} if extra_keys else None
            yield _make_row(url_value, caption, origin, position, line, extra)


# --------------------------------------------------------------------------- Parquet


def read_parquet(
    path: str | os.PathLike[str],
    *,
    url_column: str = DEFAULT_URL,
    caption_column: str | None = DEFAULT_CAPTION,
    extra_columns: Sequence[str] = (),
    batch_size: int = 65536,
) -> Iterator[Record]:
    """Rows of a Parquet file, read in record batches of only the needed columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    origin = str(path)
    require_file(path)
    check_parquet_magic(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(origin, f"not a readable Parquet file ({exc}); re-export or re-download it") from None
    names = pf.schema_arrow.names
    url_name = _resolve(names, url_column, DEFAULT_URL, "url_column", origin, None)
    cap_name = (
        _resolve(names, caption_column, DEFAULT_CAPTION, "caption_column", origin, None)
        if caption_column is not None
        else None
    )
    extra_names = [_resolve(names, name, name, "extra_columns", origin, None) for name in extra_columns]
    for name in (url_name, cap_name):
        if name is None:
            continue
        kind = pf.schema_arrow.field(name).type
        if not (
            pa.types.is_string(kind)
            or pa.types.is_large_string(kind)
            or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)
            or pa.types.is_null(kind)
        ):
            raise InputError(origin, f"column {name!r} holds {kind}, not text; set the column options to text columns")
    columns = list(dict.fromkeys([url_name, *([cap_name] if cap_name else []), *extra_names]))

    row = 0
    try:
        batches = pf.iter_batches(batch_size=batch_size, columns=columns)
        for batch in batches:
            url_values, url_bad = _texts(batch.column(batch.schema.get_field_index(url_name)))
            if cap_name is not None:
                cap_values, cap_bad = _texts(batch.column(batch.schema.get_field_index(cap_name)))
            else:
                cap_values, cap_bad = [None] * batch.num_rows, {}
            extra_values = {n: batch.column(batch.schema.get_field_index(n)).to_pylist() for n in extra_names}
            for i in range(batch.num_rows):
                row += 1
                position = f"row {row}"
                bad = url_bad.get(i) or cap_bad.get(i)
                if bad is not None:
                    yield BadRow(origin, position, "bad_utf8", bad)
                    continue
                extra = {n: values[i] for n, values in extra_values.items()} if extra_names else None
                yield _make_row(url_values[i], cap_values[i], origin, position, None, extra)
    except (pa.ArrowException, OSError) as exc:
        raise TruncatedInput(
            origin, f"after row {row}", f"Parquet data is corrupt after row {row} ({exc}); re-export or re-download it"
        ) from None


def _texts(column: Any) -> tuple[list[str | None], dict[int, str]]:
    """Python strings of an Arrow text column, and {index: message} for values that are not UTF-8.

    Arrow does not validate UTF-8 when reading Parquet, so a single bad value would make
    to_pylist() fail the whole batch; the slow per-value path runs only for such a batch.
    """
    import pyarrow as pa

    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            return column.to_pylist(), {}
        except UnicodeDecodeError:
            column = column.cast(pa.large_binary())
    elif pa.types.is_null(kind):
        return [None] * len(column), {}
    values: list[str | None] = []
    bad: dict[int, str] = {}
    for i, raw in enumerate(column.to_pylist()):
        if raw is None:
            values.append(None)
            continue
        try:
            values.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            values.append(None)
            bad[i] = f"not valid UTF-8: {exc.reason} at byte {exc.start}"
    return values, bad


def check_parquet_magic(path: str | os.PathLike[str]) -> None:
    """InputError unless the file starts and ends with Parquet's PAR1 magic."""
    origin = str(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(4)
        if size >= 8:
            f.seek(size - 4)
        tail = f.read(4)
    if head != b"PAR1":
        seen = describe_binary(head) or "text or another format"
        raise InputError(origin, f"not a Parquet file: no PAR1 magic at the start (it looks like {seen})")
    if size < 12 or tail != b"PAR1":
        raise InputError(origin, "not a complete Parquet file: no PAR1 footer (truncated?); re-download it")
