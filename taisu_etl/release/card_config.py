"""The `[release]` table of a recipe: what the dataset card says about licence, citation and takedowns.

What the card says is recorded in the release's manifest (`card`), so a takedown patch, which
re-renders the card from the manifest, repeats the same licence, citation and contact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from taisu_etl.stages.model_config import ScoreConfig

TAISU_LICENCE = "CC BY-NC-SA 4.0"
TAISU_LICENCE_URL = "https://creativecommons.org/licenses/by-nc-sa/4.0/"
DEFAULT_TERMS = (
    "The captions and this card are released under the licence above. The images were collected from the "
    "public web and remain the property of their rights holders: they are provided for non-commercial "
    "research only, without warranty, and must not be used to identify people. Delete every id listed in "
    "a newer version's removed.txt from any copy you hold."
)
TAISU_BIBTEX = """@inproceedings{liu2022taisu,
  title     = {TaiSu: A 166M Large-scale High-Quality Dataset for Chinese Vision-Language Pre-training},
  author    = {Liu, Yulong and Zhu, Guibo and Zhu, Bin and Song, Qi and Ge, Guojing and Chen, Haoran and Qiao, Guanhui and Peng, Ru and Wu, Lingxiang and Wang, Jinqiao},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS) Datasets and Benchmarks Track},
  year      = {2022},
  url       = {https://openreview.net/forum?id=iAxH-ikIP0I}
}"""


class ReleaseCardConfig(BaseModel):
    """The `[release]` table: licence, terms, citation and takedown contact printed on every dataset card."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    licence: str = Field(TAISU_LICENCE, min_length=1, description="licence of the release (TaiSu used CC BY-NC-SA 4.0)")
    licence_url: str = Field(TAISU_LICENCE_URL, description="where the licence text is; empty: none")
    terms: str = Field(DEFAULT_TERMS, description="terms of use printed under the licence")
    citation: str = Field("", description="BibTeX of this release, printed before TaiSu's; empty: TaiSu's only")
    takedown_contact: str = Field(
        "", description="e-mail address or URL where rights holders send takedown requests; empty: the card says none is set"
    )


def card_record(config: ReleaseCardConfig | None = None, score: "ScoreConfig | None" = None) -> dict[str, Any]:
    """What the manifest records under `card`: the `[release]` texts and the score rule the recipe applies."""
    config = config or ReleaseCardConfig()
    record: dict[str, Any] = config.model_dump(mode="json")
    record["score_rule"] = score_rule(score) if score is not None else None
    return record


def score_rule(score: "ScoreConfig") -> dict[str, Any]:
    """The parameters of the recipe's score rule, as the score stage records them per sample."""
    if score.rule == "taisu":
        return {"rule": "taisu", "group_size": score.group_size, "mode": score.mode, "seed": score.seed}
    if score.rule == "threshold":
        return {"rule": "threshold", "threshold": score.threshold}
    return {"rule": "quantile", "quantile": score.quantile}
