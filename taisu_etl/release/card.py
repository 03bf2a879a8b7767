"""The dataset card: README.md with the licence and terms, citation, takedown contact, funnel,
rejection reasons, what the score means, image resolution and file-size statistics and the
release's numbers, plus PNGs: web and generated caption length, score, a grid of example pairs
and a word cloud of the captions without stop words.

The card is part of the release, so it must be reproducible too: no dates, a fixed word-cloud
seed, examples chosen by the hash of their id, matplotlib without pyplot (no global backend) and
PNGs without a Software stamp. Its texts (licence, citation, contact, score rule) come from the
manifest's `card` record (card_config.py), so a takedown patch repeats them.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

from taisu_etl.release import layout
from taisu_etl.release.card_config import TAISU_BIBTEX, card_record
from taisu_etl.release.stats import BYTES_UNIT, MP_UNIT, PERCENTILES, SCORE_STEP, THUMB_SIDE, Distribution, ReleaseStats
from taisu_etl.vocab import REASONS, State

CAPTION_PLOT = f"{layout.CARD_DIR}/caption_length.png"
GEN_CAPTION_PLOT = f"{layout.CARD_DIR}/gen_caption_length.png"
SCORE_PLOT = f"{layout.CARD_DIR}/score.png"
WORDCLOUD = f"{layout.CARD_DIR}/wordcloud.png"
EXAMPLES_GRID = f"{layout.CARD_DIR}/examples.png"
GRID_COLUMNS = 4
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


def _length_plot(path: Path, counts: dict[int, int], title: str, font_path: str) -> None:
    lengths = sorted(counts)
    bins = [e - 0.5 for e in _edges(lengths[0], lengths[-1], 1)] if lengths else [0.0, 1.0]
    _histogram(path, lengths, [counts[n] for n in lengths], title=title, xlabel="字符数 (characters)", bins=bins, font_path=font_path)


def caption_length_plot(path: Path, stats: ReleaseStats, font_path: str) -> None:
    _length_plot(path, stats.caption_lengths, "网页描述长度 (web caption length)", font_path)


def gen_caption_length_plot(path: Path, stats: ReleaseStats, font_path: str) -> None:
    _length_plot(path, stats.gen_caption_lengths, "生成描述长度 (generated caption length)", font_path)


def score_plot(path: Path, stats: ReleaseStats, font_path: str) -> None:
    keys = sorted(stats.score_bins)
    centres = [(k + 0.5) * SCORE_STEP for k in keys]
    bins = _edges(keys[0], keys[-1], SCORE_STEP) if keys else [0.0, 1.0]
    _histogram(path, centres, [stats.score_bins[k] for k in keys], title="图文匹配分数 (image-text score)",
               xlabel="分数 (score)", bins=bins, font_path=font_path)


def wordcloud_image(path: Path, stats: ReleaseStats, font_path: str) -> None:
    from PIL import Image, ImageDraw, ImageFont
    from wordcloud import WordCloud

    words = stats.cloud_frequencies()
    if words:
        cloud = WordCloud(font_path=font_path, width=900, height=450, background_color="white", random_state=0,
                          max_words=200, collocations=False, prefer_horizontal=0.9)
        image = cloud.generate_from_frequencies(words).to_image()
    else:
        image = Image.new("RGB", (900, 450), "white")
        ImageDraw.Draw(image).text((350, 200), "无词 (no words)", fill="black", font=ImageFont.truetype(font_path, 32))
    image.save(path, format="PNG")


def _wrap(text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """Lines of `text` that fit `width` pixels, character by character (Chinese has no spaces); an
    ellipsis ends a text cut short."""
    lines: list[str] = []
    line = ""
    for ch in text.replace("\n", " "):
        if font.getlength(line + ch) > width:
            lines.append(line)
            line = ch
            if len(lines) == max_lines:
                break
        else:
            line += ch
    else:
        if line:
            lines.append(line)
        return lines
    last = lines[-1]
    while last and font.getlength(last + "…") > width:
        last = last[:-1]
    lines[-1] = last + "…"
    return lines


def examples_grid(path: Path, stats: ReleaseStats, font_path: str) -> None:
    """A PNG of the example pairs: thumbnail, web caption (w) and generated caption (g) in each cell."""
    from PIL import Image, ImageDraw, ImageFont

    examples = stats.examples()
    pad, text_lines, size = 10, 4, 15
    font = ImageFont.truetype(font_path, size)
    line_h = size + 4
    cell_w = THUMB_SIDE + 2 * pad + 40
    cell_h = THUMB_SIDE + 2 * pad + 2 * text_lines * line_h + 6
    columns = max(1, min(GRID_COLUMNS, len(examples)))
    rows = max(1, math.ceil(len(examples) / columns))
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    if not examples:
        draw.text((pad, pad), "无样例 (no examples)", fill="black", font=font)
    for i, ex in enumerate(examples):
        x0, y0 = (i % columns) * cell_w, (i // columns) * cell_h
        box = (x0 + pad + 20, y0 + pad)
        thumb = ex.thumbnail
        if thumb is not None:
            grid.paste(thumb, (box[0] + (THUMB_SIDE - thumb.width) // 2, box[1] + (THUMB_SIDE - thumb.height) // 2))
        else:
            draw.rectangle((box[0], box[1], box[0] + THUMB_SIDE - 1, box[1] + THUMB_SIDE - 1), outline="#999999")
            draw.text((box[0] + 10, box[1] + THUMB_SIDE // 2), "无图 (no image)", fill="#999999", font=font)
        y = y0 + pad + THUMB_SIDE + 6
        for label, text, colour in (("w", ex.w, "black"), ("g", ex.g if ex.g is not None else "-", "#1f5f99")):
            for line in _wrap(f"{label}: {text}", font, cell_w - 2 * pad, text_lines):
                draw.text((x0 + pad, y), line, fill=colour, font=font)
                y += line_h
        draw.rectangle((x0, y0, x0 + cell_w - 1, y0 + cell_h - 1), outline="#dddddd")
    grid.save(path, format="PNG")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _size_rows(label: str, dist: Distribution, show: Any) -> list[Any]:
    if dist.n == 0:
        return [label, "-", *["-" for _ in PERCENTILES], "-"]
    return [label, show(dist.min), *[show(dist.percentile(p)) for p in PERCENTILES], show(dist.max)]


def _kib(value: int) -> str:
    return f"{value / BYTES_UNIT:,.1f} KiB" if value < 1024 * BYTES_UNIT else f"{value / BYTES_UNIT / 1024:,.2f} MiB"


SHORT_SIDE_BUCKETS = (0, 256, 384, 512, 768, 1024, 2048)
BYTES_BUCKETS = tuple(k * BYTES_UNIT for k in (0, 32, 64, 128, 256, 512, 1024, 2048))


def _buckets(dist: Distribution, edges: Sequence[int], show: Any) -> list[list[Any]]:
    rows = []
    for lo, hi in zip(edges, [*edges[1:], None]):
        n = dist.count_between(lo, hi)
        label = f"{show(lo)} - {show(hi)}" if hi is not None else f">= {show(lo)}"
        rows.append([label, n, f"{100 * n / dist.n:.1f}%" if dist.n else "-"])
    return rows


def size_section(stats: ReleaseStats) -> list[str]:
    """Resolution and file-size statistics of the released images."""
    lines = [
        "## Images: resolution and file size",
        "",
        f"Of the {stats.widths.n:,} released images, read from their JPEG headers; percentiles are nearest-rank "
        f"values rounded down to {MP_UNIT / 1e6:.2f} MP and to whole KiB (never below the minimum); 1 KiB = 1024 bytes.",
        "",
    ]
    lines += _table(["measure", "min", *[f"p{p}" if p != 50 else "median" for p in PERCENTILES], "max"], [
        _size_rows("width (px)", stats.widths, str),
        _size_rows("height (px)", stats.heights, str),
        _size_rows("shorter side (px)", stats.short_sides, str),
        _size_rows("megapixels", stats.pixels, lambda v: f"{v / 1e6:.2f}"),
        _size_rows("file size", stats.file_bytes, _kib),
    ])
    lines += ["", "Shorter side:", ""]
    lines += _table(["pixels", "images", "share"], _buckets(stats.short_sides, SHORT_SIDE_BUCKETS, str))
    lines += ["", "File size:", ""]
    lines += _table(["size", "images", "share"], _buckets(stats.file_bytes, BYTES_BUCKETS, _kib))
    return lines


def _rule_text(rule: dict[str, Any] | None) -> str:
    if not rule:
        return "The rule that decided the pairs is not recorded in this release's manifest; each sample's score event in the ledger records it."
    if rule.get("rule") == "taisu":
        both = "and" if rule.get("mode") == "and" else "or"
        return (
            f"Rule `taisu` (TaiSu's retrieval filter): the pairs of each scoring chunk were shuffled (seed {rule.get('seed')}) into "
            f"groups of {rule.get('group_size')}; a pair was kept when its image ranks its own caption first among the group's "
            f"captions {both} its caption ranks its own image first among the group's images. The score itself did not decide; "
            "the ranks did."
        )
    if rule.get("rule") == "threshold":
        return f"Rule `threshold`: a pair was kept when its score is at least {rule.get('threshold')}."
    if rule.get("rule") == "quantile":
        return (f"Rule `quantile`: within each scoring chunk, the lowest-scoring {rule.get('quantile')} share of the pairs "
                "was dropped (the cut-off of each chunk is in the sample's score event).")
    return f"Rule `{rule.get('rule')}` with parameters {rule}."


def score_section(manifest: dict[str, Any], record: dict[str, Any]) -> list[str]:
    models = [m for m in manifest["models"]["score"] if m != "none"]
    named = ", ".join(f"`{m}`" for m in models) or "none (no sample of this release has a score)"
    lines = [
        "## What the score means",
        "",
        "`score` (webdataset `.json`, Parquet column) is the cosine similarity of the image embedding and the web caption "
        "embedding of a CLIP-style retrieval model, in [-1, 1]; `score_model` names the model. Scores of different models "
        f"are not comparable. Scoring model(s) of this release: {named}.",
        "",
        _rule_text(record.get("score_rule")),
    ]
    if manifest["recipe"].get("min_score") is not None:
        lines += ["", f"This release then also left out every pair scoring below {manifest['recipe']['min_score']}."]
    return lines


def terms_section(manifest: dict[str, Any], record: dict[str, Any]) -> list[str]:
    licence = f"[{record['licence']}]({record['licence_url']})" if record.get("licence_url") else record["licence"]
    lines = ["## Licence and terms", "", f"Licence: {licence}. TaiSu was released under CC BY-NC-SA 4.0.", ""]
    if record.get("terms"):
        lines += [record["terms"], ""]
    lines += ["## Citation", "", "If you use this release, cite it"
              + (" and TaiSu, whose method it follows:" if record.get("citation") else " by citing TaiSu, whose method it follows:"), ""]
    if record.get("citation"):
        lines += ["```bibtex", record["citation"].strip(), "```", ""]
    lines += ["```bibtex", TAISU_BIBTEX, "```", ""]
    contact = record.get("takedown_contact")
    lines += ["## Takedown requests", ""]
    if contact:
        lines.append(f"Rights holders and people shown in an image can ask for its removal: write to **{contact}**.")
    else:
        lines.append("No takedown contact was set for this release (`[release] takedown_contact` in the recipe): "
                     "ask the publisher of this copy.")
    lines += [
        "Name the images by sample id (the file name in the shards, listed in `ids.txt`), image URL, sha256 of the image, "
        "a copy of the picture, or a whole domain; say who you are, how to reach you and why (e.g. copyright, privacy). "
        "A copy of the picture also finds re-hosted and re-encoded copies of it.",
        "",
        f"When a request is accepted, the images are deleted from the store and every published release that holds them gets a new version without them "
        f"(the rewritten shards at the same paths, and their ids in `removed.txt`); they are blocklisted so they are never "
        f"collected again. Holders of a copy of `{manifest['name']}` must delete the ids in a newer version's `removed.txt`.",
        "",
    ]
    return lines


def readme(manifest: dict[str, Any], funnel: dict[str, int], reasons: list[tuple[str, str | None, int]], stats: ReleaseStats) -> str:
    name = manifest["name"]
    record = {**card_record(), **(manifest.get("card") or {})}
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
        *terms_section(manifest, record),
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
        txt = {
            "g": "`<id>.txt` (generated caption, the web caption where there is none)",
            "both": "`<id>.txt` (web caption), `<id>.gen.txt` (generated caption, where there is one)",
        }.get(recipe.get("wds_captions", "w") if recipe["generated_captions"] else "w", "`<id>.txt` (web caption)")
        lines.append(f"- `webdataset/NNNNN.tar`: `<id>.jpg`, {txt}, `<id>.json` (metadata); "
                     "`webdataset/sizes.json` gives the sample counts open_clip's trainer reads.")
        names = [s["name"] for s in manifest.get("shards") or []]
        if names:
            # open_clip_train refuses fewer shards than data-loading workers x GPUs (its --workers defaults to 4).
            lines.append(
                f"  Train with open_clip: `python -m open_clip_train.main --dataset-type webdataset "
                f"--train-data 'webdataset/{{{names[0]}..{names[-1]}}}.tar' --train-num-samples {counts['samples']} "
                f"--workers {min(4, len(names))} ...`; workers x GPUs must not exceed the {len(names)} shard(s)."
            )
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
    examples = stats.examples()
    lines += ["", *score_section(manifest, record), "", *size_section(stats), ""]
    lines += [
        "## Examples",
        "",
        f"{len(examples)} pairs chosen by the lowest sha256 of their id (the same ones in every build of these samples): "
        "the image, its web caption (`w`) and its generated caption (`g`, `-` when it has none).",
        "",
        "![example pairs](card/examples.png)",
        "",
    ]
    lines += _table(["id", "web caption (w)", "generated caption (g)"],
                    [[f"`{e.sample_id}`", _cell(e.w), _cell(e.g) if e.g is not None else "-"] for e in examples])
    lines += [
        "",
        "## Statistics",
        "",
        "![web caption length](card/caption_length.png)",
        "",
        f"![generated caption length](card/gen_caption_length.png) ({stats.with_generated:,} samples with a generated caption)",
        "",
        "![image-text score](card/score.png)",
        "",
        f"![word cloud](card/wordcloud.png) (jieba words of the web and generated captions of the first {stats.word_samples} "
        "samples in id order, without the stop words of the package's stopwords_zh.txt and numeral + measure words such as 一只)",
        "",
    ]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def render(directory: Path, manifest: dict[str, Any], funnel: dict[str, int], reasons: list[tuple[str, str | None, int]],
           stats: ReleaseStats, font_path: str) -> dict[str, Path]:
    """Write the card's files under `directory`; returns release path -> local file."""
    (directory / layout.CARD_DIR).mkdir(parents=True, exist_ok=True)
    files = {
        CAPTION_PLOT: directory / CAPTION_PLOT,
        GEN_CAPTION_PLOT: directory / GEN_CAPTION_PLOT,
        SCORE_PLOT: directory / SCORE_PLOT,
        WORDCLOUD: directory / WORDCLOUD,
        EXAMPLES_GRID: directory / EXAMPLES_GRID,
        layout.README: directory / layout.README,
    }
    caption_length_plot(files[CAPTION_PLOT], stats, font_path)
    gen_caption_length_plot(files[GEN_CAPTION_PLOT], stats, font_path)
    score_plot(files[SCORE_PLOT], stats, font_path)
    wordcloud_image(files[WORDCLOUD], stats, font_path)
    examples_grid(files[EXAMPLES_GRID], stats, font_path)
    files[layout.README].write_text(readme(manifest, funnel, reasons, stats), encoding="utf-8")
    return files
