"""Readers of TaiSu's own release: image archives plus caption files, joined by image id.

TaiSu's URLs have mostly expired, so its images ship as files: tar parts (`baidu_image10.tgz`,
`.tar`, `.tar.gz`) holding `<id>.jpg`, and captions in one of three published forms:

    single JSON object  {"<id>": {"w": web_caption, "g": generated_caption}, ...}
                        one line, 30 GB in the real release: parsed incrementally with ijson
    JSON lines          {"id": "<id>", "w": ..., "g": ...}  or  {"<id>": {"w": ..., "g": ...}}
    TXT                 <id>*****<web_caption>*****<generated_caption>   (`None`: no caption)

Joining 219M captions to 166M images cannot happen in memory, so `read_taisu` first streams the
caption files into an on-disk SQLite index keyed by id, then streams the archives (never
extracted to disk) and looks each image up, and finally lists the captions no image claimed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import ijson

from taisu_etl.errors import InputError
from taisu_etl.sources._io import (
    STREAM_ERRORS,
    TruncatedInput,
    compression_of,
    describe_binary,
    iter_lines,
    open_binary,
    read_head,
    require_file,
    text_head,
    too_long_detail,
)
from taisu_etl.sources.records import BadRow, SourceRow, nul_field, nul_row
from taisu_etl.sources.tabular import check_url

Record = SourceRow | BadRow

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})
DEFAULT_MAX_MEMBER_BYTES = 64 << 20
TXT_SEPARATOR = "*****"
# TaiSu's TXT form writes Python's None for a missing caption; the JSON forms may carry it too.
_MISSING = frozenset({"", "None"})
_RECORD_KEYS = frozenset({"id", "w", "g", "url"})


@dataclass(frozen=True, slots=True)
class CaptionRecord:
    """One caption entry: image id, web caption `w`, generated caption `g`, and where it was read."""

    id: str
    w: str | None
    g: str | None
    origin: str
    position: str
    line: int | None = None
    url: str | None = None

    @property
    def where(self) -> str:
        return f"{self.origin}:{self.line}" if self.line is not None else f"{self.origin} ({self.position})"


# --------------------------------------------------------------------------- caption files


def _clean_id(raw: str) -> str:
    """The image id as archive members spell it: captions keyed `123.jpg` join member `123.jpg`."""
    text = raw.strip()
    suffix = PurePosixPath(text).suffix.lower()
    return text[: -len(suffix)] if suffix in IMAGE_SUFFIXES else text


def _caption(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value.strip() in _MISSING):
        return None
    if not isinstance(value, str):
        raise TypeError(type(value).__name__)
    return value


def _entry(key: Any, value: Any, origin: str, position: str, line: int | None) -> CaptionRecord | BadRow:
    """A caption record from an id and its value ({"w":..,"g":..}, a bare caption string, or null)."""
    if not isinstance(key, (str, int)) or isinstance(key, bool) or not str(key).strip():
        return BadRow(origin, position, "unparsable", f"caption id is missing or not text: {key!r}", line)
    image_id = _clean_id(str(key))
    url = None
    try:
        if isinstance(value, dict):
            w, g = _caption(value.get("w")), _caption(value.get("g"))
            raw_url = value.get("url")
            url = raw_url if isinstance(raw_url, str) and raw_url.strip() else None
        else:
            w, g = _caption(value), None
    except TypeError as exc:
        return BadRow(origin, position, "unparsable", f"caption of id {image_id!r} is a {exc}, not text", line)
    nul = nul_field({"caption id": image_id, "web caption (w)": w, "generated caption (g)": g, "URL": url})
    if nul is not None:
        return nul_row(nul, origin, position, line)
    return CaptionRecord(image_id, w, g, origin, position, line, url)


def caption_form(path: str | os.PathLike[str]) -> str:
    """'json-object', 'jsonl' or 'txt'; InputError for a file in none of TaiSu's caption forms."""
    origin = str(path)
    require_file(path)
    head = text_head(path, "a TaiSu caption file").lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head:
        raise InputError(origin, "empty caption file")
    if head.startswith(b"{"):
        return _json_form(path)
    first_line = head.split(b"\n", 1)[0]
    if TXT_SEPARATOR.encode() in first_line:
        return "txt"
    raise InputError(
        origin,
        "not a TaiSu caption file: expected a JSON object {id: {w, g}}, JSON lines, or id*****w*****g lines",
        line=1,
    )


