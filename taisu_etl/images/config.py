"""The `[image]` table of a recipe: how fetched bytes become a stored JPEG, and which images pass.

Every default below is a decision with a reason; the reasons are in the field descriptions so that
`taisu-etl` can print them next to the values.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ImageFormat = Literal["jpeg", "png", "webp", "gif"]

ALL_FORMATS: tuple[ImageFormat, ...] = ("jpeg", "png", "webp", "gif")

# img2dataset's resize modes (resize_only_if_bigger=True: nothing is ever enlarged).
ResizeMode = Literal["keep_ratio_largest", "keep_ratio", "center_crop", "border"]


class ImageConfig(BaseModel):
    """Parameters of decoding, normalisation, size checks and near-duplicate detection."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_formats: tuple[ImageFormat, ...] = Field(
        ALL_FORMATS,
        min_length=1,
        description=(
            "Formats accepted, identified by their file signature only (never by URL suffix or "
            "Content-Type). Anything else is not_image, so Pillow's other parsers are never reached."
        ),
    )
    max_pixels: int = Field(
        50_000_000,
        ge=1,
        description=(
            "Most pixels (width x height of the first frame) an image may declare; checked on the "
            "header before any pixel is decoded (too_many_pixels). 50 MP keeps every real camera "
            "photo (a 45 MP full-frame sensor is 8192x5464) while bounding one worker's peak to "
            "~0.5 GB (an RGBA PNG: 200 MB decoded, 150 MB flattened, plus the encoder's buffers). "
            "Pillow's own bomb limit (~89 MP warns, ~179 MP raises) is process-global state and "
            "twice as lax; it is only ever raised to this value, never lowered."
        ),
    )
    min_side: int = Field(
        200,
        ge=1,
        description="Shortest side of the source image, in pixels; smaller is too_small (Wukong: 200).",
    )
    max_aspect: float = Field(
        3.0,
        ge=1.0,
        description="Largest long/short side ratio of the source image; larger is bad_aspect (Wukong: 3).",
    )
    resize_longest: int | None = Field(
        None,
        ge=16,
        description=(
            "Shrink so the longest side is at most this many pixels (never enlarges); none = keep "
            "the source size. Size checks still judge the source (see checks.py). The older name "
            "of max_side with resize_mode = keep_ratio_largest; set one of the two, not both."
        ),
    )
    max_side: int | None = Field(
        None,
        ge=16,
        description=(
            "Target size of the resize (img2dataset's image_size); none = keep the source size. "
            "An image already within it is stored as it is (never enlarged, and a clean JPEG "
            "stays lossless). JPEGs decode at the smallest DCT scale (1/8..1/1) at or above the "
            "target, then Pillow's BOX filter (area averaging, img2dataset's cv2.INTER_AREA) "
            "shrinks them the rest of the way."
        ),
    )
    resize_mode: ResizeMode = Field(
        "keep_ratio_largest",
        description=(
            "How max_side applies, as in img2dataset: keep_ratio_largest = longest side at most "
            "max_side; keep_ratio = shortest side at most max_side; center_crop = shortest side "
            "to max_side, then the centre max_side x max_side square; border = longest side to "
            "max_side, then padded with white to a max_side square."
        ),
    )
    lossless_jpeg: bool = Field(
        True,
        description=(
            "Store a clean baseline/progressive YCbCr JPEG as its own entropy-coded data with "
            "every APPn/COM segment and trailing byte dropped: same pixels, no second lossy "
            "generation, a fraction of the CPU. EXIF orientation other than 1 is applied by "
            "jpegtran -perfect where the size allows (else re-encoded); a non-sRGB ICC "
            "profile (with color_manage), grey, CMYK, 12-bit, arithmetic or lossless JPEGs and "
            "any resize still decode and re-encode. false = always decode and re-encode."
        ),
    )
    jpeg_quality: int = Field(
        90,
        ge=50,
        le=95,
        description=(
            "Quality of the re-encoded JPEG (libjpeg scale, Pillow's default 4:2:0 chroma). 90 is "
            "visually lossless for training at 224-448 px and about two thirds of the bytes of 95 "
            "on photo-like input; above 95 Pillow's docs advise against (size grows, quality "
            "does not). Changing it changes every sha256, so exact dedup spans one setting."
        ),
    )
    color_manage: bool = Field(
        True,
        description=(
            "Convert pixels with an embedded ICC profile (Display P3 phone photos, CMYK print "
            "files) to sRGB before encoding. The output carries no profile, which viewers and "
            "training code read as sRGB, so without this such images would have shifted colours."
        ),
    )
    phash_distance: int = Field(
        4,
        ge=0,
        le=31,
        description=(
            "Near duplicate: Hamming distance <= this between 64-bit pHashes. Re-encoding, "
            "rescaling and light compression move a pHash by 0-4 bits; two unrelated photos differ "
            "by ~32 +- 4 bits, so 4 is far in the tail for real images while catching re-uploads. "
            "Raise it for crops and watermarks at the cost of more false merges of simple images "
            "(flat colours, plain text on white all hash alike)."
        ),
    )
    decode_timeout_s: float = Field(
        10.0,
        gt=0,
        description=(
            "Most seconds a decode worker may spend on one chunk of images (8 at most) before it "
            "is killed; the chunk's images then go round again one by one, and an image that "
            "passes the limit alone is rejected (decode_error). A 48 MP JPEG, PNG or WebP goes "
            "through the whole path in under a second on one core; 10 s leaves room for a loaded "
            "machine."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> ImageConfig:
        dupes = sorted({f for f in self.allowed_formats if self.allowed_formats.count(f) > 1})
        if dupes:
            raise ValueError(f"allowed_formats names {', '.join(dupes)} more than once")
        if self.resize_longest is not None and self.max_side is not None:
            raise ValueError(
                "[image] sets both resize_longest and max_side; keep max_side (resize_longest "
                "is its older name for resize_mode = keep_ratio_largest)"
            )
        if self.resize_longest is not None and self.resize_longest < self.min_side:
            # The check judges the source, but a stored image whose longest side is below the
            # minimum accepted side would contradict the recipe's own intent.
            raise ValueError(
                f"resize_longest ({self.resize_longest}) is below min_side ({self.min_side})"
            )
        if self.max_side is not None and self.max_side < self.min_side:
            raise ValueError(f"max_side ({self.max_side}) is below min_side ({self.min_side})")
        return self

    def resize_target(self) -> tuple[int, ResizeMode] | None:
        """(side, mode) of the configured resize, resize_longest read as its older name."""
        if self.max_side is not None:
            return self.max_side, self.resize_mode
        if self.resize_longest is not None:
            return self.resize_longest, "keep_ratio_largest"
        return None
