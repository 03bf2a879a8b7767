"""Editable word lists and the matchers built from them.

A list is a UTF-8 text file, one phrase per line, `#` starting a comment line. Phrases are
matched case-insensitively, and in both simplified and traditional script, so one entry covers
"图片", "圖片" and "IMG" / "img" without the list author repeating it.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Iterable
from pathlib import Path

from taisu_etl.errors import ConfigError

WORDLIST_NAMES = ("boilerplate", "advertising", "blacklist")

# Boilerplate is compared on letters only: "图片（1）", "图片 1" and "图片!" are all "图片".
_NON_LETTER = re.compile(r"[\W\d_]+")


def letters_key(text: str) -> str:
    """The caption reduced to its letters (CJK or other), lower-cased: the boilerplate key."""
    return _NON_LETTER.sub("", text).lower()


def shipped_wordlist_dir() -> Path:
    """The directory of the word lists that ship inside the package."""
    return Path(str(importlib.resources.files("taisu_etl.text").joinpath("wordlists")))


def read_wordlist(path: Path) -> tuple[str, ...]:
    """Phrases of one list file, in file order, without comments, blanks or duplicates."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"word list {path} does not exist; a custom wordlist_dir must hold "
            f"{', '.join(n + '.txt' for n in WORDLIST_NAMES)} (copy them from {shipped_wordlist_dir()})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"word list {path} cannot be read: {exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: word list is not valid UTF-8") from None
    seen: dict[str, None] = {}
    for line in text.splitlines():
        phrase = line.strip()
        if phrase and not phrase.startswith("#"):
            seen.setdefault(phrase, None)
    return tuple(seen)


@functools.cache
def _script_converters() -> tuple[object, object]:
    import opencc  # deferred: 100+ ms to load its dictionaries, and only needed to build lists

    return opencc.OpenCC("s2t"), opencc.OpenCC("t2s")


def with_script_variants(phrases: Iterable[str]) -> list[str]:
    """Each phrase plus its traditional and simplified spellings, lower-cased, de-duplicated."""
    s2t, t2s = _script_converters()
    out: dict[str, None] = {}
    for phrase in phrases:
        for variant in (phrase, s2t.convert(phrase), t2s.convert(phrase)):  # type: ignore[attr-defined]
            out.setdefault(variant.lower(), None)
    return list(out)


def trie_pattern(words: Iterable[str]) -> str:
    """A regex alternation of `words` factored into a prefix tree.

    Python's `re` tries the branches of a flat alternation one after another at every position;
    factored by prefix, each position costs one dictionary-like branch on its first character,
    which keeps a 300-phrase list at a few microseconds per caption.
    """
    trie: dict[str, dict] = {}
    for word in words:
        if not word:
            continue
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, dict]) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:  # a word ends here: the rest is optional
            return body + "?" if len(branches) == 1 and len(body) == 1 else "(?:" + body + ")?"
        return body

    if not trie:
        return r"(?!x)x"  # matches nothing: an empty list rejects nothing
    return build(trie)


@functools.lru_cache(maxsize=32)
def load_wordlist(name: str, directory: Path | None = None) -> tuple[str, ...]:
    """The phrases of list `name` from `directory` (None: the shipped lists)."""
    if name not in WORDLIST_NAMES:
        raise ValueError(f"unknown word list {name!r}; expected one of {WORDLIST_NAMES}")
    base = shipped_wordlist_dir() if directory is None else Path(directory)
    return read_wordlist(base / f"{name}.txt")
