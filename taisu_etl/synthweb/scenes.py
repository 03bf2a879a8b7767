"""Synthetic images whose Chinese captions say what is in them.

A scene is one coloured shape of a given size at a given position on a plain background. Every
attribute is visible in the pixels and named by a word in the caption, so a tiny CLIP model can
learn colour and shape from a few thousand pairs, and a captioner's output can be checked word by
word (`parse_caption`, `caption_matches`). A share of pairs is deliberately mismatched: the image
gets the caption of another scene that differs in both shape and colour, so a retrieval filter
has something clear to catch, and the pair is flagged `matched=False`.

Everything is a function of (seed, split, index): same inputs, same scenes, captions and JPEG
bytes. The "train" and "heldout" splits draw from independent random streams, so held-out images
are new drawings of the same vocabulary.
"""

from __future__ import annotations

import concurrent.futures
import io
import math
import multiprocessing
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image, ImageDraw

# name -> RGB. The names are what captions say; the values are drawn with a small jitter so a
# model has to learn "red", not one exact pixel value.
COLOURS: dict[str, tuple[int, int, int]] = {
    "红色": (215, 35, 35),
    "绿色": (40, 165, 60),
    "蓝色": (35, 75, 215),
    "黄色": (240, 210, 35),
    "紫色": (135, 55, 180),
    "橙色": (245, 135, 25),
    "黑色": (20, 20, 20),
    "白色": (245, 245, 245),
    "灰色": (128, 128, 128),
    "粉色": (245, 155, 195),
    "棕色": (125, 80, 40),
    "青色": (20, 190, 200),
}
SHAPES: tuple[str, ...] = ("圆形", "正方形", "长方形", "三角形", "菱形", "星形", "六边形", "十字形")
SIZES: tuple[str, ...] = ("大", "小")
POSITIONS: tuple[str, ...] = ("左边", "右边", "中间", "上方", "下方")
SPLITS: tuple[str, ...] = ("train", "heldout")

DEFAULT_SIZE: tuple[int, int] = (256, 256)
DEFAULT_QUALITY = 90

# A shape must stand out from its background, or the caption would name something a viewer (and a
# model) cannot see; below this RGB distance the pair of colours is never drawn together.
_MIN_CONTRAST = 120.0
_JITTER = 10

# Drawn at this multiple of the output size and reduced: smooth edges for the price of ~1 ms.
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class Scene:
    """What one image shows. `variant` seeds the small jitter (exact colour, offset, proportions)."""

    shape: str
    colour: str
    background: str
    size: str
    position: str
    variant: int = 0

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.shape, SHAPES, "shape"),
            (self.colour, COLOURS, "colour"),
            (self.background, COLOURS, "background"),
            (self.size, SIZES, "size"),
            (self.position, POSITIONS, "position"),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; known: {', '.join(allowed)}")
        if not _contrasting(self.colour, self.background):
            raise ValueError(f"{self.colour} on {self.background} is too hard to see")

    def attributes(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Pair:
    """One image-caption pair. `caption_scene` is the scene the caption describes: the image's own
    scene when `matched`, another one (different shape and colour) when not."""

    id: str
    scene: Scene
    caption: str
    matched: bool
    split: str
    caption_scene: Scene

    def image(self, size: tuple[int, int] = DEFAULT_SIZE) -> Image.Image:
        return render(self.scene, size)

    def jpeg(self, size: tuple[int, int] = DEFAULT_SIZE, quality: int = DEFAULT_QUALITY) -> bytes:
        # Not cached here: the server keeps the bytes it serves, callers decide what else to keep.
        return encode_jpeg(render(self.scene, size), quality)

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "caption": self.caption,
            "matched": self.matched,
            "split": self.split,
            "scene": self.scene.attributes(),
            "caption_scene": self.caption_scene.attributes(),
        }


def _contrasting(a: str, b: str) -> bool:
    return a != b and math.dist(COLOURS[a], COLOURS[b]) >= _MIN_CONTRAST


_BACKGROUNDS_FOR = {c: tuple(b for b in COLOURS if _contrasting(c, b)) for c in COLOURS}


def random_scene(rng: random.Random) -> Scene:
    """A uniformly drawn scene (the background among the colours that contrast with the shape)."""
    colour = rng.choice(tuple(COLOURS))
    return Scene(
        shape=rng.choice(SHAPES),
        colour=colour,
        background=rng.choice(_BACKGROUNDS_FOR[colour]),
        size=rng.choice(SIZES),
        position=rng.choice(POSITIONS),
        variant=rng.getrandbits(32),
    )


# --------------------------------------------------------------------------- rendering

