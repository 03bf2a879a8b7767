"""The dataset card: licence, citation, takedown contact, score meaning, image statistics, example
grid, generated-caption lengths and a word cloud without stop words; checked against numbers the
test computes itself from the release's files, and reproducible byte for byte."""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image

from taisu_etl.config import load_settings
from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import sample
from taisu_etl.release import ReleaseOptions, create_release
from taisu_etl.release import card as card_module
from taisu_etl.release.card_config import TAISU_BIBTEX, ReleaseCardConfig, card_record
from taisu_etl.release.patch import patch_release
from taisu_etl.release.stats import Distribution, ReleaseStats, stop_words
from taisu_etl.stages.model_config import ScoreConfig
from taisu_etl.storage import LocalObjectStore, ObjectStore

from .support import SCORE_MODEL, Seeded, download_release, seed, take_down

CITATION = "@misc{demo2026,\n  title = {Demo release},\n  year = {2026}\n}"
CONTACT = "takedown@datasets.example.org"
PNGS = ("caption_length", "gen_caption_length", "score", "wordcloud", "examples")


def _varied_images(ledger: Ledger, store: ObjectStore, seeded: Seeded) -> None:
    """Give every eligible sample a stored JPEG of its own size (the seed's are all 32 x 32), so the
    resolution and file-size statistics have something to measure."""
    rng = random.Random(7)
    with ledger.engine.begin() as conn:
        for uid in sorted(seeded.eligible):
            w, h = rng.randint(40, 420), rng.randint(40, 420)
            img = Image.effect_noise((w, h), rng.uniform(10, 90)).convert("RGB")
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=rng.randint(40, 95))
            put = store.put_image(buf.getvalue())
            conn.execute(sa.update(sample).where(sample.c.url_id == uid).values(
                object_key=put.key, sha256=put.sha256, width=w, height=h, bytes=put.size))


@pytest.fixture
def built(sqlite_ledger: Ledger, local_store: LocalObjectStore, tmp_path: Path) -> tuple[Seeded, Path]:
    seeded = seed(sqlite_ledger, local_store)
    _varied_images(sqlite_ledger, local_store, seeded)
    info = card_record(ReleaseCardConfig(licence="CC BY-NC-SA 4.0", citation=CITATION, takedown_contact=CONTACT),
                       ScoreConfig(rule="threshold", threshold=0.25))
    create_release(sqlite_ledger, local_store, "c", ReleaseOptions(shard_size=7, parent=None), card_info=info)
    return seeded, download_release(local_store, "c", tmp_path / "c")


def _members(root: Path) -> list[dict]:
    """Every webdataset sample of the release: its metadata, the image bytes and its decoded size."""
    out = []
    for shard in sorted((root / "webdataset").glob("*.tar")):
        with tarfile.open(shard) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        for name in sorted(n for n in files if n.endswith(".json")):
            key = name[: -len(".json")]
            meta = json.loads(files[name])
            image = files[f"{key}.jpg"]
            with Image.open(io.BytesIO(image)) as im:
                meta["_size"], meta["_bytes"] = im.size, len(image)
            out.append(meta)
    return out


def _section(text: str, heading: str) -> str:
    return text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _rows(section: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip().strip("`") for c in r] for r in rows]


