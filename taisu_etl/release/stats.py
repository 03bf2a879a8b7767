"""Statistics of a release gathered while its members stream past, in bounded memory.

Histograms are counters over small discrete keys (caption length in characters, score rounded to
SCORE_STEP, image side in pixels, megapixels in MP_UNIT steps, file size in whole KiB): their
size is bounded by the value range, never by the number of samples. The word cloud counts jieba
words, less the stop words of stopwords_zh.txt and numeral + measure words, of the first WORDCLOUD_SAMPLES members, which are
a pseudo-random sample because members come in hash-id order. The example grid keeps the
`examples` members whose id has the lowest sha256 (a heap of that size): the same members
whatever the shard size or order, and a thumbnail is made only for a member that enters the heap.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from PIL import Image

SCORE_STEP = 0.005
WORDCLOUD_SAMPLES = 20_000
CLOUD_WORDS = 400
MP_UNIT = 10_000  # pixels: megapixels are counted in 0.01 MP steps
BYTES_UNIT = 1024  # file sizes are counted in whole KiB
THUMB_SIDE = 192
DEFAULT_EXAMPLES = 12
PERCENTILES = (50, 90, 99)
_WORD = re.compile(r"[^\W\d_]{2,}|[\u4e00-\u9fff]{2,}")
# A numeral or demonstrative with a measure word (一只, 两个, 这张, 每件): in nearly every caption,
# about no picture; a pattern, since a list of every such pair would be long.
_MEASURE = re.compile(r"[一二两三四五六七八九十几每这那][个只条张件位名片把朵棵家款套对双座辆碗束匹头本台部次种幅间块杯盘支颗枚]")


@cache
def stop_words() -> frozenset[str]:
    """The card's stop words (lower case), from the packaged stopwords_zh.txt."""
    text = resources.files("taisu_etl.release").joinpath("stopwords_zh.txt").read_text(encoding="utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#"))


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
class Distribution:
    """Counts of non-negative integers in steps of `unit`: exact min and max, percentiles at `unit` resolution."""

    unit: int = 1
    counts: Counter[int] = field(default_factory=Counter)
    n: int = 0
    min: int | None = None
    max: int | None = None

    def add(self, value: int) -> None:
        self.n += 1
        self.counts[value // self.unit] += 1
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)

    def percentile(self, p: float) -> int | None:
        """Nearest rank: the ceil(p% * n)-th smallest value, rounded down to a multiple of `unit` but
        never below the (exact) minimum, so a percentile never reads smaller than the min."""
        if self.n == 0:
            return None
        rank = max(1, math.ceil(p / 100 * self.n))
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= rank:
                return max(key * self.unit, self.min if self.min is not None else 0)
        raise AssertionError("unreachable: the counts add up to n")

    def count_between(self, lo: int, hi: int | None) -> int:
        """How many values v have lo <= v < hi (hi None: no upper bound); lo and hi multiples of `unit`."""
        return sum(c for k, c in self.counts.items() if k * self.unit >= lo and (hi is None or k * self.unit < hi))


@dataclass(order=True)
class Example:
    """One example pair of the card's grid; ordered by `rank` (sha256 of the id)."""

    rank: bytes
    sample_id: str = field(compare=False)
    w: str = field(compare=False)
    g: str | None = field(compare=False)
    thumbnail: "Image.Image | None" = field(compare=False, default=None)  # RGB, at most THUMB_SIDE px a side
    image_key: str | None = field(compare=False, default=None)  # where load_thumbnails finds the image


def example_rank(sample_id: str) -> bytes:
    return hashlib.sha256(sample_id.encode("utf-8")).digest()


def image_size(image: bytes) -> tuple[int, int] | None:
    """(width, height) from the image's header, without decoding the pixels."""
    try:
        import simplejpeg

        height, width, _, _ = simplejpeg.decode_jpeg_header(image)
        return width, height
    except Exception:  # not a JPEG simplejpeg reads: Pillow reads any header
        from PIL import Image

        try:
            with Image.open(io.BytesIO(image)) as im:
                return im.size
        except Exception:
            return None


