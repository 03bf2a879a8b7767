"""Scenes, captions and pairs: captions say what the pixels show, and everything is reproducible."""

from __future__ import annotations

import io
import random
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from taisu_etl.synthweb import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    caption,
    caption_matches,
    make_pairs,
    parse_caption,
    random_scene,
    render,
    render_jpegs,
)
from taisu_etl.synthweb.scenes import TEMPLATES


@pytest.fixture(scope="module")
def many() -> list:
    return make_pairs(600, seed=11, mismatch_rate=0.1)


def test_captions_name_the_colour_and_shape_of_their_scene(many: list) -> None:
    for pair in many:
        if not pair.matched:
            continue
        text = pair.caption
        assert 5 <= len(text) <= 50, text
        assert pair.scene.colour in text and pair.scene.shape in text, text
        facts = parse_caption(text)
        assert (facts.shape, facts.colour) == (pair.scene.shape, pair.scene.colour), text
        for said, actual in ((facts.background, pair.scene.background), (facts.size, pair.scene.size),
                             (facts.position, pair.scene.position)):
            assert said in (None, actual), text
        assert caption_matches(text, pair.scene)


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_reads_back_completely(template: str) -> None:
    rng = random.Random(template)
    for _ in range(40):
        scene = random_scene(rng)
        text = template.format(c=scene.colour, s=scene.shape, bg=scene.background, sz=scene.size, pos=scene.position)
        facts = parse_caption(text)
        assert facts.shape == scene.shape and facts.colour == scene.colour, text
        assert facts.background == (scene.background if "{bg}" in template else None), text
        assert facts.size == (scene.size if "{sz}" in template else None), text
        assert facts.position == (scene.position if "{pos}" in template else None), text
        assert 5 <= len(text) <= 50


def test_all_templates_are_used(many: list) -> None:
    rng = random.Random(0)
    scene = random_scene(rng)
    seen = {caption(scene, rng) for _ in range(400)}
    assert len(seen) == len(TEMPLATES)


def test_mismatched_pairs_carry_another_scene_s_caption(many: list) -> None:
    mismatched = [p for p in many if not p.matched]
    assert len(mismatched) == 60  # exactly round(600 * 0.1)
    for pair in mismatched:
        assert pair.caption_scene != pair.scene
        assert pair.caption_scene.shape != pair.scene.shape
        assert pair.caption_scene.colour != pair.scene.colour
        assert caption_matches(pair.caption, pair.caption_scene)
        assert not caption_matches(pair.caption, pair.scene)
    for pair in many:
        if pair.matched:
            assert pair.caption_scene == pair.scene


@pytest.mark.parametrize("rate, expected", [(0.0, 0), (0.25, 5), (1.0, 20)])
def test_mismatch_rate_is_exact(rate: float, expected: int) -> None:
    assert sum(not p.matched for p in make_pairs(20, seed=1, mismatch_rate=rate)) == expected


def test_same_seed_same_pairs_and_bytes() -> None:
    a = make_pairs(25, seed=5)
    b = make_pairs(25, seed=5)
    assert a == b
    assert [p.jpeg() for p in a] == [p.jpeg() for p in b]
    assert [p.caption for p in make_pairs(25, seed=6)] != [p.caption for p in a]


def test_splits_are_disjoint_streams() -> None:
    train = make_pairs(50, seed=5, split="train")
    held = make_pairs(50, seed=5, split="heldout")
    assert not {p.id for p in train} & {p.id for p in held}
    assert {p.split for p in held} == {"heldout"}
    assert [p.scene for p in train] != [p.scene for p in held]
    assert all(p.id.startswith("heldout-5-") for p in held)


def test_jpeg_decodes_to_the_requested_size() -> None:
    pair = make_pairs(1, seed=2)[0]
    data = pair.jpeg()
    assert data[:2] == b"\xff\xd8"
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG" and img.size == (256, 256) and img.mode == "RGB"
    assert render(pair.scene, (320, 200)).size == (320, 200)