def _json_form(path: str | os.PathLike[str]) -> str:
    """Tell TaiSu's single JSON object from JSON lines by the shape of the first value.

    Both start `{"<id>": {`. In the single object a second key follows the first entry; in the
    one-key-per-line form the first object closes and another value follows. A first key that
    is a record field with a scalar value (`{"id": "123", "w": ...}`) is the record-per-line
    form. Only the first entry or two are parsed, so this costs nothing on a 30 GB file.
    """
    try:
        with open_binary(path) as f:
            events = ijson.parse(f, multiple_values=True)
            next(events)  # start_map: the caller saw "{"
            _, event, first_key = next(events)
            if event == "end_map":  # "{}" first: an empty object, or an empty first line
                return "json-object" if next(events, None) is None else "jsonl"
            _, event, _ = next(events)
            if first_key in _RECORD_KEYS and event not in ("start_map", "start_array"):
                return "jsonl"
            depth = 1 if event in ("start_map", "start_array") else 0
            while depth:
                _, event, _ = next(events)
                if event in ("start_map", "start_array"):
                    depth += 1
                elif event in ("end_map", "end_array"):
                    depth -= 1
            _, event, _ = next(events)
            if event == "map_key":
                return "json-object"
            return "json-object" if next(events, None) is None else "jsonl"
    except (ijson.JSONError, StopIteration):
        # Broken at the very start: let the line reader report the bad lines one by one
        # (it refuses over-long lines, so a broken 30 GB object costs one bounded read).
        return "jsonl"
    except STREAM_ERRORS as exc:
        raise TruncatedInput(
            str(path), "before the first record", f"compressed data is truncated or corrupt near the start ({exc}); re-download the file"
        ) from None


def iter_caption_file(path: str | os.PathLike[str], form: str | None = None) -> Iterator[CaptionRecord | BadRow]:
    """Caption records of one TaiSu caption file, in file order; bad lines become BadRows.

    form: 'json-object', 'jsonl' or 'txt'; None detects it from the first bytes.
    A file that breaks off part-way (a single JSON object cannot be resynchronised after an error,
    nor a compressed stream) raises TruncatedInput after the records before the break.
    """
    origin = str(path)
    form = form or caption_form(path)
    if form == "json-object":
        yield from _iter_json_object(path, origin)
    elif form == "jsonl":
        yield from _iter_caption_lines(path, origin, _parse_jsonl_line)
    elif form == "txt":
        yield from _iter_caption_lines(path, origin, _parse_txt_line)
    else:
        raise ValueError(f"unknown caption form {form!r}; use 'json-object', 'jsonl' or 'txt'")


def _iter_json_object(path: str | os.PathLike[str], origin: str) -> Iterator[CaptionRecord | BadRow]:
    count = 0
    try:
        with open_binary(path) as f:
            # kvitems reads fixed-size chunks and builds one entry at a time: memory stays flat.
            for key, value in ijson.kvitems(f, "", use_float=True):
                count += 1
                yield _entry(key, value, origin, f"entry {count}", None)
    except ijson.JSONError as exc:
        raise TruncatedInput(
            origin,
            f"after entry {count}",
            f"JSON object is broken after entry {count} ({exc}); the file is truncated or corrupt, re-download it",
        ) from None
    except STREAM_ERRORS as exc:
        raise TruncatedInput(
            origin, f"after entry {count}", f"compressed data is truncated or corrupt after entry {count} ({exc}); re-download the file"
        ) from None


def _parse_jsonl_line(text: str, origin: str, position: str, line: int) -> CaptionRecord | BadRow:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return BadRow(origin, position, "unparsable", f"not JSON: {exc}", line)
    if not isinstance(obj, dict):
        return BadRow(origin, position, "unparsable", f"a JSON {type(obj).__name__}, not an object", line)
    if "id" in obj and not isinstance(obj["id"], (dict, list)):
        return _entry(obj["id"], obj, origin, position, line)
    if len(obj) == 1:
        ((key, value),) = obj.items()
        return _entry(key, value, origin, position, line)
    return BadRow(
        origin, position, "unparsable", 'expected {"id": .., "w": .., "g": ..} or {"<id>": {"w": .., "g": ..}}', line
    )


