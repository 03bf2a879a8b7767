"""The dataset card: README.md with the funnel, the rejection reasons and the release's numbers,
plus PNG plots (caption length, score) and a word cloud of the captions.

The card is part of the release, so it must be reproducible too: no dates, a fixed word-cloud
seed, matplotlib without pyplot (no global backend) and PNGs without a Software stamp.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

from taisu_etl.release import layout
from taisu_etl.release.stats import SCORE_STEP, ReleaseStats
from taisu_etl.vocab import REASONS, State

CAPTION_PLOT = f"{layout.CARD_DIR}/caption_length.png"
SCORE_PLOT = f"{layout.CARD_DIR}/score.png"
WORDCLOUD = f"{layout.CARD_DIR}/wordcloud.png"
_STATE_ORDER = [s.value for s in State]
MAX_BINS = 60


def _rc(font_path: str) -> dict[str, Any]:
    from matplotlib import font_manager

    font_manager.fontManager.addfont(font_path)
    name = font_manager.FontProperties(fname=font_path).get_name()
    return {"font.family": "sans-serif", "font.sans-serif": [name, "DejaVu Sans"], "axes.unicode_minus": False}


def _save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})


def _histogram(path: Path, values: Sequence[float], weights: Sequence[int], *, title: str, xlabel: str, bins: list[float], font_path: str) -> None:
    import matplotlib
    from matplotlib.figure import Figure

    # CJK fonts often have only a "medium" weight; matplotlib then warns for every label it draws.
    quiet = logging.getLogger("matplotlib.font_manager")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with matplotlib.rc_context(_rc(font_path)):
            _draw(Figure, path, values, weights, title=title, xlabel=xlabel, bins=bins)
    finally:
        quiet.setLevel(level)


def _draw(Figure: Any, path: Path, values: Sequence[float], weights: Sequence[int], *, title: str, xlabel: str, bins: list[float]) -> None:
    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    if values:
        ax.hist(values, bins=bins, weights=weights, color="#3b78b0")
    else:
        ax.text(0.5, 0.5, "无数据 (no data)", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("样本数 (samples)")
    fig.tight_layout()
    _save(fig, path)


def _edges(lo: int, hi: int, step: float) -> list[float]:
    """Bin edges over the integer keys lo..hi (each worth `step`), merged into at most MAX_BINS bins."""
    width = max(1, math.ceil((hi - lo + 1) / MAX_BINS))
    return [(lo + k * width) * step for k in range((hi - lo) // width + 2)]


def caption_length_plot(path: Path, stats: ReleaseStats, font_path: str) -> None:
    lengths = sorted(stats.caption_lengths)
    bins = [e - 0.5 for e in _edges(lengths[0], lengths[-1], 1)] if lengths else [0.0, 1.0]
    _histogram(path, lengths, [stats.caption_lengths[n] for n in lengths], title="网页描述长度 (web caption length)",
               xlabel="字符数 (characters)", bins=bins, font_path=font_path)


def score_plot(path: Path, stats: ReleaseStats, font_path: str) -> None:
    keys = sorted(stats.score_bins)
    centres = [(k + 0.5) * SCORE_STEP for k in keys]
    bins = _edges(keys[0], keys[-1], SCORE_STEP) if keys else [0.0, 1.0]
    _histogram(path, centres, [stats.score_bins[k] for k in keys], title="图文匹配分数 (image-text score)",
               xlabel="分数 (score)", bins=bins, font_path=font_path)


def wordcloud_image(path: Path, stats: ReleaseStats, font_path: str) -> None:
    from PIL import Image, ImageDraw, ImageFont
    from wordcloud import WordCloud

    words = dict(stats.words.most_common(400))
    if words:
        cloud = WordCloud(font_path=font_path, width=900, height=450, background_color="white", random_state=0,
                          max_words=200, collocations=False, prefer_horizontal=0.9)
        image = cloud.generate_from_frequencies(words).to_image()
    else:
        image = Image.new("RGB", (900, 450), "white")
        ImageDraw.Draw(image).text((350, 200), "无词 (no words)", fill="black", font=ImageFont.truetype(font_path, 32))
    image.save(path, format="PNG")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def readme(manifest: dict[str, Any], funnel: dict[str, int], reasons: list[tuple[str, str | None, int]], stats: ReleaseStats) -> str:
    name = manifest["name"]
    counts = manifest["counts"]
    recipe = manifest["recipe"]
    parent = recipe["parent"]
    lines = [
        f"# Dataset card: release `{name}`",
        "",
        "A Chinese image-text dataset built by taisu-etl the way TaiSu (NeurIPS 2022) was built: web captions "
        "filtered by text rules, images fetched, checked and de-duplicated, pairs kept by image-text retrieval "
        "scoring, with generated captions (`g`) beside the web captions (`w`).",
        "",
        "## This release",
        "",
        *_table(["measure", "value"], [
            ["version", manifest.get("version", 1)],
            ["samples", counts["samples"]],
            ["shards", counts["shards"]],
            ["with a generated caption", counts["with_generated_caption"]],
            ["parent release", f"`{parent}`" if parent else "none"],
            ["added since the parent", counts["added"]],
            ["taken down since publication (takedown patches)", counts.get("taken_down", 0)],
            ["removed since the parent or taken down (removed.txt)", counts["removed"]],
            ["skipped: image missing from the store", counts["skipped"]["missing_image"]],
            ["skipped: image bytes do not match their sha256", counts["skipped"]["bad_image"]],
            ["skipped: second sample of one image id", counts["skipped"]["duplicate_id"]],
        ]),
        "",
        "Selection: samples in state `accepted` or `captioned`, none taken down, none on the takedown blocklist"
        + (f", score >= {recipe['min_score']}" if recipe["min_score"] is not None else "")
        + (f", source matching {', '.join('`' + s + '`' for s in recipe['sources'])}" if recipe["sources"] else "")
        + ("" if recipe["generated_captions"] else ", generated captions left out")
        + f". Shards of {recipe['shard_size']} samples, in id order. Recipe version `{manifest['recipe_version']}`.",
        "",
        "## Files",
        "",
    ]
    formats = recipe["formats"]
    if "taisu" in formats:
        ext = "tgz" if recipe["tgz"] else "tar"
        lines += [
            f"- `taisu/images/NNNNN.{ext}`: images as `<id>.jpg`, as in TaiSu's release.",
            "- `taisu/captions.json` (one object `{id: {\"w\": ..., \"g\": ...}}`), `taisu/captions.jsonl`, "
            "`taisu/captions.txt` (`id*****w*****g`, `None` for a missing caption).",
        ]
    if "webdataset" in formats:
        lines.append("- `webdataset/NNNNN.tar`: `<id>.jpg`, `<id>.txt` (web caption), `<id>.json` (metadata); "
                     "`webdataset/sizes.json` gives the sample counts open_clip's trainer reads.")
    if "parquet" in formats:
        lines.append("- `parquet/NNNNN.parquet`: one row per sample: source, URL, hashes, size, score and model, captions, shard files.")
    lines += [
        "- `ids.txt`: every sample id, sorted; `removed.txt`: ids of the parent release that are not in this one, and ids "
        "taken down from earlier versions of this one: delete those from any copy you hold.",
        "- `manifest.json`: counts, recipe, models, and the sha256 and size of every file; `SHA256SUMS`: check with `sha256sum -c SHA256SUMS`.",
    ]
    history = manifest.get("history") or []
    if history:
        lines += [
            "- `history/vN/manifest.json`, `history/vN/ids.txt`: the manifest and id list of each earlier version "
            "(ids only, no images), for `taisu-etl release diff NAME@N NAME`.",
            "",
            "## Versions",
            "",
            "Each takedown patch rewrote only the shards that held a removed sample, at the same paths, and made a new version.",
            "",
        ]
        lines += _table(["version", "made from the manifest with sha256", "samples removed", "takedown request"], [
            [h["version"], f"`{h['previous_manifest_sha256'][:16]}…`", h["removed"], h["takedown_id"] if h["takedown_id"] is not None else "-"]
            for h in history
        ])
    lines += [
        "",
        "## Models",
        "",
    ]
    models = manifest["models"]
    lines += _table(["scoring model", "samples", "lowest score", "highest score"], [
        [f"`{m}`", v["samples"], _num(v["min_score"]), _num(v["max_score"])] for m, v in models["score"].items()
    ])
    lines += [""]
    lines += _table(["caption model", "generated captions"], [[f"`{m}`", n] for m, n in models["caption"].items()] or [["none", 0]])
    total = sum(funnel.values())
    lines += ["", "## Funnel", "", "Samples per state in the whole ledger when this version was made.", ""]
    ordered = sorted(funnel, key=lambda s: (_STATE_ORDER.index(s) if s in _STATE_ORDER else len(_STATE_ORDER), s))
    lines += _table(["state", "samples"], [[f"`{s}`", funnel[s]] for s in ordered] + [["total", total]])
    lines += ["", "## Rejection reasons", "", "Why samples are where they are (their latest reason code).", ""]
    lines += _table(["state", "reason", "samples", "meaning"], [
        [f"`{s}`", f"`{r}`" if r else "-", n, REASONS[r][1] if r in REASONS else ""] for s, r, n in reasons
    ])
    lines += [
        "",
        "## Statistics",
        "",
        "![web caption length](card/caption_length.png)",
        "",
        "![image-text score](card/score.png)",
        "",
        f"![word cloud](card/wordcloud.png) (jieba words of the captions of the first {stats.word_samples} samples in id order)",
        "",
    ]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def render(directory: Path, manifest: dict[str, Any], funnel: dict[str, int], reasons: list[tuple[str, str | None, int]],
           stats: ReleaseStats, font_path: str) -> dict[str, Path]:
    """Write the card's files under `directory`; returns release path -> local file."""
    (directory / layout.CARD_DIR).mkdir(parents=True, exist_ok=True)
    files = {
        CAPTION_PLOT: directory / CAPTION_PLOT,
        SCORE_PLOT: directory / SCORE_PLOT,
        WORDCLOUD: directory / WORDCLOUD,
        layout.README: directory / layout.README,
    }
    caption_length_plot(files[CAPTION_PLOT], stats, font_path)
    score_plot(files[SCORE_PLOT], stats, font_path)
    wordcloud_image(files[WORDCLOUD], stats, font_path)
    files[layout.README].write_text(readme(manifest, funnel, reasons, stats), encoding="utf-8")
    return files
