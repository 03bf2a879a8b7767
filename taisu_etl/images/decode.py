"""Untrusted bytes in, a clean JPEG out: sniff, cap, decode, orient, convert, re-encode, hash.

The output is made from pixels alone, so whatever rode along in the input (EXIF with GPS
coordinates, ICC profiles, comments, XMP, a ZIP appended after the end marker) is gone. The
pixel cap is checked on the header before any pixel is decoded. This module never kills a hung
or crashing decoder itself; run it in `DecodePool` for that.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import OrderedDict
from typing import Final

import numpy as np
import simplejpeg
from PIL import Image, ImageCms, ImageOps

from taisu_etl.images.checks import check_dimensions
from taisu_etl.images.config import ImageConfig, ImageFormat
from taisu_etl.images.results import ImageRejection, NormalisedImage

# Pillow's plugin names; `Image.open(formats=[...])` then never tries any other parser.
_PILLOW_FORMAT: Final[dict[str, str]] = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF"}

_WHITE: Final = (255, 255, 255)
_DETAIL_MAX: Final = 200


def sniff(data: bytes) -> ImageFormat | None:
    """The image format named by the file signature (magic bytes), or None if not one we take."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


# imagehash.phash(hash_size=8, highfreq_factor=4): a 32x32 grey image, the 8x8 low-frequency
# corner of its 2-D DCT-II, one bit per coefficient.
_PHASH_BITS_SIDE: Final = 8
_PHASH_IMAGE_SIDE: Final = 32
# The size Pillow's draft() is asked for: decode at the smallest of 1/8, 1/4, 1/2, 1/1 scale
# that keeps both sides at least this big.
_PHASH_DRAFT_SIDE: Final = 64


def perceptual_hash(jpeg: bytes) -> str:
    """64-bit DCT pHash of JPEG bytes as 16 lower-case hex digits.

    This is imagehash.phash's algorithm (hash_size=8, highfreq_factor=4) and output format on
    the JPEG decoded by Pillow with `draft("L", (64, 64))`, reproduced step for step without
    Pillow's per-call object overhead, so every bit is the same:
    - the grey decode at 1/8, 1/4 or 1/2 scale (libjpeg DCT scaling, luma only) comes from
      libjpeg-turbo through simplejpeg, with the scale Pillow's draft() picks, for YCbCr and
      greyscale JPEGs: the same library computing the same thing, pixel for pixel. Anything
      else (CMYK, Adobe RGB, a stream libjpeg warns about) is decoded by Pillow itself;
    - the LANCZOS shrink to 32x32 is Pillow's own resize;
    - the DCT is the same `scipy.fftpack.dct` calls; the median of the 64 coefficients is the
      mean of the two middle ones after a sort (what `numpy.median` computes after its
      partition), and the bits, row by row with the first as the most significant, are packed
      into bytes and printed as hex instead of going through a string of "0"s and "1"s.
    `test_perceptual_hash_equals_imagehash_phash` holds it equal to `str(imagehash.phash(...))`.

    Hashed from the stored bytes, not from the pixels before encoding, so anyone holding the
    object (a recheck, a takedown request run through `normalise_image`) gets the same value.
    """
    grey = Image.fromarray(_grey_at_draft_scale(jpeg), "L")
    side = _PHASH_IMAGE_SIDE
    return _phash_hex(np.asarray(grey.resize((side, side), Image.Resampling.LANCZOS)))


def _draft_scale(width: int, height: int, side: int) -> int:
    """The scale denominator Pillow's JpegImageFile.draft picks for a requested (side, side)."""
    fits = min(width // side, height // side)
    return next((s for s in (8, 4, 2) if fits >= s), 1)


def _grey_at_draft_scale(jpeg: bytes) -> np.ndarray:
    """The 2-D uint8 luma Pillow's `draft("L", (64, 64))` + `convert("L")` decodes from `jpeg`."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(jpeg)
    except ValueError:
        colorspace = None
    if colorspace in ("YCbCr", "Gray"):
        scale = _draft_scale(width, height, _PHASH_DRAFT_SIDE)
        want = (-(-height // scale), -(-width // scale))
        try:
            # strict: a stream libjpeg only warns about goes to Pillow, which decides for itself.
            grey = simplejpeg.decode_jpeg(
                jpeg, colorspace="GRAY", min_height=want[0], min_width=want[1], min_factor=scale
            )
        except ValueError:
            grey = None
        if grey is not None and grey.shape[:2] == want:
            return grey[:, :, 0]
    with Image.open(io.BytesIO(jpeg), formats=["JPEG"]) as im:
        im.draft("L", (_PHASH_DRAFT_SIDE, _PHASH_DRAFT_SIDE))
        # convert() to the mode an image already has is only a copy; CMYK JPEGs still convert.
        return np.asarray(im if im.mode == "L" else im.convert("L"))


def _phash_hex(pixels: np.ndarray) -> str:
    """imagehash.phash's bits and `str()` for a 32x32 grey image, from the DCT on."""
    from scipy import fftpack  # loaded lazily, as imagehash does; a pool worker has it preloaded

    n = _PHASH_BITS_SIDE
    low = fftpack.dct(fftpack.dct(pixels, axis=0), axis=1)[:n, :n]
    ordered = np.sort(low, axis=None)
    half = ordered.size // 2
    median = (ordered[half - 1] + ordered[half]) / 2
    return np.packbits(low > median, axis=None).tobytes().hex()


def warm_up() -> None:
    """Run one tiny image through the whole path, so a new worker pays its imports up front.

    The first call otherwise loads Pillow's plugins, libjpeg and scipy.fftpack (which the pHash
    imports on first use), which would count against the first real image's timeout.
    """
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 140, 200)).save(buf, format="PNG")
    normalise_image(buf.getvalue(), ImageConfig(min_side=1, max_aspect=64.0))


