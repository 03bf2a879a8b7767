"""URL normalisation and the stable ids derived from it.

Two spellings of the same resource must give the same id on every machine and in every year,
so the rules are few and fixed: scheme and host lower-cased, the default port and the fragment
dropped, an empty path made "/", the query kept as it is (it often selects the image).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from urllib.parse import urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
_WS = re.compile(r"\s+")
_SLICE_DROP = str.maketrans("", "", "/=.,")


def normalise_url(url: str) -> str:
    """Return the canonical spelling of `url` (raises ValueError if it has no scheme or host)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not scheme or not host:
        raise ValueError(f"not an absolute URL: {url!r}")
    try:
        port = parts.port
    except ValueError as exc:  # e.g. "http://host:99999/"
        raise ValueError(f"bad port in URL: {url!r}") from exc
    if ":" in host:  # IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = host
    if parts.username is not None:
        userinfo = parts.username + (f":{parts.password}" if parts.password is not None else "")
        netloc = f"{userinfo}@{host}"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc = f"{netloc}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def normalise_caption(caption: str) -> str:
    """The caption as used for duplicate detection: NFKC, whitespace collapsed, trimmed."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", caption)).strip()


def _hash32(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def url_id(normalised_url: str) -> str:
    """Stable id of a normalised URL: the first 128 bits of its sha256, as 32 hex digits."""
    return _hash32(normalised_url)


def pair_hash(normalised_url: str, caption: str, *, caption_is_normalised: bool = False) -> str:
    """Stable id of a (URL, web caption) pair: one ledger row per pair, duplicates collapse."""
    return _hash32(normalised_url + "\x1f" + (caption if caption_is_normalised else normalise_caption(caption)))


def caption_hash(caption: str, *, caption_is_normalised: bool = False) -> str:
    """64-bit hash of the normalised caption (16 hex digits): how over-frequent captions are counted."""
    text = caption if caption_is_normalised else normalise_caption(caption)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def taisu_slice_id(url: str) -> str:
    """TaiSu's id for a URL: characters 8-48 of the URL with '/', '=', '.', ',' removed.

    TaiSu's download tool (`name = pic_url[8:48]`, then those four characters dropped) slices at
    index 8 whatever the scheme, which skips exactly `https://` but also the host's first letter
    after `http://`:

        https://img1.baidu.com/it/u=1848496827,1042591513&fm=253  -> img1baiducomitu1848496827104259151
        http://img1.baidu.com/it/u=1848496827,1042591513&fm=253   -> mg1baiducomitu18484968271042591513

    It slices the raw URL string, so this uses the URL as given, not the normalised one.
    """
    return url[8:48].translate(_SLICE_DROP)


def taisu_identity(image_id: str) -> str:
    """The ledger identity of an image ingested from TaiSu's archives under TaiSu's id `image_id`:
    its `url_id` is `url_id(taisu_identity(image_id))`, which tells such a sample from one whose
    `taisu_id` is only the slice of its URL."""
    return f"taisu:{image_id}"
