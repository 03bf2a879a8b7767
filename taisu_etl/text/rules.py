"""The caption rules: one small class each, with a name, a reason code and one `check` method.

`check(text, frequency)` returns None when the caption passes, or a `Verdict`: a rejection
(reason code + details for the ledger), or, for the rules that rewrite text (clean-up, PII
masking), the new text. Rules are built once per recipe and hold only compiled patterns, so a
check is a handful of regex scans on a 10-50 character string.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from taisu_etl.text.cleanup import URL_PATTERN, clean
from taisu_etl.text.config import TextFilterConfig
from taisu_etl.text.lexicon import letters_key, load_wordlist, trie_pattern, with_script_variants
from taisu_etl.vocab import check_reason

# Character classes shared by several rules.
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3007\U00020000-\U0003134f"
_SYLLABIC = "\u3040-\u30ff\u31f0-\u31ff\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"  # kana, hangul
_LETTER = re.compile(r"[^\W\d_]")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a rule decided about a caption that did not simply pass."""

    keep: bool
    reason: str | None = None  # a code from taisu_etl.vocab.REASONS when keep is False
    text: str | None = None  # replacement text (clean-up, masking); None = unchanged
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def reject(cls, reason: str, text: str | None = None, **detail: Any) -> Verdict:
        return cls(False, check_reason(reason), text, detail)

    @classmethod
    def edit(cls, text: str, **detail: Any) -> Verdict:
        return cls(True, None, text, detail)