def _parse_txt_line(text: str, origin: str, position: str, line: int) -> CaptionRecord | BadRow:
    parts = text.rstrip("\r\n").split(TXT_SEPARATOR)
    if len(parts) not in (2, 3):
        return BadRow(
            origin, position, "unparsable", f"expected id*****w*****g, found {len(parts)} '*****'-separated parts", line
        )
    return _entry(parts[0], {"w": parts[1], "g": parts[2] if len(parts) == 3 else None}, origin, position, line)


def _iter_caption_lines(path: str | os.PathLike[str], origin: str, parse: Any) -> Iterator[CaptionRecord | BadRow]:
    with open_binary(path) as f:
        for line, raw in iter_lines(f, origin):
            position = f"line {line}"
            if raw is None:
                yield BadRow(origin, position, "unparsable", too_long_detail(), line)
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield BadRow(origin, position, "bad_utf8", f"not valid UTF-8: {exc.reason} at byte {exc.start}", line)
                continue
            if line == 1:
                text = text.lstrip("\ufeff")
            if text.strip():
                yield parse(text, origin, position, line)


# --------------------------------------------------------------------------- archives


def image_kind(data: bytes) -> str | None:
    """'jpeg', 'png', 'webp' or 'gif' from the signature, else None (the fetch allowlist)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def check_archive(path: str | os.PathLike[str]) -> None:
    """InputError unless `path` starts like a tar archive (plain, gzip, bzip2 or xz).

    A compressed file whose data breaks off before the first header passes: that is a damaged
    archive, which reading records (truncated_input) without stopping the other archives, not a
    wrong file.
    """
    origin = str(path)
    require_file(path)
    compressed = compression_of(read_head(path)) is not None
    try:
        with open_binary(path) as f:
            block = f.read(tarfile.BLOCKSIZE)
    except STREAM_ERRORS:
        if compressed:
            return
        raise
    if len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0"):
        return  # an empty archive: just the end-of-archive marker
    if compressed and len(block) < tarfile.BLOCKSIZE:
        return
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        found = describe_binary(block)
        if found is not None:
            seen = f"it looks like {found}"
        elif len(block) < tarfile.BLOCKSIZE:
            seen = f"only {len(block)} bytes"
        else:
            seen = "it looks like text or another format"
        raise InputError(origin, f"not a tar archive ({seen}); give TaiSu's .tar/.tgz image parts") from None


class _Counting:
    """Counts the bytes tarfile pulls through, to tell a finished archive from a truncated one.

    tarfile's stream reader loops until it has the bytes it asked for, so short reads are fine.
    """

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        # read1 hands over what was decompressed before a truncation; read(n) would raise and
        # drop up to n good bytes, and the members in them.
        self._read = getattr(f, "read1", f.read)
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._read(size)
        self.count += len(data)
        return data


def _unsafe(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return name.startswith(("/", "\\")) or ".." in parts or (bool(parts) and ":" in parts[0])


@dataclass(frozen=True, slots=True)
class _Image:
    name: str
    image_id: str
    data: bytes


@dataclass(frozen=True, slots=True)
class _Damaged:
    """A member that yields no image. `image_id` is set whenever the name was usable, so that
    its caption is not reported a second time as having no image."""

    bad: BadRow
    image_id: str | None = None


def _iter_members(path: str | os.PathLike[str], max_member_bytes: int) -> Iterator[_Image | _Damaged]:
    """Each member of one archive, streamed: never extracted to disk, one member in memory.

    A fault inside the data (truncated gzip, corrupt deflate, short member) cannot be skipped
    over in a stream, so it ends this archive with one `truncated_input` BadRow; a bad member
    whose bytes are intact (not an image, too large, odd type) costs only that member
    (`damaged_member`).
    """
    origin = str(path)
    faults: tuple[type[BaseException], ...] = (tarfile.TarError, *STREAM_ERRORS)
    last: str | None = None

    def after() -> str:
        return f"after member {last}" if last is not None else "before the first member"

    def damaged(position: str, detail: str, image_id: str | None = None) -> _Damaged:
        return _Damaged(BadRow(origin, position, "damaged_member", detail), image_id)

    def broken(position: str, detail: str, image_id: str | None = None) -> _Damaged:
        return _Damaged(BadRow(origin, position, "truncated_input", detail), image_id)

    with open_binary(path) as raw:
        counted = _Counting(raw)
        try:
            tf = tarfile.open(fileobj=counted, mode="r|")  # type: ignore[call-overload]
        except faults as exc:
            yield broken(after(), f"archive cannot be read ({exc}); it is skipped")
            return
        with tf:
            while True:
                try:
                    member = tf.next()
                except faults as exc:
                    yield broken(after(), f"archive is truncated or corrupt ({exc}); the rest of it is skipped")
                    return
                if member is None:
                    break
                # Stream mode still appends every header to tf.members; a part holds millions.
                tf.members.clear()
                name = member.name
                position = f"member {name}"
                last = name
                if member.isdir():
                    continue
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    yield damaged(position, "member name is not valid UTF-8")
                    continue
                if "\x00" in name:  # possible in a pax header; the id and position would carry it into the ledger
                    yield damaged(position, "member name holds a NUL character (\\x00)")
                    continue
                if not member.isfile():
                    yield damaged(position, "not a regular file (link, device or fifo)")
                    continue
                if _unsafe(name):
                    yield damaged(position, "unsafe member name (absolute or with '..')")
                    continue
                pure = PurePosixPath(name)
                if pure.suffix.lower() not in IMAGE_SUFFIXES or not pure.stem:
                    yield damaged(position, "not an image member (expected <id>.jpg)")
                    continue
                image_id = _clean_id(pure.name)
                if member.size > max_member_bytes:
                    yield damaged(position, f"{member.size} bytes, over the cap of {max_member_bytes}", image_id)
                    continue
                try:
                    extracted = tf.extractfile(member)
                    data = extracted.read() if extracted is not None else b""
                except faults as exc:
                    yield broken(
                        position,
                        f"archive is truncated or corrupt inside this member ({exc}); the rest of it is skipped",
                        image_id,
                    )
                    return
                if image_kind(data) is None:
                    said = "empty" if not data else f"starts with {data[:8].hex(' ')}"
                    yield damaged(position, f"not a JPEG/PNG/WebP/GIF image ({said})", image_id)
                    continue
                yield _Image(name, image_id, data)

            # tarfile ends quietly on a missing or unreadable header past the first member, so a
            # truncated plain tar would pass for a complete one; check the end marker ourselves.
            end = tf.offset
            trailing = False
            try:
                while chunk := tf.fileobj.read(1 << 16):
                    trailing = trailing or bool(chunk.strip(b"\0"))
            except faults as exc:
                yield broken(after(), f"compressed data ends early ({exc}); the archive is truncated")
                return
            if counted.count < end + tarfile.BLOCKSIZE:
                yield broken(after(), "archive ends without its end-of-archive marker (truncated)")
            elif trailing:
                yield broken(after(), f"unreadable member header at byte {end}; the rest of the archive is skipped")


# --------------------------------------------------------------------------- the join


class _CaptionIndex:
    """Captions by id in a throw-away SQLite file: the join's memory does not grow with the release."""

    def __init__(self, directory: str) -> None:
        self.db = sqlite3.connect(os.path.join(directory, "captions.sqlite"), isolation_level=None)
        # A scratch file rebuilt on every run: durability would only cost time.
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA cache_size=-65536")
        self.db.execute(
            "CREATE TABLE captions (id TEXT NOT NULL UNIQUE, w TEXT, g TEXT, url TEXT,"
            " origin INTEGER NOT NULL, position TEXT NOT NULL, line INTEGER, matched INTEGER NOT NULL DEFAULT 0)"
        )
        self.origins: list[str] = []

    def add(self, rows: list[tuple[Any, ...]]) -> None:
        # A second record for an id fills in what the first lacked (the same captions given in two
        # forms, or w and g in separate files) and never overwrites it: first file wins.
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO captions (id, w, g, url, origin, position, line) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET w = coalesce(captions.w, excluded.w),"
            " g = coalesce(captions.g, excluded.g), url = coalesce(captions.url, excluded.url)",
            rows,
        )
        self.db.execute("COMMIT")

    def lookup(self, image_id: str) -> tuple[str | None, str | None, str | None] | None:
        return self.db.execute("SELECT w, g, url FROM captions WHERE id = ?", (image_id,)).fetchone()

    def mark(self, ids: list[str]) -> None:
        if ids:
            self.db.execute("BEGIN")
            self.db.executemany("UPDATE captions SET matched = 1 WHERE id = ?", [(i,) for i in ids])
            self.db.execute("COMMIT")

    def unmatched(self) -> Iterator[tuple[str, int, str, int | None]]:
        yield from self.db.execute("SELECT id, origin, position, line FROM captions WHERE matched = 0 ORDER BY rowid")

    def close(self) -> None:
        self.db.close()


