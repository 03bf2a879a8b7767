"""Untrusted bytes in, a clean JPEG out: sniff, cap, decode, orient, convert, re-encode, hash.

Two paths, one result type. A clean baseline or progressive YCbCr JPEG that needs no colour
conversion or resize is stored losslessly: `jpeg_markers.strip_jpeg` keeps its tables
and entropy-coded scans byte for byte and drops every APPn/COM segment and whatever follows EOI,
and a strict libjpeg decode at 1/8..1/2 scale (the pHash's own decode) proves the stream
decodes before it is accepted. One with an EXIF/XMP orientation is turned upright in the DCT
domain by jpegtran (`jpeg_orient`) where its size allows an exact transform. Everything else
(PNG, WebP, GIF, and JPEGs the lossless path does not take or cannot prove) is decoded and
re-encoded from pixels alone. Either way, whatever rode along in the input (EXIF with GPS
coordinates, ICC profiles, comments, XMP, a ZIP appended after the end marker) is gone. The
pixel cap is checked on the header before any pixel is decoded. This module never kills a hung
or crashing decoder itself; run it in `DecodePool` for that.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

import numpy as np
import simplejpeg
from PIL import Image, ImageCms, ImageOps

from taisu_etl.images.checks import check_dimensions
from taisu_etl.images.config import ImageConfig, ImageFormat, ResizeMode
from taisu_etl.images.jpeg_markers import JpegHeader, UnsupportedJpeg, read_jpeg_header, strip_jpeg
from taisu_etl.images.jpeg_orient import can_orient_losslessly, orient_losslessly
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
    return _phash_of_grey(_grey_at_draft_scale(jpeg))


def _draft_scale(width: int, height: int, side: int) -> int:
    """The scale denominator Pillow's JpegImageFile.draft picks for a requested (side, side)."""
    fits = min(width // side, height // side)
    return next((s for s in (8, 4, 2) if fits >= s), 1)


def _grey_at_draft_scale(jpeg: bytes) -> np.ndarray:
    """The 2-D uint8 luma Pillow's `draft("L", (64, 64))` + `convert("L")` decodes from `jpeg`."""
    grey = _strict_grey_at_draft_scale(jpeg)
    if grey is not None:
        return grey
    with Image.open(io.BytesIO(jpeg), formats=["JPEG"]) as im:
        im.draft("L", (_PHASH_DRAFT_SIDE, _PHASH_DRAFT_SIDE))
        # convert() to the mode an image already has is only a copy; CMYK JPEGs still convert.
        return np.asarray(im if im.mode == "L" else im.convert("L"))


def _strict_grey_at_draft_scale(
    jpeg: bytes, colorspaces: tuple[str, ...] = ("YCbCr", "Gray")
) -> np.ndarray | None:
    """libjpeg's luma at the pHash's draft scale; None for another colour space or any warning.

    strict: a stream libjpeg only warns about (truncated, corrupt Huffman data, extraneous
    bytes) is an error here. DCT scaling skips only inverse-DCT work, never entropy decoding, so
    a stream that passes has had every coefficient of every scan decoded.
    """
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(jpeg)
    except ValueError:
        return None
    if colorspace not in colorspaces:
        return None
    scale = _draft_scale(width, height, _PHASH_DRAFT_SIDE)
    want = (-(-height // scale), -(-width // scale))
    try:
        grey = simplejpeg.decode_jpeg(
            jpeg, colorspace="GRAY", min_height=want[0], min_width=want[1], min_factor=scale
        )
    except ValueError:
        return None
    return grey[:, :, 0] if grey.shape[:2] == want else None


def _phash_of_grey(grey: np.ndarray) -> str:
    side = _PHASH_IMAGE_SIDE
    resized = Image.fromarray(grey, "L").resize((side, side), Image.Resampling.LANCZOS)
    return _phash_hex(np.asarray(resized))


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
    """Untrusted image bytes to a clean RGB JPEG of the first frame.

    A clean YCbCr JPEG that needs no colour conversion or resize keeps its own scans (see
    `jpeg_markers`, and `lossless_jpeg` in the config), turned upright by jpegtran where EXIF
    says so and its size allows (`jpeg_orient`); everything else is decoded and re-encoded.

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
    if fmt == "jpeg" and config.lossless_jpeg:
        kept = _keep_jpeg_losslessly(data, config, apply_checks)
        if kept is not None:
            return kept
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
        wanted = config.resize_target()
        plan = _plan_resize(src_w, src_h, *wanted) if wanted is not None else None
        if plan is not None and fmt == "jpeg":
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale by filtering in the DCT domain; draft()
            # picks the smallest scale whose size is still at or above the resample target,
            # which skips most of the IDCT and leaves the resampler less than 2x to do.
            # The resize modes are symmetric in width and height, so the unrotated plan sizes
            # the draft whatever the EXIF orientation.
            im.draft(None, plan.size)
        im.load()
        icc = im.info.get("icc_profile") if config.color_manage else None

        loaded_w, loaded_h = im.size
        try:
            ImageOps.exif_transpose(im, in_place=True)
        except Exception:  # noqa: BLE001 - a broken EXIF block leaves the pixels usable as stored
            pass
        if im.size != (loaded_w, loaded_h):
            src_w, src_h = src_h, src_w
            if wanted is not None:
                plan = _plan_resize(src_w, src_h, *wanted)

        flat = _flatten(im)
        if plan is not None:
            if flat.size != plan.size:
                # BOX is area averaging: Pillow's counterpart of cv2.INTER_AREA, which
                # img2dataset downscales with; it never enlarges here.
                flat = flat.resize(plan.size, Image.Resampling.BOX)
            if plan.crop is not None:
                flat = flat.crop(plan.crop)
        # Colour conversion after the resize: it costs per pixel, and resizing in the source's
        # own (gamma-encoded) space is what every viewer does anyway.
        rgb = _to_srgb(flat, icc)
        if plan is not None and plan.canvas is not None:
            rgb = _pad_to_square(rgb, plan.canvas)

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


def _keep_jpeg_losslessly(
    data: bytes, config: ImageConfig, apply_checks: bool
) -> NormalisedImage | ImageRejection | None:
    """The JPEG's own scans without its metadata, or None to take the decode + re-encode path.

    None whenever storing the scans as they are would not give what the full path gives: the
    file is malformed or unusual (the full path keeps its own rejections), over the pixel cap
    (the full path words that rejection), rotated by EXIF/XMP where jpegtran is missing or
    cannot rotate it exactly, tagged with a profile the full path would convert, not YCbCr,
    due for a resize, or not decodable by a strict libjpeg.
    """
    try:
        header = read_jpeg_header(data)
    except UnsupportedJpeg:
        return None
    width, height = header.width, header.height
    if width * height > config.max_pixels:
        return None
    if apply_checks:
        rejection = check_dimensions(width, height, config)
        if rejection is not None:
            return rejection
    if not _same_pixels_without_metadata(header, config):
        return None
    wanted = config.resize_target()
    if wanted is not None and _plan_resize(width, height, *wanted) is not None:
        return None
    # exif_transpose's orientations; anything else (None, 1, 0, 9) leaves the pixels as stored.
    rotation = header.orientation if header.orientation in range(2, 9) else None
    if rotation is not None and not can_orient_losslessly(rotation, width, height, header.mcu):
        return None
    # Only now is the entropy-coded data read: an image bound for the full path costs a header.
    try:
        jpeg = strip_jpeg(data, header)
    except UnsupportedJpeg:
        return None
    if rotation is not None:
        upright = _orient_losslessly(jpeg, rotation, (width, height), config)
        if upright is None:
            return None
        jpeg, width, height = upright
    # The pHash's draft-scale decode doubles as the proof that the stream decodes cleanly.
    grey = _strict_grey_at_draft_scale(jpeg, colorspaces=("YCbCr",))
    if grey is None:
        return None
    return NormalisedImage(
        jpeg=jpeg,
        width=width,
        height=height,
        source_format="jpeg",
        source_width=width,
        source_height=height,
        sha256=hashlib.sha256(jpeg).hexdigest(),
        phash=_phash_of_grey(grey),
        orig_bytes=len(data),
    )


# jpegtran rewrites the Huffman coding, so its output is not the input's size; anything far
# past it is not a plausible transform of these coefficients.
_ORIENT_OUTPUT_SLACK: Final = 1 << 20


def _orient_losslessly(
    jpeg: bytes, orientation: int, size: tuple[int, int], config: ImageConfig
) -> tuple[bytes, int, int] | None:
    """The stripped `jpeg` turned upright by jpegtran, with its new size; None to re-encode.

    jpegtran's output is held to what its input was held to: the marker checks again (which
    also drop the JFIF segment jpegtran writes) and the same colour and size expectations. The
    strict pHash decode that follows in the caller then proves its scans.
    """
    out = orient_losslessly(
        jpeg,
        orientation,
        # Half the pool's per-image limit, so that the re-encode after a stuck jpegtran still
        # fits in it; jpegtran takes 20-60 ms on a web photo and 0.8 s on a 45 MP one.
        timeout_s=config.decode_timeout_s / 2,
        max_output=2 * len(jpeg) + _ORIENT_OUTPUT_SLACK,
    )
    if out is None:
        return None
    try:
        header = read_jpeg_header(out)
        if header.orientation is not None or not _same_pixels_without_metadata(header, config):
            return None
        # 5..8 swap the sides (transpose, rotations by 90 degrees); 2..4 keep them.
        if (header.width, header.height) != (size[::-1] if orientation >= 5 else size):
            return None
        return strip_jpeg(out, header), header.width, header.height
    except UnsupportedJpeg:
        return None


# Component ids 'R', 'G', 'B': libjpeg reads such a frame as RGB when no JFIF or Adobe segment
# says otherwise, so dropping a JFIF segment would change how its samples are interpreted.
_RGB_COMPONENT_IDS: Final = (0x52, 0x47, 0x42)


def _same_pixels_without_metadata(header: JpegHeader, config: ImageConfig) -> bool:
    """Whether the stripped stream means the same RGB pixels the full path would produce."""
    # Three YCbCr components only: grey would be stored as one channel (the store's objects
    # are RGB JPEGs); CMYK/YCCK need Adobe's inversion and a conversion anyway.
    if len(header.component_ids) != 3 or header.component_ids == _RGB_COMPONENT_IDS:
        return False
    # Adobe transform 0 means RGB samples, 2 YCCK; only 1 (YCbCr) is what the ids imply.
    if header.adobe_transform not in (None, 1):
        return False
    # exif_transpose acts on 2..8 (the caller rotates those losslessly or gives up); -1 is an
    # EXIF block we could not read, so let Pillow judge.
    if header.orientation == -1:
        return False
    # A profile the full path would convert through: keep its conversion. sRGB and profiles
    # lcms cannot use are ignored by the full path too, so dropping them changes nothing.
    if config.color_manage and header.icc_profile and _transform_for(header.icc_profile, "RGB"):
        return False
    return True


@dataclass(frozen=True, slots=True)
class _ResizePlan:
    size: tuple[int, int]  # what the image is resampled to
    crop: tuple[int, int, int, int] | None  # then this box is cut out (center_crop)
    canvas: int | None  # then it is centred on a white square of this side (border)


def _plan_resize(width: int, height: int, side: int, mode: ResizeMode) -> _ResizePlan | None:
    """img2dataset's resize with resize_only_if_bigger: None when the image is within `side`."""
    if mode in ("keep_ratio", "center_crop"):
        short = min(width, height)
        if short <= side:
            return None
        size = _scaled(width, height, side, by_width=width == short)
        crop = None
        if mode == "center_crop":
            left, top = (size[0] - side) // 2, (size[1] - side) // 2
            crop = (left, top, left + side, top + side)
        return _ResizePlan(size, crop, None)
    long = max(width, height)
    if long <= side:
        return None
    size = _scaled(width, height, side, by_width=width == long)
    return _ResizePlan(size, None, side if mode == "border" else None)


def _scaled(width: int, height: int, side: int, *, by_width: bool) -> tuple[int, int]:
    """The size with the width (or the height) set to `side` and the aspect ratio kept."""
    if by_width:
        return side, max(1, round(height * side / width))
    return max(1, round(width * side / height)), side


def _pad_to_square(im: Image.Image, side: int) -> Image.Image:
    """`im` centred on a white side x side canvas (img2dataset's border mode pads with white)."""
    canvas = Image.new("RGB", (side, side), _WHITE)
    canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return canvas


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