# Centre of the shape as a fraction of (width, height).
_CENTRES = {"左边": (0.27, 0.5), "右边": (0.73, 0.5), "中间": (0.5, 0.5), "上方": (0.5, 0.27), "下方": (0.5, 0.73)}
# "Radius" (half the extent) as a fraction of the shorter side.
_RADII = {"大": 0.22, "小": 0.11}


def _jittered(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    return tuple(min(255, max(0, v + rng.randint(-_JITTER, _JITTER))) for v in rgb)  # type: ignore[return-value]


def _regular(cx: float, cy: float, r: float, n: int, start: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(start + 2 * math.pi * k / n), cy + r * math.sin(start + 2 * math.pi * k / n)) for k in range(n)]


def _outline(shape: str, cx: float, cy: float, r: float, rng: random.Random) -> list[tuple[float, float]] | None:
    """Polygon of the shape, or None for the circle (drawn as an ellipse)."""
    if shape == "圆形":
        return None
    if shape == "正方形":
        h = r * 0.85  # same visual weight as a circle of radius r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "长方形":
        w, h = r, r * rng.uniform(0.45, 0.6)  # clearly wider than tall, never a square
        return [(cx - w, cy - h), (cx + w, cy - h), (cx + w, cy + h), (cx - w, cy + h)]
    if shape == "三角形":
        return _regular(cx, cy + r * 0.15, r * 1.1, 3, -math.pi / 2)
    if shape == "菱形":
        w = r * rng.uniform(0.6, 0.7)
        return [(cx, cy - r), (cx + w, cy), (cx, cy + r), (cx - w, cy)]
    if shape == "星形":
        outer = _regular(cx, cy, r * 1.1, 5, -math.pi / 2)
        inner = _regular(cx, cy, r * 0.45, 5, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "六边形":
        return _regular(cx, cy, r, 6, 0.0)
    if shape == "十字形":
        a = r * 0.33
        return [
            (cx - a, cy - r), (cx + a, cy - r), (cx + a, cy - a), (cx + r, cy - a),
            (cx + r, cy + a), (cx + a, cy + a), (cx + a, cy + r), (cx - a, cy + r),
            (cx - a, cy + a), (cx - r, cy + a), (cx - r, cy - a), (cx - a, cy - a),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, size: tuple[int, int] = DEFAULT_SIZE) -> Image.Image:
    """The scene as an RGB image of `size` (width, height); deterministic in (scene, size)."""
    width, height = size
    if width < 8 or height < 8:
        raise ValueError(f"image size {size} is too small to draw a shape in")
    rng = random.Random(scene.variant)
    ss = _SUPERSAMPLE
    W, H = width * ss, height * ss
    img = Image.new("RGB", (W, H), _jittered(COLOURS[scene.background], rng))
    draw = ImageDraw.Draw(img)
    fx, fy = _CENTRES[scene.position]
    short = min(W, H)
    r = _RADII[scene.size] * short * rng.uniform(0.9, 1.1)
    cx = fx * W + rng.uniform(-0.03, 0.03) * short
    cy = fy * H + rng.uniform(-0.03, 0.03) * short
    fill = _jittered(COLOURS[scene.colour], rng)
    points = _outline(scene.shape, cx, cy, r, rng)
    if points is None:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(points, fill=fill)
    return img.reduce(ss) if ss > 1 else img


def encode_jpeg(image: Image.Image, quality: int = DEFAULT_QUALITY) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# --------------------------------------------------------------------------- captions

# Size words sit either right before the shape or as "大的"/"小的"; never right before a colour
# word, because "大红色" reads as a shade of red, not "a big red ...".
TEMPLATES: tuple[str, ...] = (
    "{bg}背景上有一个{c}的{s}",
    "一个{c}的{sz}{s}在画面{pos}",
    "画面{pos}有一个{sz}的{c}{s}，背景是{bg}",
    "{bg}的背景中，{pos}是一个{c}{s}",
    "一个{c}{s}，{bg}背景",
    "{c}{s}位于{bg}背景的{pos}",
    "这张图片里有一个{c}的{s}，位于画面{pos}",
    "一个{sz}的{c}{s}",
    "在{bg}背景的{pos}，画着一个{c}的{sz}{s}",
)


def caption(scene: Scene, rng: random.Random) -> str:
    """A Chinese caption of `scene` from a randomly chosen template (5 to 50 characters).

    Every template names the shape and its colour; background, size and position appear in some.
    """
    template = rng.choice(TEMPLATES)
    return template.format(c=scene.colour, s=scene.shape, bg=scene.background, sz=scene.size, pos=scene.position)


@dataclass(frozen=True)
class CaptionFacts:
    """Attributes a caption states; None where it says nothing about one."""

    shape: str | None
    colour: str | None
    background: str | None
    size: str | None
    position: str | None


_COLOUR_RE = "|".join(COLOURS)
_SHAPE_RE = "|".join(sorted(SHAPES, key=len, reverse=True))
_BACKGROUND = re.compile(rf"({_COLOUR_RE})的?(?:背景|底色)|(?:背景|底色)是({_COLOUR_RE})")
_SHAPE_COLOUR = re.compile(rf"({_COLOUR_RE})的?(?:[大小]的?)?(?:{_SHAPE_RE})")
_SIZED_SHAPE = re.compile(rf"([大小])的?(?:(?:{_COLOUR_RE})的?)?(?:{_SHAPE_RE})")


def parse_caption(text: str) -> CaptionFacts:
    """What `text` says about a scene, read with the vocabulary of the templates.

    Meant for judging generated captions too, so it asks for no template: the shape colour is the
    colour word attached to a shape word, the background the one attached to 背景/底色
    ("蓝色背景", "蓝色的背景", "背景是蓝色").
    """

    def first(pattern: re.Pattern[str]) -> str | None:
        m = pattern.search(text)
        return next((g for g in m.groups() if g is not None), None) if m else None

    def earliest(words: Sequence[str]) -> str | None:
        found = [(text.find(w), w) for w in words if w in text]
        return min(found)[1] if found else None

    return CaptionFacts(
        shape=earliest(SHAPES),
        colour=first(_SHAPE_COLOUR),
        background=first(_BACKGROUND),
        size=first(_SIZED_SHAPE),
        position=earliest(POSITIONS),
    )


def caption_matches(text: str, scene: Scene) -> bool:
    """True when `text` names the scene's shape and colour and nothing it states contradicts it."""
    facts = parse_caption(text)
    if facts.shape != scene.shape or facts.colour != scene.colour:
        return False
    return all(
        said is None or said == actual
        for said, actual in (
            (facts.background, scene.background),
            (facts.size, scene.size),
            (facts.position, scene.position),
        )
    )


# --------------------------------------------------------------------------- pairs


def _differs(a: Scene, b: Scene) -> bool:
    # A mismatch must be unmistakable: another shape AND another colour.
    return a.shape != b.shape and a.colour != b.colour


def make_pairs(n: int, seed: int = 0, mismatch_rate: float = 0.1, split: str = "train") -> list[Pair]:
    """`n` pairs of `split`, exactly round(n * mismatch_rate) of them mismatched.

    Ids are "<split>-<seed>-<index>", unique across splits and seeds, and safe as file names.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    if not 0.0 <= mismatch_rate <= 1.0:
        raise ValueError(f"mismatch_rate must be within [0, 1], not {mismatch_rate}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    # A string seed is hashed with SHA-512 by random.seed: stable across runs and machines, and a
    # separate stream per split.
    rng = random.Random(f"taisu-synthweb:{seed}:{split}")
    scenes = [random_scene(rng) for _ in range(n)]
    captions = [caption(s, rng) for s in scenes]
    mismatched = set(rng.sample(range(n), round(n * mismatch_rate))) if n else set()

    pairs = []
    for i, scene in enumerate(scenes):
        pair_id = f"{split}-{seed}-{i:06d}"
        if i not in mismatched:
            pairs.append(Pair(pair_id, scene, captions[i], True, split, scene))
            continue
        # Another image's caption; a fresh scene only when no image in the set is different enough.
        donor = None
        for _ in range(64):
            j = rng.randrange(n)
            if _differs(scene, scenes[j]):
                donor = j
                break
        if donor is not None:
            other, text = scenes[donor], captions[donor]
        else:
            other = random_scene(rng)
            while not _differs(scene, other):
                other = random_scene(rng)
            text = caption(other, rng)
        pairs.append(Pair(pair_id, scene, text, False, split, other))
    return pairs


_CHUNK = 500  # pairs per task: large enough that pickling costs little next to rendering


def _render_chunk(args: tuple[list[tuple[str, Scene]], tuple[int, int], int]) -> list[tuple[str, bytes]]:
    items, size, quality = args
    return [(pair_id, encode_jpeg(render(scene, size), quality)) for pair_id, scene in items]


def render_jpegs(
    pairs: Iterable[Pair], size: tuple[int, int] = DEFAULT_SIZE, quality: int = DEFAULT_QUALITY, workers: int = 1
) -> dict[str, bytes]:
    """{pair id: JPEG bytes}; with workers > 1, rendered in that many spawned processes.

    The bytes are the same either way (rendering is a pure function of scene and size).
    """
    items = [(p.id, p.scene) for p in pairs]
    if workers <= 1 or len(items) < 2 * _CHUNK:
        return dict(_render_chunk((items, size, quality)))
    chunks = [(items[i : i + _CHUNK], size, quality) for i in range(0, len(items), _CHUNK)]
    ctx = multiprocessing.get_context("spawn")  # the caller may run threads; fork would copy their locks
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return {pair_id: data for part in pool.map(_render_chunk, chunks) for pair_id, data in part}