def _shape_mask(scene: Scene, size: tuple[int, int] = (256, 256)) -> np.ndarray:
    pixels = np.asarray(render(scene, size), dtype=np.int32)
    return np.abs(pixels - np.array(COLOURS[scene.colour])).max(axis=2) <= 30


def test_the_pixels_show_what_the_scene_says() -> None:
    """Position: where the shape's pixels are; size: big beats small for every shape; colours:
    the corner is the background."""
    rng = random.Random(99)
    areas: dict[tuple[str, str], list[float]] = defaultdict(list)
    for _ in range(240):
        scene = random_scene(rng)
        mask = _shape_mask(scene)
        ys, xs = np.nonzero(mask)
        assert len(xs) > 0, scene
        cx, cy = xs.mean() / 256, ys.mean() / 256
        if scene.position == "左边":
            assert cx < 0.4 and 0.4 < cy < 0.6, scene
        elif scene.position == "右边":
            assert cx > 0.6 and 0.4 < cy < 0.6, scene
        elif scene.position == "上方":
            assert cy < 0.4 and 0.4 < cx < 0.6, scene
        elif scene.position == "下方":
            assert cy > 0.6 and 0.4 < cx < 0.6, scene
        else:
            assert 0.4 < cx < 0.6 and 0.4 < cy < 0.6, scene
        areas[(scene.shape, scene.size)].append(mask.mean())
        corner = np.asarray(render(scene, (256, 256)))[2, 2].astype(int)
        assert np.abs(corner - np.array(COLOURS[scene.background])).max() <= 12, scene
    for shape in SHAPES:
        big, small = areas[(shape, "大")], areas[(shape, "小")]
        assert big and small, shape
        assert min(big) > max(small), shape


def test_render_jpegs_in_parallel_gives_the_same_bytes() -> None:
    pairs = make_pairs(1200, seed=8)
    serial = render_jpegs(pairs)
    assert serial == render_jpegs(pairs, workers=2)
    assert serial[pairs[0].id] == pairs[0].jpeg()


def test_scenes_refuse_unknown_words_and_invisible_shapes() -> None:
    with pytest.raises(ValueError, match="unknown colour"):
        Scene("圆形", "金色", "蓝色", "大", "左边")
    with pytest.raises(ValueError, match="unknown shape"):
        Scene("椭圆", "红色", "蓝色", "大", "左边")
    with pytest.raises(ValueError, match="too hard to see"):
        Scene("圆形", "红色", "红色", "大", "左边")
    with pytest.raises(ValueError, match="too hard to see"):
        Scene("圆形", "红色", "橙色", "大", "左边")  # too close to tell apart


@pytest.mark.parametrize("kwargs", [{"n": -1}, {"n": 3, "mismatch_rate": 1.5}, {"n": 3, "split": "test"}])
def test_make_pairs_checks_its_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_pairs(**kwargs)


def test_parse_caption_on_unrelated_or_contradicting_text() -> None:
    facts = parse_caption("今天天气很好")
    assert facts == type(facts)(None, None, None, None, None)
    scene = Scene("圆形", "红色", "蓝色", "大", "左边")
    assert caption_matches("一个红色的大圆形在画面左边", scene)
    assert not caption_matches("一个红色的小圆形在画面左边", scene)  # wrong size
    assert not caption_matches("一个红色的大圆形在画面右边", scene)  # wrong position
    assert not caption_matches("绿色背景上有一个红色的圆形", scene)  # wrong background
    assert not caption_matches("蓝色背景上有一个圆形", scene)  # no colour for the shape


def test_vocabulary_is_covered() -> None:
    pairs = make_pairs(2000, seed=1, mismatch_rate=0.0)
    assert {p.scene.shape for p in pairs} == set(SHAPES)
    assert {p.scene.colour for p in pairs} == set(COLOURS)
    assert {p.scene.size for p in pairs} == set(SIZES)
    assert {p.scene.position for p in pairs} == set(POSITIONS)