def normalise_image(
    data: bytes, config: ImageConfig, *, apply_checks: bool = False
) -> NormalisedImage | ImageRejection:
    """Decode untrusted image bytes and re-encode the first frame as an RGB JPEG.

    Rejections: not_image (signature not on the allowlist), too_many_pixels (header declares more
    than `config.max_pixels`; nothing is decoded), decode_error (anything the decoder refuses).
    With `apply_checks`, the size checks (too_small, bad_aspect) run on the header too, before
    decoding, for a caller that records them from the fetch stage; they are symmetric in width
    and height, so EXIF orientation cannot change their outcome.
    """
    fmt = sniff(data)
    if fmt is None:
        return ImageRejection("not_image", _describe_non_image(data))
    if fmt not in config.allowed_formats:
        return ImageRejection("not_image", f"{fmt} is not an allowed format")
    try:
        return _normalise(data, fmt, config, apply_checks)
    except Image.DecompressionBombError as exc:
        return ImageRejection("too_many_pixels", _short(str(exc)))
    except MemoryError:
        return ImageRejection("decode_error", "out of memory while decoding")
    except Exception as exc:  # noqa: BLE001 - any decoder failure costs this sample only
        return ImageRejection("decode_error", _short(f"{type(exc).__name__}: {exc}"))


def _normalise(
    data: bytes, fmt: ImageFormat, config: ImageConfig, apply_checks: bool
) -> NormalisedImage | ImageRejection:
    _allow_pillow_up_to(config.max_pixels)
    with warnings.catch_warnings():
        # Pillow warns (not raises) between its limit and twice it; a warning is still a bomb.
        # catch_warnings swaps process-global filters: harmless in a single-threaded pool
        # worker; an in-process caller with threads may briefly share the filter.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMAT[fmt]])
        except Image.DecompressionBombWarning as exc:
            return ImageRejection("too_many_pixels", _short(str(exc)))
    with im:
        # Image.open parsed the header only; nothing below max_pixels has been allocated yet.
        src_w, src_h = im.size
        if src_w * src_h > config.max_pixels:
            return ImageRejection(
                "too_many_pixels", f"{src_w}x{src_h} is more than {config.max_pixels} pixels"
            )
        if apply_checks:
            rejection = check_dimensions(src_w, src_h, config)
            if rejection is not None:
                return rejection

        # First frame only: an animation's later frames are never decoded.
        im.seek(0)
        target = _target_size(src_w, src_h, config.resize_longest)
        if target is not None and fmt == "jpeg":
            # libjpeg can decode at 1/2, 1/4 or 1/8 scale, filtering in the DCT domain; the
            # smallest scale not below the target is within one grey level (mean) of a full
            # decode + LANCZOS and 2-6x faster, since the LANCZOS pass is the costliest step.
            im.draft(None, target)
        im.load()
        icc = im.info.get("icc_profile") if config.color_manage else None

        loaded_w, loaded_h = im.size
        try:
            ImageOps.exif_transpose(im, in_place=True)
        except Exception:  # noqa: BLE001 - a broken EXIF block leaves the pixels usable as stored
            pass
        if im.size != (loaded_w, loaded_h):
            src_w, src_h = src_h, src_w
            if target is not None:
                target = (target[1], target[0])

        flat = _flatten(im)
        if target is not None and flat.size != target:
            # reducing_gap=2: shrink by an integer box first while at least 2x remains, the
            # same trade Pillow's thumbnail() makes.
            flat = flat.resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
        # Colour conversion after the resize: it costs per pixel, and resizing in the source's
        # own (gamma-encoded) space is what every viewer does anyway.
        rgb = _to_srgb(flat, icc)

    # Encode from pixels only: `info` is cleared because Pillow's JPEG writer carries a comment
    # over from it, and no exif/icc/xmp argument is passed.
    rgb.info.clear()
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=config.jpeg_quality, optimize=False, progressive=False)
    jpeg = out.getvalue()
    return NormalisedImage(
        jpeg=jpeg,
        width=rgb.width,
        height=rgb.height,
        source_format=fmt,
        source_width=src_w,
        source_height=src_h,
        sha256=hashlib.sha256(jpeg).hexdigest(),
        phash=perceptual_hash(jpeg),
        orig_bytes=len(data),
    )


