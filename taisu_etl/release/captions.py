"""TaiSu's three caption forms, streamed to files as members are written (never built in memory).

    taisu/captions.json   {"<id>": {"w": web, "g": generated}, ...}   one JSON object, as TaiSu ships it
    taisu/captions.jsonl  {"id": "<id>", "w": ..., "g": ...}          one object per line
    taisu/captions.txt    <id>*****<w>*****<g>                          `None` for a missing caption

`taisu_etl.sources.taisu` reads all three back, so a release can be ingested again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from taisu_etl.release.layout import TAISU_CAPTIONS_JSON, TAISU_CAPTIONS_JSONL, TAISU_CAPTIONS_TXT
from taisu_etl.release.tarwriter import Digest, HashingFile

TXT_SEPARATOR = "*****"
_WS = re.compile(r"\s+")
_STARS = re.compile(r"\*{5,}")


def _js(value: str | None) -> str:
    return json.dumps(value, ensure_ascii=False)


def txt_field(text: str | None) -> str:
    """A caption as one TXT field: line breaks and the separator cannot survive in this form."""
    if text is None:
        return "None"
    return _STARS.sub("****", _WS.sub(" ", text).strip())


class CaptionWriters:
    """The three caption files of one release, written side by side in member order."""

    def __init__(self, directory: Path) -> None:
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

    def add(self, sample_id: str, w: str | None, g: str | None) -> None:
        sid, jw, jg = _js(sample_id), _js(w), _js(g)
        sep = "" if self._first else ","
        self._first = False
        self._json.write(f'{sep}{sid}:{{"w":{jw},"g":{jg}}}'.encode())
        self._jsonl.write(f'{{"id":{sid},"w":{jw},"g":{jg}}}\n'.encode())
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