def read_taisu(
    archives: Sequence[str | os.PathLike[str]],
    captions: Sequence[str | os.PathLike[str]],
    *,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    index_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 10_000,
) -> Iterator[Record]:
    """Images of TaiSu archive parts joined with their captions, then what could not be joined.

    Yields, in order: BadRows of the caption files; per archive member a SourceRow (image bytes,
    caption=w, generated_caption=g, source_id=id) or a BadRow (no_caption, damaged_member, and
    truncated_input where an archive breaks off: the next archive is still read); finally a BadRow
    no_image per caption that no member claimed, unless an archive broke off (its lost members
    may be those images, so that list waits for a run on the repaired archive).
    A caption file that breaks off raises TruncatedInput before any archive is read: every image
    whose caption came after the break would otherwise be refused as no_caption.

    index_dir: where the temporary caption index lives (default: the system temp dir). It needs
    room for about the size of the caption files.
    Every input is checked before anything is yielded: a file that is not an archive or a caption
    file raises InputError.
    """
    # Not a generator itself, so that a wrong input fails at the call, before any row is used.
    forms = [(str(p), caption_form(p)) for p in captions]
    for archive in archives:
        check_archive(archive)
    return _join(list(archives), forms, max_member_bytes, index_dir, batch_size)


def _join(
    archives: list[str | os.PathLike[str]],
    forms: list[tuple[str, str]],
    max_member_bytes: int,
    index_dir: str | os.PathLike[str] | None,
    batch_size: int,
) -> Iterator[Record]:
    with tempfile.TemporaryDirectory(prefix="taisu-captions-", dir=index_dir) as tmp:
        index = _CaptionIndex(tmp)
        try:
            for origin_no, (origin, form) in enumerate(forms):
                index.origins.append(origin)
                batch: list[tuple[Any, ...]] = []
                for rec in iter_caption_file(origin, form):
                    if isinstance(rec, BadRow):
                        yield rec
                        continue
                    batch.append((rec.id, rec.w, rec.g, rec.url, origin_no, rec.position, rec.line))
                    if len(batch) >= batch_size:
                        index.add(batch)
                        batch = []
                if batch:
                    index.add(batch)

            matched: list[str] = []
            broke_off = False
            for archive in archives:
                origin = str(archive)
                for member in _iter_members(archive, max_member_bytes):
                    if member.image_id is not None:
                        matched.append(member.image_id)
                        if len(matched) >= batch_size:
                            index.mark(matched)
                            matched = []
                    if isinstance(member, _Damaged):
                        broke_off = broke_off or member.bad.reason == "truncated_input"
                        yield member.bad
                        continue
                    position = f"member {member.name}"
                    found = index.lookup(member.image_id)
                    if found is None:
                        detail = f"no caption with id {member.image_id!r} in the caption files"
                        yield BadRow(origin, position, "no_caption", detail)
                        continue
                    w, g, raw_url = found
                    if w is None and g is None:
                        detail = f"the caption record of id {member.image_id!r} has neither w nor g"
                        yield BadRow(origin, position, "no_caption", detail)
                        continue
                    yield _image_row(raw_url, w, g, origin, position, member)
            index.mark(matched)
            if broke_off:
                return

            for image_id, origin_no, position, line in index.unmatched():
                yield BadRow(
                    index.origins[origin_no], position, "no_image", f"no archive member for id {image_id!r}", line
                )
        finally:
            index.close()


def _image_row(
    raw_url: str | None, w: str | None, g: str | None, origin: str, position: str, member: _Image
) -> SourceRow:
    url = normalised = None
    extra = None
    if raw_url is not None:
        checked = check_url(raw_url, origin, position, None)
        if isinstance(checked, BadRow):
            extra = {"source_url": raw_url}  # kept for provenance, but never offered to the fetcher
        else:
            url, normalised = checked
    return SourceRow(
        url,
        w,
        origin,
        position,
        generated_caption=g,
        image=member.data,
        image_name=member.name,
        source_id=member.image_id,
        extra=extra,
        normalised_url=normalised,
    )


def is_archive_name(path: str | os.PathLike[str]) -> bool:
    name = Path(path).name.lower()
    return name.endswith((".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz"))
