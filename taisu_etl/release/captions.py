"""TaiSu's three caption forms, streamed to files as members are written (never built in memory).

    taisu/captions.json   {"<id>": {"w": web, "g": generated, "url_id": ...}, ...}   one JSON object, as TaiSu ships it
    taisu/captions.jsonl  {"id": "<id>", "w": ..., "g": ..., "url_id": ...}          one object per line
    taisu/captions.txt    <id>*****<w>*****<g>                                         `None` for a missing caption

`<id>` names the image in the TaiSu parts (`<id>.jpg`): TaiSu's own id for a sample ingested from
TaiSu's archives, else the sample's url_id (`member_key`); the JSON forms carry the stable url_id
beside it (releases built before recipe key `taisu_ids` have no `url_id` field: `<id>` is the url_id).
The TXT form keeps TaiSu's three fields. `taisu_etl.sources.taisu` reads all three back, so a
release can be ingested again, and re-ingesting gives a TaiSu sample its url_id again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from taisu_etl.release.layout import TAISU_CAPTIONS_JSON, TAISU_CAPTIONS_JSONL, TAISU_CAPTIONS_TXT
from taisu_etl.release.tarwriter import Digest, HashingFile
from taisu_etl.urls import taisu_identity, url_id

TXT_SEPARATOR = "*****"
_WS = re.compile(r"\s+")
_STARS = re.compile(r"\*{5,}")
# A TaiSu id names tar members and caption keys: no path separators, no dot (readers split the
# member name at the first dot), no '*' (the TXT separator), no whitespace or controls, and at most
# 64 bytes, well inside a USTAR name.
_SAFE_TAISU_ID = re.compile(r"[^./\\*\s\x00-\x1f\x7f]{1,64}")
_URL_ID = re.compile(r"[0-9a-f]{32}")


def member_key(sample_url_id: str, taisu_id: str | None) -> str:
    """The name of a sample in the TaiSu parts and caption files: TaiSu's own id where the sample was
    ingested from TaiSu's archives (its url_id is derived from that id), else its url_id.

    A URL sample's taisu_id is only the slice of its URL (urls.taisu_slice_id), which collides
    between URLs, so it never names a file. An id that could not be a member name, or that looks like
    a url_id (32 hex digits: it could collide with another sample's name), falls back to the url_id,
    so names are unique in a release.
    """
    if (
        taisu_id is not None and _SAFE_TAISU_ID.fullmatch(taisu_id) and len(taisu_id.encode()) <= 64
        and not _URL_ID.fullmatch(taisu_id)
        and url_id(taisu_identity(taisu_id)) == sample_url_id
    ):
        return taisu_id
    return sample_url_id


def _js(value: str | None) -> str:
    return json.dumps(value, ensure_ascii=False)


def txt_field(text: str | None) -> str:
    """A caption as one TXT field: line breaks and the separator cannot survive in this form."""
    if text is None:
        return "None"
    return _STARS.sub("****", _WS.sub(" ", text).strip())


class CaptionWriters:
    """The three caption files of one release, written side by side in member order."""

    def __init__(self, directory: Path, *, with_url_id: bool = True) -> None:
        self._with_url_id = with_url_id  # False: the form of releases built before recipe key `taisu_ids`
        self._paths = {
            TAISU_CAPTIONS_JSON: directory / "captions.json",
            TAISU_CAPTIONS_JSONL: directory / "captions.jsonl",
            TAISU_CAPTIONS_TXT: directory / "captions.txt",
        }
        self._json = HashingFile(self._paths[TAISU_CAPTIONS_JSON])
        self._jsonl = HashingFile(self._paths[TAISU_CAPTIONS_JSONL])
        self._txt = HashingFile(self._paths[TAISU_CAPTIONS_TXT])
        self._first = True
        self._json.write(b"{")

    def add(self, sample_id: str, w: str | None, g: str | None, sample_url_id: str | None = None) -> None:
        """One sample: `sample_id` its member key, `sample_url_id` its url_id (the key itself when None)."""
        sid, jw, jg = _js(sample_id), _js(w), _js(g)
        uid = f',"url_id":{_js(sample_url_id or sample_id)}' if self._with_url_id else ""
        sep = "" if self._first else ","
        self._first = False
        self._json.write(f'{sep}{sid}:{{"w":{jw},"g":{jg}{uid}}}'.encode())
        self._jsonl.write(f'{{"id":{sid},"w":{jw},"g":{jg}{uid}}}\n'.encode())
        self._txt.write(f"{sample_id}{TXT_SEPARATOR}{txt_field(w)}{TXT_SEPARATOR}{txt_field(g)}\n".encode())

    def close(self) -> dict[str, tuple[Path, Digest]]:
        """Release path -> (local file, digest) of each caption file."""
        self._json.write(b"}\n")
        digests = {
            TAISU_CAPTIONS_JSON: self._json.close(),
            TAISU_CAPTIONS_JSONL: self._jsonl.close(),
            TAISU_CAPTIONS_TXT: self._txt.close(),
        }
        return {k: (self._paths[k], d) for k, d in digests.items()}