def thumbnail(image: bytes) -> "Image.Image | None":
    """The image shrunk to fit THUMB_SIDE x THUMB_SIDE, never enlarged (None when it does not decode)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(image)) as im:
            im.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # JPEG: decode at a reduced scale, much faster
            small = ImageOps.exif_transpose(im).convert("RGB")
    except Exception:
        return None
    small.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    return small


@dataclass
class ReleaseStats:
    samples: int = 0
    with_generated: int = 0
    caption_lengths: Counter[int] = field(default_factory=Counter)
    gen_caption_lengths: Counter[int] = field(default_factory=Counter)
    score_bins: Counter[int] = field(default_factory=Counter)
    words: Counter[str] = field(default_factory=Counter)
    word_samples: int = 0
    score_models: dict[str, ModelSeen] = field(default_factory=dict)
    caption_models: Counter[str] = field(default_factory=Counter)
    widths: Distribution = field(default_factory=Distribution)
    heights: Distribution = field(default_factory=Distribution)
    short_sides: Distribution = field(default_factory=Distribution)
    pixels: Distribution = field(default_factory=lambda: Distribution(MP_UNIT))
    file_bytes: Distribution = field(default_factory=lambda: Distribution(BYTES_UNIT))
    examples_wanted: int = DEFAULT_EXAMPLES
    # A max-heap by rank (ranks negated byte-wise): the root is the example the next lower rank replaces.
    _examples: list[tuple[bytes, Example]] = field(default_factory=list, repr=False)

    def add(self, w: str, g: str | None, score: float | None, score_model: str | None, caption_model: str | None, *,
            sample_id: str | None = None, image: bytes | None = None, width: int | None = None,
            height: int | None = None, nbytes: int | None = None, image_key: str | None = None) -> None:
        """Count one member. `image`: its released bytes (size and dimensions are read from them, and
        an example's thumbnail is made from them). Without it (a takedown patch, which reads the
        ledger, not the images) the ledger's `width`, `height` and `nbytes` are counted, and an
        example keeps `image_key` for load_thumbnails."""
        self.samples += 1
        self.caption_lengths[len(w)] += 1
        if score is not None and math.isfinite(score):
            self.score_bins[math.floor(score / SCORE_STEP)] += 1
        self.score_models.setdefault(score_model or "none", ModelSeen()).add(score)
        if g is not None:
            self.with_generated += 1
            self.gen_caption_lengths[len(g)] += 1
            if caption_model:
                self.caption_models[caption_model] += 1
        if self.word_samples < WORDCLOUD_SAMPLES:
            self.word_samples += 1
            self._count_words(w)
            if g is not None:
                self._count_words(g)
        size = image_size(image) if image is not None else None
        if size is None and width and height:
            size = (int(width), int(height))
        if size is not None:
            self.widths.add(size[0])
            self.heights.add(size[1])
            self.short_sides.add(min(size))
            self.pixels.add(size[0] * size[1])
        if image is not None:
            nbytes = len(image)
        if nbytes is not None:
            self.file_bytes.add(int(nbytes))
        if sample_id is not None:
            self._offer_example(sample_id, w, g, image, image_key)

    def _count_words(self, text: str) -> None:
        from taisu_etl.text.rules import jieba_tokenizer

        stop = stop_words()
        self.words.update(
            tok for tok in jieba_tokenizer().cut(text, HMM=False)
            if _WORD.fullmatch(tok) and tok.lower() not in stop and not _MEASURE.fullmatch(tok)
        )

    def cloud_frequencies(self) -> dict[str, int]:
        """The word frequencies the word cloud is drawn from: the most frequent words, stop words left out."""
        return dict(sorted(self.words.items(), key=lambda kv: (-kv[1], kv[0]))[:CLOUD_WORDS])

    def _offer_example(self, sample_id: str, w: str, g: str | None, image: bytes | None, image_key: str | None) -> None:
        if self.examples_wanted <= 0:
            return
        rank = example_rank(sample_id)
        if len(self._examples) >= self.examples_wanted and rank >= self._examples[0][1].rank:
            return  # the common case, once the heap is full: no thumbnail is made
        inverted = bytes(255 - b for b in rank)  # heapq is a min-heap: the inverted rank puts the highest rank on top
        example = Example(rank, sample_id, w, g, thumbnail(image) if image is not None else None, image_key)
        if len(self._examples) < self.examples_wanted:
            heapq.heappush(self._examples, (inverted, example))
        else:
            heapq.heapreplace(self._examples, (inverted, example))

    def load_thumbnails(self, get: Callable[[str], bytes]) -> None:
        """Make the thumbnails of examples counted without their image, reading it with `get(image_key)`
        (e.g. ObjectStore.get); one that cannot be read is drawn as a placeholder."""
        for _, example in self._examples:
            if example.thumbnail is None and example.image_key:
                try:
                    example.thumbnail = thumbnail(get(example.image_key))
                except KeyError:
                    continue

    def examples(self) -> list[Example]:
        """The example pairs, lowest rank first."""
        return sorted(e for _, e in self._examples)

    def models(self) -> dict[str, Any]:
        """Models seen and the score range each admitted: what the manifest records."""
        return {
            "score": {
                name: {"samples": m.samples, "min_score": m.min_score, "max_score": m.max_score}
                for name, m in sorted(self.score_models.items())
            },
            "caption": dict(sorted(self.caption_models.items())),
        }
