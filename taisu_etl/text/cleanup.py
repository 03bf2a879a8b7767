"""Caption clean-up: turn a raw web caption into the text that is checked and stored.

Steps, in this order (each one only runs when its trigger character is present, so a plain
caption costs a few microseconds):

1. HTML entities decoded (twice: web captions are often escaped twice, "&amp;nbsp;").
2. Control, format (zero-width, bidi), private-use and replacement characters removed.
3. NFKC, except for Chinese sentence punctuation: full-width ASCII letters, digits and symbols
   become half-width ("ＡＢＣ１２３" -> "ABC123"), compatibility ideographs and Kangxi radicals
   become ordinary characters, "①" -> "1". The full-width forms ，！？：；（） and "…" are
   kept as they are, because that is how Chinese text is written; NFKC alone would turn them into
   ASCII and mix two conventions in one corpus.
4. HTML tags removed (inline tags such as <b> vanish, block tags become a space).
5. URLs removed (http(s)/ftp, www., and bare domains with a common TLD).
6. Emoji and decoration symbols (★☆♥■◆→【】 and the like) become a space: they are often
   used as separators, and a space keeps the words apart for jieba and for Latin words.
   Meaningful punctuation ，。！？、：；“”‘’《》「」『』（）…— is kept.
7. Optional traditional -> simplified conversion (OpenCC t2s).
8. Runs of 3+ identical punctuation marks squeezed to one ("！！！！" -> "！"); dots, "…" and
   dashes are left alone because "……", "——" and "..." are conventional.
9. Whitespace collapsed to single spaces, trimmed, and removed around full-width punctuation.
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata

__all__ = ["clean_caption"]

_CONTROL = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\ufeff\ufff9-\ufffd\ue000-\uf8ff\ud800-\udfff\U000f0000-\U0010ffff]+"
)
_LINE_BREAKS = re.compile(r"[\t\n\r]+")

# Chinese punctuation that NFKC would fold into ASCII; parked in the private-use area (emptied in
# step 2) for the duration of the normalisation.
_KEEP_FULLWIDTH = "，！？：；（）…"
_PARK = str.maketrans({c: chr(0xE000 + i) for i, c in enumerate(_KEEP_FULLWIDTH)})
_UNPARK = str.maketrans({chr(0xE000 + i): c for i, c in enumerate(_KEEP_FULLWIDTH)})

_INLINE_TAG = re.compile(
    r"<\s*/?\s*(?:a|b|i|u|s|em|strong|span|font|sup|sub|small|big|mark|abbr|code|wbr)\b[^<>]{0,500}>",
    re.IGNORECASE,
)
_OTHER_TAG = re.compile(r"<!--.*?-->|<\s*/?\s*[A-Za-z][A-Za-z0-9]*\b[^<>]{0,500}>|<\s*/?\s*[A-Za-z][A-Za-z0-9]*\s*/?>", re.DOTALL)

_URL_CHARS = r"[A-Za-z0-9\-._~:/?#\[\]@!$&*+,;=%]"
_TLDS = r"(?:com|net|org|cn|cc|top|xyz|info|io|me|tv|hk|tw|vip|shop|site|online|club|biz|ltd|wang|edu|gov|app)"
URL_PATTERN = (
    rf"(?:https?|ftp)://{_URL_CHARS}+"
    rf"|(?<![A-Za-z0-9@.\-_])[Ww][Ww][Ww]\.{_URL_CHARS}+"
    # a bare domain: lower-case TLD only, so "ASP.NET" survives while "taobao.com" goes
    rf"|(?<![A-Za-z0-9@.\-_])[A-Za-z0-9][A-Za-z0-9\-]*(?:\.[A-Za-z0-9\-]+)*\.{_TLDS}(?![A-Za-z0-9\-_])(?:/{_URL_CHARS}*)?"
)
_URL = re.compile(URL_PATTERN)

_DECORATION = re.compile(
    "["
    "\U0001f000-\U0001faff\U0001fb00-\U0001fbff"  # emoji, pictographs, mahjong/cards, enclosed supplements
    "\u2190-\u21ff\u2300-\u23ff\u2500-\u27bf\u2b00-\u2bff"  # arrows, technical, box/geometric, misc symbols, dingbats
    "\u2022\u203b\u3013\u3010\u3011\u3016\u3017\u00a9\u00ae\u2122"  # • ※ 〓 【】 〖〗 © ® ™
    "\ufe00-\ufe0f\u20e3\U000e0000-\U000e007f\U000e0100-\U000e01ef"  # variation selectors, keycap, tags
    "]+"
)
_PUNCT_RUN = re.compile(r"([^\w\s.…—\-])\1{2,}")
_SPACES = re.compile(r"\s+")
_SPACE_AROUND_FULLWIDTH = re.compile(r" ?([，。！？：；、（）《》「」『』“”‘’]) ?")

# Fast path: a caption of common ideographs, ASCII letters/digits and single inner spaces is
# already clean (most captions are), so the ten steps below are skipped for it.
_NEEDS_WORK = re.compile(r"[^\u4e00-\u9fffA-Za-z0-9 ]|  |^ | $")


@functools.cache
def _t2s_converter() -> object:
    import opencc  # deferred: only recipes with t2s pay for loading its dictionaries

    return opencc.OpenCC("t2s")


def clean(text: str, *, t2s: bool = False) -> tuple[str, bool]:
    """`clean_caption`, also saying whether a URL was removed (to explain an emptied caption)."""
    if not t2s and not _NEEDS_WORK.search(text):
        return text, False
    if "&" in text:
        text = html.unescape(text)
        if "&" in text:
            text = html.unescape(text)
    text = _CONTROL.sub("", text)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text.translate(_PARK)).translate(_UNPARK)
    if "<" in text:
        text = _OTHER_TAG.sub(" ", _INLINE_TAG.sub("", text))
    had_url = False
    if "." in text or ":" in text:
        text, n = _URL.subn(" ", text)
        had_url = n > 0
    if not text.isascii():
        text = _DECORATION.sub(" ", text)
    if t2s:
        text = _t2s_converter().convert(text)  # type: ignore[attr-defined]
    text = _PUNCT_RUN.sub(r"\1", text)
    text = _LINE_BREAKS.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    if not text.isascii():
        text = _SPACE_AROUND_FULLWIDTH.sub(r"\1", text)
    return text, had_url


def clean_caption(text: str, *, t2s: bool = False) -> str:
    """Return the cleaned caption (see the module docstring for the steps); may be ""."""
    return clean(text, t2s=t2s)[0]