def _allow_pillow_up_to(max_pixels: int) -> None:
    """Make sure Pillow's global bomb limit does not refuse what the recipe allows.

    The limit is only ever raised (never lowered, never disabled), and only when a recipe asks
    for more than Pillow's default, so other code in the process keeps at least Pillow's guard.
    Our own exact check after `Image.open` is what enforces `max_pixels`.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and limit < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _target_size(width: int, height: int, longest: int | None) -> tuple[int, int] | None:
    """Size after shrinking the longest side to `longest`; None when no shrinking is needed."""
    if longest is None or max(width, height) <= longest:
        return None
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _flatten(im: Image.Image) -> Image.Image:
    """8-bit L, RGB or CMYK pixels with any transparency flattened onto white."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's I->L conversion clips at 255 instead of scaling, which turns a 16-bit
        # greyscale PNG nearly white; keep the high byte instead.
        arr = np.asarray(im, dtype=np.int64)
        return Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8), "L")
    if mode == "F":
        return Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8), "L")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        mode in ("P", "L", "RGB") and "transparency" in im.info
    ):
        # Flatten in the image's own colour space (grey stays grey), so that an embedded
        # profile still matches the channels it describes.
        grey = mode in ("LA", "La", "L")
        with_alpha = im.convert("LA" if grey else "RGBA")
        flat = Image.new("L" if grey else "RGB", im.size, 255 if grey else _WHITE)
        flat.paste(with_alpha, mask=with_alpha.getchannel("A"))
        return flat
    if mode in ("RGB", "L", "CMYK"):
        return im
    return im.convert("RGB")  # P, 1, YCbCr, LAB, HSV


_SRGB: Final = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_TRANSFORMS: OrderedDict[tuple[bytes, str], ImageCms.ImageCmsTransform | None] = OrderedDict()
_TRANSFORM_CACHE_SIZE: Final = 32


def _to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """RGB in sRGB: through the embedded ICC profile where there is one worth applying."""
    transform = _transform_for(icc, im.mode) if icc else None
    if transform is not None:
        try:
            return ImageCms.applyTransform(im, transform)  # type: ignore[return-value]
        except Exception:  # noqa: BLE001 - fall back to the plain conversion below
            pass
    return im if im.mode == "RGB" else im.convert("RGB")


def _transform_for(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """A cached profile-to-sRGB transform; None for sRGB itself and for unusable profiles.

    Most web images that carry a profile carry sRGB, and an identity transform costs as much as
    a real one (it doubled the time of a 1024x768 JPEG), so sRGB is recognised by name and
    skipped. A profile lcms cannot parse, or one for another colour space than the pixels, is
    ignored rather than rejecting an image whose pixels decoded fine. Web images share a handful
    of profiles, so a small cache keyed by digest hits almost always.
    """
    key = (hashlib.sha1(icc).digest(), mode)
    if key in _TRANSFORMS:
        _TRANSFORMS.move_to_end(key)
        return _TRANSFORMS[key]
    transform: ImageCms.ImageCmsTransform | None
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        name = (ImageCms.getProfileDescription(src) or "").strip()
        if mode == "RGB" and name.lower().startswith("srgb"):
            transform = None
        else:
            transform = ImageCms.buildTransform(src, _SRGB, mode, "RGB", ImageCms.Intent.PERCEPTUAL)
    except Exception:  # noqa: BLE001 - bad or mismatched profile: decode without it
        transform = None
    _TRANSFORMS[key] = transform
    if len(_TRANSFORMS) > _TRANSFORM_CACHE_SIZE:
        _TRANSFORMS.popitem(last=False)
    return transform


def _describe_non_image(data: bytes) -> str:
    if not data:
        return "empty body"
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        kind = "html"
    elif head.startswith(b"<?xml") or head.startswith(b"<svg"):
        kind = "xml/svg"
    elif head.startswith((b"{", b"[")):
        kind = "json"
    else:
        kind = "unknown signature"
    return f"{kind} ({len(data)} bytes, starts {data[:8].hex()})"


def _short(text: str) -> str:
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"
