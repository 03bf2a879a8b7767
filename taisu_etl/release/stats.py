"""Statistics of a release gathered while its members stream past, in bounded memory.

Histograms are counters over small discrete keys (caption length in characters, score rounded to
SCORE_STEP); the word cloud counts jieba words of the first WORDCLOUD_SAMPLES members, which are a
pseudo-random sample because members come in hash-id order.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

SCORE_STEP = 0.005
WORDCLOUD_SAMPLES = 20_000
_WORD = re.compile(r"[^\W\d_]{2,}|[\u4e00-\u9fff]{2,}")


@dataclass
class ModelSeen:
    samples: int = 0
    min_score: float | None = None
    max_score: float | None = None

    def add(self, score: float | None) -> None:
        self.samples += 1
        if score is not None:
            self.min_score = score if self.min_score is None else min(self.min_score, score)
            self.max_score = score if self.max_score is None else max(self.max_score, score)


@dataclass
class ReleaseStats:
    samples: int = 0
    with_generated: int = 0
    caption_lengths: Counter[int] = field(default_factory=Counter)
    score_bins: Counter[int] = field(default_factory=Counter)
    words: Counter[str] = field(default_factory=Counter)
    word_samples: int = 0
    score_models: dict[str, ModelSeen] = field(default_factory=dict)
    caption_models: Counter[str] = field(default_factory=Counter)

    def add(self, w: str, g: str | None, score: float | None, score_model: str | None, caption_model: str | None) -> None:
        self.samples += 1
        self.caption_lengths[len(w)] += 1
        if score is not None and math.isfinite(score):
            self.score_bins[math.floor(score / SCORE_STEP)] += 1
        self.score_models.setdefault(score_model or "none", ModelSeen()).add(score)
        if g is not None:
            self.with_generated += 1
            if caption_model:
                self.caption_models[caption_model] += 1
        if self.word_samples < WORDCLOUD_SAMPLES:
            self.word_samples += 1
            self._count_words(w)
            if g is not None:
                self._count_words(g)

    def _count_words(self, text: str) -> None:
        from taisu_etl.text.rules import jieba_tokenizer

        self.words.update(tok for tok in jieba_tokenizer().cut(text, HMM=False) if _WORD.fullmatch(tok))

    def models(self) -> dict[str, Any]:
        """Models seen and the score range each admitted: what the manifest records."""
        return {
            "score": {
                name: {"samples": m.samples, "min_score": m.min_score, "max_score": m.max_score}
                for name, m in sorted(self.score_models.items())
            },
            "caption": dict(sorted(self.caption_models.items())),
        }