def _nearest_rank(values: list[int], p: float, unit: int) -> int:
    ordered = sorted(values)
    v = ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]
    return max(v // unit * unit, ordered[0])


def test_card_says_licence_citation_contact_and_what_the_score_means(built: tuple[Seeded, Path]) -> None:
    _, root = built
    text = (root / "README.md").read_text(encoding="utf-8")
    assert "Licence: [CC BY-NC-SA 4.0](https://creativecommons.org/licenses/by-nc-sa/4.0/)" in text
    assert "non-commercial research only" in _section(text, "Licence and terms")
    citation = _section(text, "Citation")
    assert CITATION in citation and TAISU_BIBTEX in citation and citation.index(CITATION) < citation.index(TAISU_BIBTEX)
    assert "TaiSu: A 166M Large-scale High-Quality Dataset for Chinese Vision-Language Pre-training" in citation
    takedown = _section(text, "Takedown requests")
    assert f"**{CONTACT}**" in takedown and "sample id" in takedown and "removed.txt" in takedown
    score = _section(text, "What the score means")
    assert f"`{SCORE_MODEL}`" in score and "cosine similarity" in score
    assert "Rule `threshold`: a pair was kept when its score is at least 0.25." in score
    # Recorded in the manifest, so a takedown patch's card says the same.
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["card"]["takedown_contact"] == CONTACT and manifest["card"]["citation"] == CITATION
    assert manifest["card"]["score_rule"] == {"rule": "threshold", "threshold": 0.25}


def test_defaults_are_taisus_licence_and_citation_and_say_no_contact_is_set(sqlite_ledger: Ledger, local_store: LocalObjectStore) -> None:
    seed(sqlite_ledger, local_store)
    create_release(sqlite_ledger, local_store, "d", ReleaseOptions(shard_size=10, parent=None))
    text = local_store.get("releases/d/README.md").decode()
    assert "Licence: [CC BY-NC-SA 4.0]" in text and TAISU_BIBTEX in text
    assert "No takedown contact was set for this release (`[release] takedown_contact`" in text
    assert "not recorded in this release's manifest" in _section(text, "What the score means")


def test_the_rule_texts_name_each_rules_parameters() -> None:
    taisu = card_module._rule_text(card_record(None, ScoreConfig(rule="taisu", group_size=60, mode="and", seed=3))["score_rule"])
    assert "groups of 60" in taisu and "seed 3" in taisu and "captions and its caption" in taisu
    quantile = card_module._rule_text(card_record(None, ScoreConfig(rule="quantile", quantile=0.3))["score_rule"])
    assert "lowest-scoring 0.3 share" in quantile


def test_resolution_and_file_size_statistics_match_the_released_images(built: tuple[Seeded, Path]) -> None:
    seeded, root = built
    members = _members(root)
    assert len(members) == len(seeded.eligible)
    widths = [m["_size"][0] for m in members]
    heights = [m["_size"][1] for m in members]
    shorts = [min(m["_size"]) for m in members]
    pixels = [m["_size"][0] * m["_size"][1] for m in members]
    sizes = [m["_bytes"] for m in members]
    assert len(set(widths)) > 10 and len(set(sizes)) > 10  # the fixture really varied them
    text = (root / "README.md").read_text(encoding="utf-8")
    section = _section(text, "Images: resolution and file size")
    table = {r[0]: r[1:] for r in _rows(section)}
    assert table["measure"] == ["min", "median", "p90", "p99", "max"]

    def expect(values: list[int], unit: int, show) -> list[str]:
        return [show(min(values)), *[show(_nearest_rank(values, p, unit)) for p in (50, 90, 99)], show(max(values))]

    kib = lambda v: f"{v / 1024:,.1f} KiB"  # noqa: E731  (every size here is under 1 MiB)
    assert table["width (px)"] == expect(widths, 1, str)
    assert table["height (px)"] == expect(heights, 1, str)
    assert table["shorter side (px)"] == expect(shorts, 1, str)
    assert table["megapixels"] == expect(pixels, 10_000, lambda v: f"{v / 1e6:.2f}")
    assert table["file size"] == expect(sizes, 1024, kib)
    # The bucket tables: counts of shorter sides and file sizes per range.
    short_rows = _rows(section.split("Shorter side:", 1)[1].split("File size:", 1)[0])[1:]
    edges = [0, 256, 384, 512, 768, 1024, 2048]
    assert [int(r[1]) for r in short_rows] == [
        sum(lo <= s and (hi is None or s < hi) for s in shorts) for lo, hi in zip(edges, [*edges[1:], None])
    ]
    size_rows = _rows(section.split("File size:", 1)[1])[1:]
    kedges = [k * 1024 for k in (0, 32, 64, 128, 256, 512, 1024, 2048)]
    assert [int(r[1]) for r in size_rows] == [
        sum(lo <= b and (hi is None or b < hi) for b in sizes) for lo, hi in zip(kedges, [*kedges[1:], None])
    ]
    assert sum(int(r[1]) for r in size_rows) == len(members)


def test_example_grid_shows_the_lowest_hashed_ids_with_both_captions(built: tuple[Seeded, Path]) -> None:
    _, root = built
    members = {m["id"]: m for m in _members(root)}
    wanted = sorted(members, key=lambda i: hashlib.sha256(i.encode()).digest())[:12]
    text = (root / "README.md").read_text(encoding="utf-8")
    rows = _rows(_section(text, "Examples"))[1:]
    assert [r[0] for r in rows] == wanted
    for sid, w, g in rows:
        assert w == members[sid]["caption"]
        assert g == (members[sid]["gen_caption"] if members[sid]["gen_caption"] is not None else "-")
    assert any(r[2] != "-" for r in rows) and any(r[2] == "-" for r in rows)
    with Image.open(root / "card" / "examples.png") as im:
        assert im.format == "PNG" and im.size[0] > 4 * 192 and im.size[1] > 3 * 192
        grey = im.convert("L")
        cell_w, cell_h = im.size[0] // 4, im.size[1] // 3
        for k, sid in enumerate(wanted):
            # The thumbnail area of cell k is covered by the (noise) picture, shrunk to fit 192 px, not a placeholder.
            x0, y0 = (k % 4) * cell_w, (k // 4) * cell_h
            region = grey.crop((x0, y0, x0 + cell_w, y0 + 192 + 20))
            w, h = members[sid]["_size"]
            scale = min(1.0, 192 / max(w, h))
            drawn = sum(1 for v in region.getdata() if v < 250)
            assert drawn >= 0.8 * (w * scale) * (h * scale), sid


def test_every_card_png_decodes_and_carries_no_software_stamp(built: tuple[Seeded, Path]) -> None:
    _, root = built
    text = (root / "README.md").read_text(encoding="utf-8")
    for name in PNGS:
        path = root / "card" / f"{name}.png"
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] >= 600
            assert "Software" not in im.info
            assert len(set(im.convert("L").getdata())) > 10  # something was drawn
        assert f"](card/{name}.png)" in text


def test_generated_caption_lengths_are_counted_apart_from_web_ones(built: tuple[Seeded, Path], sqlite_ledger: Ledger) -> None:
    seeded, root = built
    members = _members(root)
    gens = Counter(len(m["gen_caption"]) for m in members if m["gen_caption"] is not None)
    webs = Counter(len(m["caption"]) for m in members)
    stats = ReleaseStats()
    for m in members:
        stats.add(m["caption"], m["gen_caption"], m["score"], m["score_model"], m["gen_caption_model"])
    assert stats.gen_caption_lengths == gens and stats.caption_lengths == webs and gens != webs
    assert sum(gens.values()) == len(seeded.captioned_with_g)
    assert f"({len(seeded.captioned_with_g):,} samples with a generated caption)" in (root / "README.md").read_text(encoding="utf-8")


def test_word_cloud_is_drawn_without_stop_words(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from wordcloud import WordCloud

    from taisu_etl.release.fonts import find_cjk_font

    assert {"我们", "这个", "一个", "and"} <= stop_words()
    stats = ReleaseStats()
    captions = ["我们在公园里看到一个可爱的小猫", "这个公园非常漂亮，我们一起拍照", "A cat and a dog in the park"]
    for c in captions:
        stats.add(c, "我们看到公园里的小狗", 0.3, "m", "c")
    freqs = stats.cloud_frequencies()
    assert "公园" in freqs and freqs["公园"] == 5 and "park" in freqs
    assert not set(freqs) & stop_words()
    assert not {w.lower() for w in freqs} & stop_words()
    assert "小猫" in freqs and "一个" not in freqs  # numeral + measure word: out by pattern
    measured = ReleaseStats()
    measured.add("两只小狗和一辆汽车", None, 0.3, "m", None)
    assert set(measured.cloud_frequencies()) == {"小狗", "汽车"}
    # The cloud is drawn from exactly these frequencies.
    seen: list[dict[str, float]] = []
    original = WordCloud.generate_from_frequencies

    def spy(self: WordCloud, frequencies: dict[str, float], *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(dict(frequencies))
        return original(self, frequencies, *args, **kwargs)

    monkeypatch.setattr(WordCloud, "generate_from_frequencies", spy)
    card_module.wordcloud_image(tmp_path / "cloud.png", stats, find_cjk_font())
    assert seen[0] == freqs  # (wordcloud calls itself again with rescaled frequencies)


def test_distribution_percentiles_are_exact_at_their_unit_in_bounded_memory() -> None:
    rng = random.Random(1)
    values = [int(rng.lognormvariate(11, 1)) for _ in range(20_000)]
    dist = Distribution(1024)
    for v in values:
        dist.add(v)
    assert (dist.min, dist.max, dist.n) == (min(values), max(values), len(values))
    for p in (1, 50, 90, 99, 100):
        assert dist.percentile(p) == _nearest_rank(values, p, 1024)
    assert len(dist.counts) <= max(values) // 1024 + 1 and len(dist.counts) < len(set(values)) / 5


def test_the_card_is_the_same_whatever_the_shard_size(built: tuple[Seeded, Path], sqlite_ledger: Ledger,
                                                      local_store: LocalObjectStore, tmp_path: Path) -> None:
    _, root = built
    info = json.loads((root / "manifest.json").read_text())["card"]
    create_release(sqlite_ledger, local_store, "c2", ReleaseOptions(shard_size=3, parent=None, min_shards=1), card_info=info)
    again = download_release(local_store, "c2", tmp_path / "c2")
    for name in PNGS:
        assert (again / "card" / f"{name}.png").read_bytes() == (root / "card" / f"{name}.png").read_bytes(), name
    first, second = (p.read_text(encoding="utf-8") for p in (root / "README.md", again / "README.md"))
    for heading in ("Licence and terms", "Citation", "What the score means", "Images: resolution and file size", "Examples"):
        assert _section(first, heading) == _section(second, heading).replace("`c2`", "`c`"), heading


def test_a_takedown_of_an_example_redraws_the_grid_as_a_fresh_build_would(built: tuple[Seeded, Path], sqlite_ledger: Ledger,
                                                                          local_store: LocalObjectStore, tmp_path: Path) -> None:
    _, root = built
    text = (root / "README.md").read_text(encoding="utf-8")
    victim = _rows(_section(text, "Examples"))[1][0]
    patch_release(sqlite_ledger, local_store, "c", [take_down(sqlite_ledger, victim)])
    info = json.loads((root / "manifest.json").read_text())["card"]
    create_release(sqlite_ledger, local_store, "fresh", ReleaseOptions(shard_size=7, parent=None), card_info=info)
    patched = download_release(local_store, "c", tmp_path / "patched")
    fresh = download_release(local_store, "fresh", tmp_path / "fresh")
    assert victim not in (patched / "README.md").read_text(encoding="utf-8")
    for name in PNGS:
        assert (patched / "card" / f"{name}.png").read_bytes() == (fresh / "card" / f"{name}.png").read_bytes(), name
    patched_text = (patched / "README.md").read_text(encoding="utf-8")
    assert f"**{CONTACT}**" in patched_text and CITATION in patched_text  # the manifest's card record, repeated
    assert _section(patched_text, "Images: resolution and file size") == _section((fresh / "README.md").read_text(encoding="utf-8"),
                                                                                    "Images: resolution and file size")


def test_the_recipe_sets_what_the_card_says(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[release]\nlicence = "CC BY 4.0"\ntakedown_contact = "https://example.org/takedown"\n'
                      '[score]\nrule = "quantile"\nquantile = 0.2\n', encoding="utf-8")
    settings = load_settings(recipe)
    record = card_record(settings.release, settings.score)
    assert record["licence"] == "CC BY 4.0" and record["takedown_contact"] == "https://example.org/takedown"
    assert record["score_rule"] == {"rule": "quantile", "quantile": 0.2}
    assert load_settings().release == ReleaseCardConfig()
