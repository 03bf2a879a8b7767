"""The `[text]` table of a recipe: which caption rules run, in which order, with which limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RuleName = Literal[
    "cleanup",
    "filename_or_url",
    "symbols_only",
    "boilerplate",
    "repeated_char",
    "blacklist",
    "advertising",
    "pii",
    "length",
    "cjk_ratio",
    "over_frequent",
    "words",
]

# Clean-up first (every other rule judges the cleaned text). Then the specific rules, because the
# first failing rule names the reason and "boilerplate" explains "图片" better than
# "text_too_short" does. PII runs before the length bounds so that, with pii_action="mask",
# the bounds measure the text that will be stored. jieba is last: it costs more than all the
# other rules together.
DEFAULT_ORDER: tuple[RuleName, ...] = (
    "cleanup",
    "filename_or_url",
    "symbols_only",
    "boilerplate",
    "repeated_char",
    "blacklist",
    "advertising",
    "pii",
    "length",
    "cjk_ratio",
    "over_frequent",
    "words",
)


class TextFilterConfig(BaseModel):
    """Parameters of the caption text filter; embedded in a recipe as the `[text]` table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    order: tuple[RuleName, ...] = Field(
        DEFAULT_ORDER,
        description="Rules to run, in order; the first rule that fails names the reason.",
    )
    disabled: tuple[RuleName, ...] = Field(
        (), description="Rules to leave out without restating the whole order."
    )
    t2s: bool = Field(False, description="Convert traditional to simplified Chinese during clean-up.")
    min_chars: int = Field(5, ge=0, description="Fewest characters of the cleaned caption (Chinese-CLIP: 5).")
    max_chars: int | None = Field(
        50, ge=1, description="Most characters of the cleaned caption (Chinese-CLIP: 50); none = no limit."
    )
    min_words: int | None = Field(
        None, ge=1, description="Fewest jieba words; none = no limit (jieba only runs when a word bound is set)."
    )
    max_words: int | None = Field(None, ge=1, description="Most jieba words; none = no limit.")
    min_cjk_ratio: float = Field(
        0.4,
        ge=0.0,
        le=1.0,
        description=(
            "Fewest Chinese characters as a share of Chinese characters plus non-Chinese words "
            "(a run of Latin letters such as 'iPhone' counts once; bare numbers not at all)."
        ),
    )
    max_repeat: int | None = Field(
        4, ge=1, description="Longest run of one letter or ideograph ('哈哈哈哈'); none = no limit."
    )
    pii_action: Literal["reject", "mask"] = Field(
        "reject", description="What to do with a caption holding a phone, ID number, e-mail or QQ/WeChat id."
    )
    max_caption_frequency: int | None = Field(
        10,
        ge=1,
        description="Reject a caption shared by more than this many samples; none = no limit.",
    )
    wordlist_dir: Path | None = Field(
        None,
        description="Directory with boilerplate.txt, advertising.txt and blacklist.txt; none = the shipped lists.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TextFilterConfig:
        dupes = sorted({r for r in self.order if self.order.count(r) > 1})
        if dupes:
            raise ValueError(f"order names {', '.join(dupes)} more than once")
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) is below min_chars ({self.min_chars})")
        if self.min_words is not None and self.max_words is not None and self.max_words < self.min_words:
            raise ValueError(f"max_words ({self.max_words}) is below min_words ({self.min_words})")
        return self

    @property
    def active_rules(self) -> tuple[RuleName, ...]:
        """`order` without the disabled rules."""
        return tuple(r for r in self.order if r not in self.disabled)