class Rule(ABC):
    """One caption rule. `name` is what recipes use in `order`; `reason` its main reason code."""

    name: ClassVar[str]
    reason: ClassVar[str]

    @abstractmethod
    def check(self, text: str, frequency: int | None = None) -> Verdict | None:
        """None if `text` passes; otherwise a Verdict. `frequency` matters only to over_frequent."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class CleanupRule(Rule):
    """Normalises the caption (see cleanup.py); rejects it if nothing is left."""

    name = "cleanup"
    reason = "empty_caption"

    def __init__(self, t2s: bool = False) -> None:
        self.t2s = t2s

    def check(self, text: str, frequency: int | None = None) -> Verdict | None:
        cleaned, had_url = clean(text, t2s=self.t2s)
        if not cleaned:
            if had_url:  # the caption was nothing but a URL: say so rather than "empty"
                return Verdict.reject("filename_or_url", "", kind="url")
            return Verdict.reject("empty_caption", "", raw_chars=len(text))
        return Verdict.edit(cleaned) if cleaned != text else None


_IMAGE_EXT = (
    r"jpe?g|jfif|png|gif|bmp|webp|tiff?|heic|heif|avif|svg|ico|psd|raw|cr2|nef|dng"
    r"|pdf|docx?|xlsx?|pptx?|txt|zip|rar|mp4|mov|avi"
)
_FILENAME = re.compile(
    # "微信图片_20200101.jpg", "未标题-1.png", "abc.png": any short name with a file extension
    rf"(?P<file_name>[^，。！？\s][^，。！？]{{0,79}}\.(?:{_IMAGE_EXT}))"
    # names cameras, phones and chat apps give pictures: "IMG_1234", "DSC0001", "mmexport1577836800000"
    r"|(?P<camera_name>(?:img|dscn?|dscf|dcim|pict?|mvimg|vid|pxl|imag|sam|gopr|dji|p|photo|image"
    r"|screenshot|snipaste|mmexport|wx_camera|qq图片|微信图片|截图|屏幕截图)[ _\-]?\d[\d_\- ]*)"
    # content hashes and UUIDs used as names
    r"|(?P<hash>[0-9a-f]{16,}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    # a query string copied instead of the alt text: "u=123,456&fm=26&gp=0"
    r"|(?P<query_string>[\w.%\-]+=[^\s=&]*(?:&[\w.%\-]+=[^\s=&]*)+)"
    # "uploads/2019/01/abc", "C:\Users\a\b": two or more separators and no spaces
    r"|(?P<path>(?:[a-z]:\\|/)?[\w.\-]+(?:[/\\][\w.\-]+){2,}[/\\]?)"
    rf"|(?P<url>{URL_PATTERN})",
    re.IGNORECASE,
)
_FILENAME_HINT = re.compile(r"[.\d=/\\]")


class FilenameOrUrlRule(Rule):
    """The whole caption is a file name, a camera/app image name, a hash, a path or a URL."""

    name = "filename_or_url"
    reason = "filename_or_url"

    def check(self, text: str, frequency: int | None = None) -> Verdict | None:
        # Every pattern needs a dot, digit, '=', slash or backslash, except an all-ASCII hash.
        if not text.isascii() and not _FILENAME_HINT.search(text):
            return None
        m = _FILENAME.fullmatch(text)
        return Verdict.reject(self.reason, kind=m.lastgroup) if m else None


class SymbolsOnlyRule(Rule):
    """No letter and no ideograph at all: "2019-01-01", "123456", "~~~"."""

    name = "symbols_only"
    reason = "symbols_only"

    def check(self, text: str, frequency: int | None = None) -> Verdict | None:
        return None if _LETTER.search(text) else Verdict.reject(self.reason, chars=len(text))


class BoilerplateRule(Rule):
    """The caption, reduced to its letters, is a boilerplate phrase or a sequence of them."""

    name = "boilerplate"
    reason = "boilerplate"

    def __init__(self, phrases: tuple[str, ...]) -> None:
        keys = {k for k in (letters_key(p) for p in with_script_variants(phrases)) if k}
        self._exact = frozenset(keys)
        self._lengths = sorted({len(k) for k in keys})
        self._starts = re.compile(trie_pattern(keys))  # does the key begin with a phrase?
        # "图片来源于网络，如有侵权请联系删除" is two phrases back to back; a caption longer than
        # a few phrases is never only boilerplate in practice.
        self._max_key = 4 * max(self._lengths, default=0)

    def _is_sequence(self, key: str) -> bool:
        # Word-break by dynamic programming rather than a regex "(?:a|b|...)+", which can take
        # exponential time on a list with overlapping entries ("a", "aa").
        n = len(key)
        reach = [True] + [False] * n
        for i in range(n):
            if reach[i]:
                for length in self._lengths:
                    if i + length <= n and key[i : i + length] in self._exact:
                        reach[i + length] = True
        return reach[n]

    def check(self, text: str, frequency: int | None = None) -> Verdict | None:
        key = letters_key(text)
        if not key:
            return None
        if key in self._exact:
            return Verdict.reject(self.reason, match="exact", key=key)
        if len(key) <= self._max_key and self._starts.match(key) and self._is_sequence(key):
            return Verdict.reject(self.reason, match="phrases", key=key)
        return None


class RepeatedCharRule(Rule):
    """One letter or ideograph repeated more than `max_repeat` times in a row ("哈哈哈哈哈").

    Digits are exempt ("1000000元" is a price) and so is punctuation (clean-up squeezes it).
    """

    name = "repeated_char"
    reason = "repeated_char"

    def __init__(self, max_repeat: int) -> None:
        self.max_repeat = max_repeat
        self._run = re.compile(rf"([^\W\d_])\1{{{max_repeat},}}")

    def check(self, text: str, frequency: int | None = None) -> Verdict | None:
        m = self._run.search(text)
        if m is None:
            return None
        return Verdict.reject(self.reason, char=m.group(1), run=len(m.group()), max_repeat=self.max_repeat)


class PhraseRule(Rule):
    """The caption contains a phrase of a word list (substring match, any case, either script)."""

    def __init__(self, phrases: tuple[str, ...]) -> None:
        self._pattern = re.compile(trie_pattern(with_script_variants(phrases)))

    def check(self, text: str, frequency: int | None = None) -> Verdict | None:
        m = self._pattern.search(text.lower())
        return Verdict.reject(self.reason, phrase=m.group()) if m else None


class AdvertisingRule(PhraseRule):
    name = "advertising"
    reason = "advertising"


class BlacklistRule(PhraseRule):
    name = "blacklist"
    reason = "blacklist_word"


# --- personal data ------------------------------------------------------------------------------

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_ID_CANDIDATE = re.compile(r"(?<![0-9A-Za-z])[1-8]\d{5}(?:18|19|20)\d{2}[01]\d[0-3]\d\d{3}[\dXx](?![0-9A-Za-z])")


def is_resident_id(number: str) -> bool:
    """True for an 18-character PRC resident ID with a real birth date and a valid check digit.

    GB 11643-1999: the check digit is ISO 7064 MOD 11-2 over the first 17 digits.
    """
    if len(number) != 18 or not number[:17].isdigit():
        return False
    try:
        born = _dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    if not (_dt.date(1880, 1, 1) <= born <= _dt.date.today()):
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == number[17].upper()


# 11 digits 1[3-9]x, alone or written 3-4-4 with hyphens, optionally after +86; never part of a
# longer digit run (order numbers, timestamps).
_MOBILE = re.compile(r"(?<!\d)(?:\+?86[\- ]?)?1[3-9]\d(?:\d{8}|-\d{4}-\d{4})(?!\d)")
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
)
# An account id after a cue word. Without a colon the id must hold a digit, so that
# "微信 WeChat 图标" or "wxWidgets" are not taken for accounts, while "加qq123456789" is.
_ACCOUNT = re.compile(
    r"(?P<cue>(?<![A-Za-z])(?i:qq|vx|wx|weixin|wechat)|扣扣|企鹅号?|微信|薇信|威信|维信|徽信|[Vv]信)"
    r"(?:号码|号|群号?|账号|帐号|(?i:id))?"
    r"(?:\s*[:：]\s*(?P<id>[A-Za-z0-9][\w\-]{4,19})"
    r"|\s*(?P<id2>(?=[A-Za-z_\-]*\d)[A-Za-z0-9][\w\-]{4,19}))"
    r"(?![\w\-])",
    re.ASCII,  # \w in the id means ASCII letters/digits/_ only; cue words are literal
)
_PII_HINT = re.compile(r"[\d@:：]")

MASKS = {"id_card": "[身份证号]", "mobile": "[电话]", "email": "[邮箱]", "account": "[账号]"}


class PiiRule(Rule):
    """Mainland mobile numbers, resident ID numbers, e-mail addresses, QQ/WeChat ids.

    The text of the verdict is masked in both modes, so a rejection's text and details can go to
    the ledger as they are: the details name the kinds and counts, never the values.
    """

    name = "pii"
    reason = "pii"

    def __init__(self, action: str = "reject") -> None:
        if action not in ("reject", "mask"):
            raise ValueError(f"pii action must be 'reject' or 'mask', not {action!r}")
        self.action = action

    def check(self, text: str, frequency: int | None = None) -> Verdict | None:
        if not _PII_HINT.search(text):  # every pattern needs a digit, an @ or a colon
            return None
        found: dict[str, int] = {}

        def count(kind: str) -> Callable[[re.Match[str]], str]:
            def repl(m: re.Match[str]) -> str:
                found[kind] = found.get(kind, 0) + 1
                return MASKS[kind]

            return repl

        def id_card(m: re.Match[str]) -> str:
            return count("id_card")(m) if is_resident_id(m.group()) else m.group()

        def account(m: re.Match[str]) -> str:
            start = m.start("id") if m.group("id") is not None else m.start("id2")
            return m.string[m.start() : start] + count("account")(m)

        masked = _ID_CANDIDATE.sub(id_card, text)
        masked = _MOBILE.sub(count("mobile"), masked)
        if "@" in masked:
            masked = _EMAIL.sub(count("email"), masked)
        masked = _ACCOUNT.sub(account, masked)
        if not found:
            return None
        if self.action == "mask":
            return Verdict.edit(masked, pii=found)
        return Verdict.reject(self.reason, masked, found=found, action=self.action)


# --- measures -----------------------------------------------------------------------------------


class LengthRule(Rule):
    """Characters of the cleaned caption (spaces and punctuation included) within bounds."""

    name = "length"
    reason = "text_too_short"

    def __init__(self, min_chars: int = 5, max_chars: int | None = 50) -> None:
        self.min_chars = min_chars
        self.max_chars = max_chars

    def check(self, text: str, frequency: int | None = None) -> Verdict | None:
        n = len(text)
        if n < self.min_chars:
            return Verdict.reject("text_too_short", chars=n, min_chars=self.min_chars)
        if self.max_chars is not None and n > self.max_chars:
            return Verdict.reject("text_too_long", chars=n, max_chars=self.max_chars)
        return None


_HAN_RUN = re.compile(f"[{HAN}]+")
# After the Han characters are blanked out: a kana/hangul character is one unit (like an
# ideograph), any other run of letters and digits is one unit unless it is a bare number.
_FOREIGN_TOKEN = re.compile(f"[{_SYLLABIC}]|[^\\W_{_SYLLABIC}]+")


def cjk_units(text: str) -> tuple[int, int]:
    """(Chinese characters, non-Chinese words) of `text`; bare numbers and punctuation count as neither."""
    rest, runs = _HAN_RUN.subn(" ", text)  # blanks keep "abc中def" two words
    han = len(text) - len(rest) + runs
    return han, sum(1 for tok in _FOREIGN_TOKEN.findall(rest) if not tok.isdigit())


class CjkRatioRule(Rule):
    """Chinese characters as a share of (Chinese characters + non-Chinese words) >= min_ratio.

    A plain character ratio would punish brand and model names: "iPhone 15 Pro 手机壳 透明 防摔"
    has 7 ideographs among 18 letters/digits (0.39), yet it is a good Chinese caption. Counting a
    Latin word once gives 7 / (7 + 2) = 0.78, while "A beautiful sunset over the sea 夕阳"
    stays at 2 / (2 + 6) = 0.25.
    """

    name = "cjk_ratio"
    reason = "low_cjk_ratio"

    def __init__(self, min_ratio: float) -> None:
        self.min_ratio = min_ratio

    def check(self, text: str, frequency: int | None = None) -> Verdict | None:
        han, other = cjk_units(text)
        ratio = han / (han + other) if han + other else 0.0
        if ratio >= self.min_ratio:
            return None
        return Verdict.reject(
            self.reason, cjk_ratio=round(ratio, 3), min_cjk_ratio=self.min_ratio, cjk_chars=han, other_words=other
        )


class OverFrequentRule(Rule):
    """The caption is shared by more than `max_frequency` samples of the dataset.

    The filter cannot see the dataset: the caller passes the count (see TextFilter.check).
    """

    name = "over_frequent"
    reason = "over_frequent"

    def __init__(self, max_frequency: int) -> None:
        self.max_frequency = max_frequency

    def check(self, text: str, frequency: int | None = None) -> Verdict | None:
        if frequency is None or frequency <= self.max_frequency:
            return None
        return Verdict.reject(self.reason, frequency=frequency, max_caption_frequency=self.max_frequency)


@functools.cache
def jieba_tokenizer() -> Any:
    """jieba's tokenizer, initialised once from the dictionary inside the jieba package (no network)."""
    import jieba  # deferred: importing and loading the dictionary takes ~0.6 s

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba.dt


