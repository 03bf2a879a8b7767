"""The caption text filter: the configured rules, run in order, one decision per caption."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from taisu_etl.text.config import TextFilterConfig
from taisu_etl.text.rules import Rule, build_rule


@dataclass(frozen=True, slots=True)
class TextDecision:
    """The outcome for one caption, ready to become a ledger event.

    keep:   the caption passed every rule.
    text:   the caption to store: cleaned, and masked when pii_action is "mask". For a rejected
            caption, the text as the rejecting rule saw it (personal data masked even then).
    reason: the reason code (taisu_etl.vocab) of the first rule that failed; None when kept.
    rule:   the name of that rule, as written in the recipe's `order`; None when kept.
    detail: for a rejection, the threshold and the measured value ({"chars": 3, "min_chars": 5});
            for a kept caption, the rules that rewrote it ({"edits": ["cleanup"]}) and what the
            PII rule masked ({"pii": {"mobile": 1}}); empty when nothing happened.
    """

    keep: bool
    text: str
    reason: str | None = None
    rule: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class TextFilter:
    """Runs the rules of a `TextFilterConfig` over captions. Build once, call many times.

    >>> f = TextFilter(TextFilterConfig())
    >>> f.check("<b>西湖断桥残雪</b> 高清壁纸").text
    '西湖断桥残雪 高清壁纸'
    """

    def __init__(self, config: TextFilterConfig | None = None) -> None:
        self.config = config or TextFilterConfig()
        built = (build_rule(name, self.config) for name in self.config.active_rules)
        self.rules: tuple[Rule, ...] = tuple(r for r in built if r is not None)

    @property
    def rule_names(self) -> tuple[str, ...]:
        """Names of the rules that actually run, in order (no-op rules are left out)."""
        return tuple(r.name for r in self.rules)

    def check(self, caption: str | None, frequency: int | None = None) -> TextDecision:
        """Decide about one caption.

        frequency: how many samples of the dataset carry this caption, counted by the caller
        (e.g. over the ledger, on `taisu_etl.urls.normalise_caption` of the web caption); None
        skips the over_frequent rule.
        """
        if caption is None or not caption.strip():
            return TextDecision(False, "", "empty_caption", "cleanup", {"raw_chars": len(caption or "")})
        text = caption
        edits: list[str] = []
        extra: dict[str, Any] = {}
        for rule in self.rules:
            verdict = rule.check(text, frequency)
            if verdict is None:
                continue
            if not verdict.keep:
                shown = text if verdict.text is None else verdict.text
                return TextDecision(False, shown, verdict.reason, rule.name, verdict.detail)
            if verdict.text is not None:
                text = verdict.text
                edits.append(rule.name)
            extra.update(verdict.detail)
        detail = {"edits": edits, **extra} if edits or extra else {}
        return TextDecision(True, text, None, None, detail)

    def check_many(
        self, captions: Iterable[str | None], frequencies: Sequence[int | None] | None = None
    ) -> list[TextDecision]:
        """`check` over many captions; `frequencies`, if given, is parallel to `captions`."""
        if frequencies is None:
            return [self.check(c) for c in captions]
        captions = list(captions)
        if len(frequencies) != len(captions):
            raise ValueError(f"{len(captions)} captions but {len(frequencies)} frequencies")
        return [self.check(c, f) for c, f in zip(captions, frequencies)]