_WORDISH = re.compile(r"[^\W_]")


def count_words(text: str) -> int:
    """jieba words of `text` (exact mode, no HMM), not counting spaces and punctuation."""
    return sum(1 for tok in jieba_tokenizer().cut(text, HMM=False) if _WORDISH.search(tok))


class WordsRule(Rule):
    """Number of jieba words within bounds."""

    name = "words"
    reason = "too_few_words"

    def __init__(self, min_words: int | None = None, max_words: int | None = None) -> None:
        self.min_words = min_words
        self.max_words = max_words
        jieba_tokenizer()  # load now, not inside the first timed check

    def check(self, text: str, frequency: int | None = None) -> Verdict | None:
        n = count_words(text)
        if self.min_words is not None and n < self.min_words:
            return Verdict.reject("too_few_words", words=n, min_words=self.min_words)
        if self.max_words is not None and n > self.max_words:
            return Verdict.reject("too_many_words", words=n, max_words=self.max_words)
        return None


def build_rule(name: str, config: TextFilterConfig) -> Rule | None:
    """The rule `name` configured from a TextFilterConfig, or None when its limits make it a no-op."""
    wordlist_dir: Path | None = config.wordlist_dir
    if name == "cleanup":
        return CleanupRule(t2s=config.t2s)
    if name == "filename_or_url":
        return FilenameOrUrlRule()
    if name == "symbols_only":
        return SymbolsOnlyRule()
    if name == "boilerplate":
        return BoilerplateRule(load_wordlist("boilerplate", wordlist_dir))
    if name == "repeated_char":
        return None if config.max_repeat is None else RepeatedCharRule(config.max_repeat)
    if name == "blacklist":
        return BlacklistRule(load_wordlist("blacklist", wordlist_dir))
    if name == "advertising":
        return AdvertisingRule(load_wordlist("advertising", wordlist_dir))
    if name == "pii":
        return PiiRule(config.pii_action)
    if name == "length":
        if config.min_chars <= 0 and config.max_chars is None:
            return None
        return LengthRule(config.min_chars, config.max_chars)
    if name == "cjk_ratio":
        return None if config.min_cjk_ratio <= 0 else CjkRatioRule(config.min_cjk_ratio)
    if name == "over_frequent":
        return None if config.max_caption_frequency is None else OverFrequentRule(config.max_caption_frequency)
    if name == "words":
        if config.min_words is None and config.max_words is None:
            return None
        return WordsRule(config.min_words, config.max_words)
    raise ValueError(f"unknown text rule {name!r}")
