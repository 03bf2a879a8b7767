"""normalise_image: signature sniffing, bomb cap, orientation, conversion, re-encoding, hashes."""

from __future__ import annotations

import io
import os
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile

from taisu_etl.images import (
    ImageConfig,
    ImageRejection,
    NormalisedImage,
    hamming,
    normalise_image,
    perceptual_hash,
    sniff,
)
from tests.images.support import (
    encode,
    jpeg_segments,
    linear_rgb_icc,
    png_chunk,
    png_grey_bomb,
    png_header_only,
    scene,
)

REPO = Path(__file__).resolve().parents[2]

# Header segments a clean output may have: SOI, JFIF APP0, DQT, SOF0, DHT, SOS. No APP1 (EXIF,
# XMP), APP2 (ICC), APP13 (IPTC), APP14 (Adobe) or COM.
CLEAN_MARKERS = {0xD8, 0xE0, 0xDB, 0xC0, 0xC4, 0xDA}


def ok(result: NormalisedImage | ImageRejection) -> NormalisedImage:
    assert isinstance(result, NormalisedImage), result
    return result


def rejected(result: NormalisedImage | ImageRejection, reason: str) -> ImageRejection:
    assert isinstance(result, ImageRejection), f"expected {reason}, got an image"
    assert result.reason == reason, result
    return result


def pixels(result: NormalisedImage) -> Image.Image:
    im = Image.open(io.BytesIO(result.jpeg))
    im.load()
    return im


def assert_clean_jpeg(data: bytes) -> None:
    assert sniff(data) == "jpeg"
    assert set(jpeg_segments(data)) <= CLEAN_MARKERS, [hex(m) for m in jpeg_segments(data)]
    assert data.endswith(b"\xff\xd9")
    im = Image.open(io.BytesIO(data))
    assert im.mode == "RGB"
    assert not im.getexif()
    assert not {"exif", "icc_profile", "comment", "xmp"} & set(im.info)


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 6) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# -- sniffing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name"), [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif")]
)
def test_each_allowed_format_decodes(fmt: str, name: str, config: ImageConfig) -> None:
    src = Image.new("RGB", (320, 240), (200, 40, 40))
    result = ok(normalise_image(encode(src, fmt), config))
    assert result.source_format == name
    assert (result.width, result.height) == (320, 240)
    assert (result.source_width, result.source_height) == (320, 240)
    assert_clean_jpeg(result.jpeg)
    assert close(pixels(result).getpixel((160, 120)), (200, 40, 40))


def test_signature_decides_not_the_name(config: ImageConfig, tmp_path: Path) -> None:
    # A PNG saved as photo.jpg (and served as image/jpeg) is still a PNG.
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(Image.new("RGB", (300, 300), (0, 90, 0)), "PNG"))
    result = ok(normalise_image(path.read_bytes(), config))
    assert result.source_format == "png"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        b"  \n<html><head><title>\xe5\x9b\xbe\xe7\x89\x87</title></head></html>",
        b"plain text, not an image",
        b'{"error": "forbidden"}',
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
        b"%PDF-1.7\n",
        os.urandom(4096),
        b"\xff\xd8",  # too short for the JPEG signature
        b"RIFF\x10\x00\x00\x00WAVEfmt ",  # RIFF, but audio
    ],
    ids=["empty", "html", "html-ws", "text", "json", "svg", "pdf", "random", "ffd8", "wav"],
)
def test_non_images_are_not_image(data: bytes, config: ImageConfig) -> None:
    rejected(normalise_image(data, config), "not_image")


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "ICO", "PPM"])
def test_formats_pillow_reads_but_we_do_not_take(fmt: str, config: ImageConfig) -> None:
    data = encode(Image.new("RGB", (256, 256), (1, 2, 3)), fmt)
    assert sniff(data) is None
    rejected(normalise_image(data, config), "not_image")


def test_allowed_formats_narrows_the_allowlist() -> None:
    gif = encode(Image.new("RGB", (300, 300), (1, 2, 3)), "GIF")
    r = rejected(normalise_image(gif, ImageConfig(allowed_formats=("jpeg", "png"))), "not_image")
    assert "gif" in r.detail


def test_html_is_described(config: ImageConfig) -> None:
    r = rejected(normalise_image(b"<html><body>hi</body></html>", config), "not_image")
    assert r.detail.startswith("html")


# -- broken files ---------------------------------------------------------------------------


def test_truncated_jpeg_is_decode_error(config: ImageConfig) -> None:
    data = encode(scene(640, 480), "JPEG", quality=90)
    r = rejected(normalise_image(data[: len(data) // 2], config), "decode_error")
    assert "truncated" in r.detail


def test_truncated_png_is_decode_error(config: ImageConfig) -> None:
    data = encode(scene(640, 480), "PNG")
    rejected(normalise_image(data[: len(data) // 2], config), "decode_error")


_NOISE = random.Random(7).randbytes(2000)  # fixed: random sizes could also read as bombs


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff" + _NOISE,
        b"\x89PNG\r\n\x1a\n" + _NOISE,
        b"GIF89a" + struct.pack("<HHBBB", 300, 300, 0, 0, 0) + _NOISE,
        b"RIFF\x00\x10\x00\x00WEBP" + _NOISE,
    ],
    ids=["jpeg", "png", "gif", "webp"],
)
def test_signature_with_garbage_is_decode_error(data: bytes, config: ImageConfig) -> None:
    rejected(normalise_image(data, config), "decode_error")


def test_bad_png_crc_is_decode_error(config: ImageConfig) -> None:
    data = bytearray(encode(Image.new("RGB", (300, 300), (9, 9, 9)), "PNG"))
    data[29] ^= 0xFF  # inside the IHDR CRC
    rejected(normalise_image(bytes(data), config), "decode_error")


# -- decompression bombs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "max_pixels"),
    [
        (30000, 30000, 50_000_000),  # beyond twice Pillow's limit: Pillow's own error
        (10000, 10000, 50_000_000),  # between Pillow's limit and twice it: Pillow only warns
        (8000, 7000, 50_000_000),  # below Pillow's limit, above ours: our check
        (1001, 1000, 1_000_000),  # a recipe's tighter cap
    ],
)
def test_bombs_are_refused_from_the_header(
    width: int, height: int, max_pixels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    r = rejected(
        normalise_image(png_header_only(width, height), ImageConfig(max_pixels=max_pixels)),
        "too_many_pixels",
    )
    assert "pixels" in r.detail


def test_at_the_pixel_cap_decodes(lenient: ImageConfig) -> None:
    config = lenient.model_copy(update={"max_pixels": 300 * 200})
    ok(normalise_image(encode(Image.new("RGB", (300, 200)), "PNG"), config))
    rejected(normalise_image(encode(Image.new("RGB", (301, 200)), "PNG"), config), "too_many_pixels")


def test_gif_frame_larger_than_its_canvas_is_capped() -> None:
    # A GIF may declare a small screen and a huge frame; Pillow grows the image to the frame.
    gif = bytearray(encode(Image.new("P", (300, 300)), "GIF"))
    flags = gif[10]
    desc = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
    assert gif[desc] == 0x2C  # image descriptor: ",", left, top, width, height
    gif[desc + 5 : desc + 9] = (20000).to_bytes(2, "little") * 2
    rejected(normalise_image(bytes(gif), ImageConfig(max_pixels=1_000_000)), "too_many_pixels")


def test_real_bomb_costs_no_memory() -> None:
    """A valid 10000x10000 PNG (100 MB of pixels, ~100 KB of file) in a fresh interpreter:
    refused, and the process's peak resident memory barely moves. tracemalloc cannot show this:
    Pillow allocates pixels with malloc, outside Python's allocator."""
    code = textwrap.dedent(
        """
        import resource
        from taisu_etl.images import ImageConfig, normalise_image
        from tests.images.support import png_grey_bomb
        data = png_grey_bomb(10000)
        config = ImageConfig(max_pixels=90_000_000)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = normalise_image(data, config)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(result.reason, len(data), (after - before) // 1024)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    reason, size, grown_mb = out[0], int(out[1]), int(out[2])
    assert reason == "too_many_pixels"
    assert size < 200_000
    assert grown_mb < 20


def test_recipe_may_allow_more_than_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    # A cap above Pillow's global limit must not be silently lowered to Pillow's.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    data = encode(Image.new("L", (1500, 1000)), "PNG")
    ok(normalise_image(data, ImageConfig(max_pixels=2_000_000, min_side=1)))
    assert Image.MAX_IMAGE_PIXELS == 2_000_000


# -- orientation, metadata, appended data ----------------------------------------------------


def _halves(width: int, height: int) -> Image.Image:
    im = Image.new("RGB", (width, height), (220, 20, 20))  # left half red
    im.paste((20, 20, 220), (width // 2, 0, width, height))  # right half blue
    return im


def _exif_with_gps(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "PhoneMaker"
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (39.0, 54.0, 15.0)
    gps[3] = "E"
    gps[4] = (116.0, 23.0, 30.0)
    return exif


def test_exif_orientation_is_applied_and_exif_dropped(config: ImageConfig) -> None:
    data = encode(_halves(600, 400), "JPEG", quality=95, exif=_exif_with_gps(6))
    assert b"PhoneMaker" in data and Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)
    result = ok(normalise_image(data, config))
    # Orientation 6: displayed rotated 90 degrees clockwise, so the left (red) half is on top.
    assert (result.width, result.height) == (400, 600)
    assert (result.source_width, result.source_height) == (400, 600)
    im = pixels(result)
    assert close(im.getpixel((200, 100)), (220, 20, 20), 12)
    assert close(im.getpixel((200, 500)), (20, 20, 220), 12)
    assert_clean_jpeg(result.jpeg)
    assert b"PhoneMaker" not in result.jpeg and b"Exif" not in result.jpeg


def test_orientation_with_resize(config: ImageConfig) -> None:
    data = encode(_halves(1200, 600), "JPEG", exif=_exif_with_gps(8))
    result = ok(normalise_image(data, config.model_copy(update={"resize_longest": 400})))
    assert (result.width, result.height) == (200, 400)
    assert (result.source_width, result.source_height) == (600, 1200)


def test_all_metadata_is_dropped(config: ImageConfig) -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(
        scene(400, 300),
        "JPEG",
        exif=_exif_with_gps(1),
        icc_profile=srgb,
        comment=b"shot at home",
        xmp=b"<x:xmpmeta>secret</x:xmpmeta>",
    )
    assert {0xE1, 0xE2, 0xFE} <= set(jpeg_segments(data))
    result = ok(normalise_image(data, config))
    assert_clean_jpeg(result.jpeg)
    for secret in (b"shot at home", b"secret", b"xmpmeta"):
        assert secret not in result.jpeg


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF"])
def test_appended_payload_is_dropped(fmt: str, config: ImageConfig) -> None:
    token = os.urandom(24)
    image = encode(scene(400, 300), fmt)
    polyglot = image + b"PK\x03\x04" + b"\x14\x00" * 8 + b"payload.exe" + token
    a = ok(normalise_image(polyglot, config))
    b = ok(normalise_image(image, config))
    assert token not in a.jpeg and b"PK\x03\x04" not in a.jpeg
    assert_clean_jpeg(a.jpeg)
    assert a.sha256 == b.sha256  # the payload changed nothing but the input size
    assert a.orig_bytes == len(polyglot)


# -- frames and colour modes ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_keeps_the_first_frame(fmt: str, config: ImageConfig) -> None:
    frames = [Image.new("RGB", (300, 300), c) for c in [(230, 0, 0), (0, 230, 0), (0, 0, 230)]]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    result = ok(normalise_image(data, config))
    assert close(pixels(result).getpixel((150, 150)), (230, 0, 0), 12)


def _with_key(im: Image.Image, key: object) -> Image.Image:
    im.info["transparency"] = key  # PNG tRNS colour key: that one value is fully transparent
    return im


def test_mpo_keeps_the_first_picture(config: ImageConfig) -> None:
    # Camera MPO files are JPEGs with more pictures appended; only the first is kept.
    first, second = Image.new("RGB", (300, 300), (200, 0, 0)), Image.new("RGB", (300, 300), (0, 200, 0))
    data = encode(first, "MPO", save_all=True, append_images=[second])
    result = ok(normalise_image(data, config))
    assert result.source_format == "jpeg"
    assert close(pixels(result).getpixel((150, 150)), (200, 0, 0))
    assert len(result.jpeg) < len(data)


def _p_with_transparency() -> Image.Image:
    im = Image.new("P", (300, 300), 0)
    im.putpalette([10, 200, 10] + [0, 0, 0] * 255)
    im.info["transparency"] = 0
    return im


@pytest.mark.parametrize(
    ("make", "fmt", "expected"),
    [
        (lambda: Image.new("CMYK", (300, 300), (0, 255, 255, 0)), "JPEG", (255, 0, 0)),
        (lambda: Image.new("RGBA", (300, 300), (255, 0, 0, 0)), "PNG", (255, 255, 255)),
        (lambda: Image.new("RGBA", (300, 300), (255, 0, 0, 255)), "PNG", (255, 0, 0)),
        (lambda: Image.new("RGBA", (300, 300), (0, 0, 0, 128)), "PNG", (127, 127, 127)),
        (lambda: Image.new("RGBA", (300, 300), (255, 0, 0, 0)), "WEBP", (255, 255, 255)),
        (lambda: Image.new("LA", (300, 300), (0, 128)), "PNG", (127, 127, 127)),
        (lambda: Image.new("L", (300, 300), 77), "PNG", (77, 77, 77)),
        (lambda: Image.new("L", (300, 300), 77), "JPEG", (77, 77, 77)),
        (lambda: Image.new("1", (300, 300), 1), "PNG", (255, 255, 255)),
        (lambda: Image.new("I;16", (300, 300), 40000), "PNG", (156, 156, 156)),
        (lambda: Image.new("I;16", (300, 300), 65535), "PNG", (255, 255, 255)),
        (_p_with_transparency, "PNG", (255, 255, 255)),
        (_p_with_transparency, "GIF", (255, 255, 255)),
        (lambda: Image.new("RGB", (300, 300), (10, 200, 10)).quantize(4), "PNG", (10, 200, 10)),
        (lambda: _with_key(Image.new("L", (300, 300), 50), 50), "PNG", (255, 255, 255)),
        (lambda: _with_key(Image.new("RGB", (300, 300), (5, 6, 7)), (5, 6, 7)), "PNG", (255, 255, 255)),
    ],
    ids=[
        "cmyk-jpeg",
        "rgba-clear",
        "rgba-opaque",
        "rgba-half",
        "rgba-webp",
        "la",
        "l-png",
        "l-jpeg",
        "1bit",
        "i16",
        "i16-max",
        "p-transparent",
        "gif-transparent",
        "p-opaque",
        "l-colour-key",
        "rgb-colour-key",
    ],
)
def test_modes_become_rgb(make, fmt: str, expected: tuple[int, int, int], config: ImageConfig) -> None:
    result = ok(normalise_image(encode(make(), fmt), config))
    im = pixels(result)
    assert im.mode == "RGB"
    assert close(im.getpixel((150, 150)), expected, 4), im.getpixel((150, 150))


def test_sixteen_bit_grey_keeps_its_gradient(config: ImageConfig) -> None:
    ramp = np.tile(np.linspace(0, 65535, 512, dtype=np.uint16), (256, 1))
    data = encode(Image.fromarray(ramp), "PNG")
    row = np.asarray(pixels(ok(normalise_image(data, config))))[128, :, 0].astype(int)
    assert row[0] < 5 and row[-1] > 250 and abs(row[256] - 128) < 6


# -- colour management -----------------------------------------------------------------------


def test_icc_profile_is_converted_to_srgb(config: ImageConfig) -> None:
    grey = Image.new("RGB", (300, 300), (128, 128, 128))
    data = encode(grey, "PNG", icc_profile=linear_rgb_icc())
    result = ok(normalise_image(data, config))
    assert close(pixels(result).getpixel((150, 150)), (188, 188, 188), 3)
    assert_clean_jpeg(result.jpeg)
    # Opting out keeps the raw values.
    raw = ok(normalise_image(data, config.model_copy(update={"color_manage": False})))
    assert close(pixels(raw).getpixel((150, 150)), (128, 128, 128), 3)


def test_srgb_and_broken_profiles_leave_pixels_alone(config: ImageConfig) -> None:
    im = scene(320, 240)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    plain = ok(normalise_image(encode(im, "PNG"), config))
    tagged = ok(normalise_image(encode(im, "PNG", icc_profile=srgb), config))
    broken = ok(normalise_image(encode(im, "PNG", icc_profile=b"not a profile" * 20), config))
    assert plain.sha256 == tagged.sha256 == broken.sha256


# -- resize ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])  # JPEG takes the DCT-scaling shortcut
def test_resize_longest_side(fmt: str, config: ImageConfig) -> None:
    cfg = config.model_copy(update={"resize_longest": 512})
    result = ok(normalise_image(encode(scene(2000, 1000), fmt), cfg))
    assert (result.width, result.height) == (512, 256)
    assert (result.source_width, result.source_height) == (2000, 1000)
    reference = scene(2000, 1000).resize((512, 256), Image.Resampling.LANCZOS)
    diff = np.abs(np.asarray(pixels(result), dtype=int) - np.asarray(reference, dtype=int))
    assert diff.mean() < 6


def test_resize_never_enlarges(config: ImageConfig) -> None:
    cfg = config.model_copy(update={"resize_longest": 512})
    result = ok(normalise_image(encode(scene(400, 300), "JPEG"), cfg))
    assert (result.width, result.height) == (400, 300)


# -- checks before decoding -------------------------------------------------------------------


def test_apply_checks_rejects_from_the_header(config: ImageConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    small = encode(Image.new("RGB", (199, 400)), "PNG")
    wide = encode(Image.new("RGB", (1000, 300)), "PNG")
    rejected(normalise_image(small, config, apply_checks=True), "too_small")
    rejected(normalise_image(wide, config, apply_checks=True), "bad_aspect")


def test_checks_are_off_by_default(config: ImageConfig) -> None:
    result = ok(normalise_image(encode(Image.new("RGB", (50, 40)), "PNG"), config))
    assert (result.source_width, result.source_height) == (50, 40)


# -- hashes ------------------------------------------------------------------------------------


def test_same_pixels_same_sha256(config: ImageConfig) -> None:
    im = scene(500, 400)
    a = ok(normalise_image(encode(im, "PNG"), config))
    b = ok(normalise_image(encode(im, "PNG"), config))
    # Different files, same pixels: a text chunk and another zlib level change only the bytes.
    c = ok(
        normalise_image(
            encode(im, "PNG", compress_level=1, pnginfo=_pnginfo("Author", "someone")), config
        )
    )
    assert a.sha256 == b.sha256 == c.sha256
    assert a.jpeg == c.jpeg
    assert a.phash == c.phash
    import hashlib

    assert a.sha256 == hashlib.sha256(a.jpeg).hexdigest()
    assert len(a.phash) == 16 and int(a.phash, 16) >= 0
    assert a.phash == perceptual_hash(a.jpeg)  # recomputable from the stored bytes


def _pnginfo(key: str, value: str):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(key, value)
    return info


def test_png_text_chunk_is_dropped(config: ImageConfig) -> None:
    data = encode(scene(300, 300), "PNG", pnginfo=_pnginfo("GPS", "39.9042N 116.4074E"))
    assert b"116.4074E" in data
    assert b"116.4074E" not in ok(normalise_image(data, config)).jpeg


def test_near_duplicates_are_within_the_threshold(config: ImageConfig) -> None:
    original = scene(800, 600, seed=1)
    base = ok(normalise_image(encode(original, "JPEG", quality=92), config))
    variants = {
        "quality 60": encode(original, "JPEG", quality=60),
        "png": encode(original, "PNG"),
        "webp": encode(original, "WEBP", quality=70),
        "90% size": encode(original.resize((720, 540), Image.Resampling.BICUBIC), "JPEG"),
        "half size": encode(original.resize((400, 300), Image.Resampling.BILINEAR), "JPEG"),
        "brighter": encode(Image.eval(original, lambda v: min(255, v + 12)), "JPEG"),
    }
    for name, data in variants.items():
        other = ok(normalise_image(data, config))
        assert hamming(base.phash, other.phash) <= config.phash_distance, name
    for seed in range(2, 8):
        different = ok(normalise_image(encode(scene(800, 600, seed=seed), "JPEG"), config))
        assert hamming(base.phash, different.phash) > 2 * config.phash_distance, seed


# perceptual_hash reproduces imagehash.phash inline; the tests below hold it to the library, bit
# for bit, over inputs that reach every branch of the algorithm (ties at the median included).


def _imagehash_phash(jpeg: bytes) -> str:
    """The reference: imagehash.phash on the same draft decode perceptual_hash uses."""
    import imagehash

    with Image.open(io.BytesIO(jpeg), formats=["JPEG"]) as im:
        im.draft("L", (64, 64))
        return str(imagehash.phash(im))


def _synthweb_jpegs() -> list[bytes]:
    from taisu_etl.synthweb import make_pairs

    sizes = [(256, 256), (640, 480), (300, 100), (97, 211), (512, 64)]
    qualities = [95, 75, 40]
    return [
        p.jpeg(size=sizes[i % len(sizes)], quality=qualities[i % len(qualities)])
        for i, p in enumerate(make_pairs(90, seed=11))
    ]


def _noise_jpegs() -> list[bytes]:
    rng = np.random.default_rng(5)
    out = []
    for i in range(40):
        w, h = (int(v) for v in rng.integers(8, 300, 2))
        shape = (h, w) if i % 2 else (h, w, 3)
        levels = [256, 2, 3][i % 3]  # full range, and few levels (many equal pixels)
        arr = (rng.integers(0, levels, shape) * (255 // (levels - 1))).astype(np.uint8)
        out.append(encode(Image.fromarray(arr), "JPEG", quality=int(rng.integers(5, 101))))
    return out


def _flat_jpegs() -> list[bytes]:
    # Every DCT coefficient but DC is (near) zero: the median sits among equal values.
    out = [encode(Image.new("L", (64, 64), v), "JPEG") for v in range(0, 256, 5)]
    for size in [(1, 1), (7, 3), (32, 32), (100, 37), (256, 256), (1000, 2)]:
        for colour in [(0, 0, 0), (255, 255, 255), (128, 128, 128), (200, 40, 40), (3, 250, 90)]:
            out.append(encode(Image.new("RGB", size, colour), "JPEG", quality=90))
    for cmyk in [(0, 0, 0, 0), (0, 0, 0, 255), (30, 200, 10, 40)]:
        out.append(encode(Image.new("CMYK", (48, 48), cmyk), "JPEG"))
    return out


def _tied_jpegs() -> list[bytes]:
    # Halves, stripes, checkerboards, a lone dot: many coefficients exactly equal or zero.
    out = []
    for side in (32, 64, 256):
        y, x = np.mgrid[:side, :side]
        for pattern in (
            x < side // 2,
            y < side // 2,
            (x // (side // 8)) % 2 == 0,
            (y // (side // 4)) % 2 == 0,
            ((x // (side // 8)) + (y // (side // 8))) % 2 == 0,
            (x == side // 3) & (y == side // 5),
        ):
            arr = np.where(pattern, 230, 20).astype(np.uint8)
            out.append(encode(Image.fromarray(arr), "JPEG", quality=95))
            out.append(encode(Image.fromarray(arr).convert("RGB"), "JPEG", quality=50))
    return out


def _odd_size_jpegs() -> list[bytes]:
    # Tiny (below the 32x32 the hash works on), odd, and very wide or tall.
    sizes = [(1, 1), (2, 2), (8, 8), (31, 17), (17, 31), (32, 32), (33, 33), (63, 65), (65, 63),
             (1, 500), (500, 1), (1000, 3), (3, 1000), (2048, 8), (8, 2048), (1200, 40)]
    return [encode(scene(w, h, seed=i), "JPEG", quality=85) for i, (w, h) in enumerate(sizes)]


def _grey_and_cmyk_jpegs() -> list[bytes]:
    out = []
    for seed, size in enumerate([(256, 256), (300, 200), (90, 333), (640, 480)]):
        im = scene(*size, seed=seed)
        for quality in (30, 90):
            out.append(encode(im.convert("L"), "JPEG", quality=quality))
            out.append(encode(im.convert("CMYK"), "JPEG", quality=quality))
    return out


def _reencoded_jpegs() -> list[bytes]:
    out = []
    for seed in (21, 22, 23):
        data = encode(scene(400, 300, seed=seed), "JPEG", quality=92)
        for quality in (100, 95, 85, 70, 50, 30, 10, 1):
            with Image.open(io.BytesIO(data)) as im:
                data = encode(im, "JPEG", quality=quality)  # each generation from the last
            out.append(data)
        im = scene(400, 300, seed=seed)
        out.append(encode(im, "JPEG", quality=80, progressive=True))
        out.append(encode(im, "JPEG", quality=80, subsampling=0))
        out.append(encode(im, "JPEG", quality=80, subsampling=2, optimize=True))
    return out


_PHASH_CORPORA = {
    "synthweb": _synthweb_jpegs,
    "noise": _noise_jpegs,
    "flat": _flat_jpegs,
    "tied": _tied_jpegs,
    "odd-size": _odd_size_jpegs,
    "grey-cmyk": _grey_and_cmyk_jpegs,
    "reencoded": _reencoded_jpegs,
}


@pytest.mark.parametrize("corpus", list(_PHASH_CORPORA))
def test_perceptual_hash_equals_imagehash_phash(corpus: str) -> None:
    jpegs = _PHASH_CORPORA[corpus]()
    differ = [
        (i, want, got)
        for i, data in enumerate(jpegs)
        if (want := _imagehash_phash(data)) != (got := perceptual_hash(data))
    ]
    assert not differ, f"{len(differ)}/{len(jpegs)} differ (index, imagehash, ours): {differ[:5]}"


def _pillow_draft_grey(jpeg: bytes) -> np.ndarray:
    """What perceptual_hash used to decode with Pillow alone: draft("L", (64, 64)), then L."""
    with Image.open(io.BytesIO(jpeg), formats=["JPEG"]) as im:
        im.draft("L", (64, 64))
        return np.asarray(im if im.mode == "L" else im.convert("L"))


@pytest.mark.parametrize("corpus", list(_PHASH_CORPORA))
def test_grey_draft_decode_is_pillows_pixel_for_pixel(corpus: str) -> None:
    # The hash test above could miss a pixel that moved without flipping a bit; this cannot.
    # simplejpeg decodes the YCbCr and grey JPEGs here, Pillow the CMYK ones: both must give
    # exactly Pillow's draft decode.
    from taisu_etl.images.decode import _grey_at_draft_scale

    differ = []
    for i, data in enumerate(_PHASH_CORPORA[corpus]()):
        want, got = _pillow_draft_grey(data), _grey_at_draft_scale(data)
        if want.shape != got.shape or not np.array_equal(want, got):
            differ.append((i, want.shape, got.shape))
    assert not differ, f"{len(differ)} differ (index, Pillow shape, ours): {differ[:5]}"


def test_grey_draft_decode_takes_the_fast_path_for_our_own_output() -> None:
    # What the stage hashes is always its own baseline YCbCr JPEG: that must not fall back to
    # Pillow (which is where the time went), at every draft scale.
    from taisu_etl.images import decode

    calls = []
    real_open = decode.Image.open

    def counting_open(*args: object, **kwargs: object) -> Image.Image:
        calls.append(args)
        return real_open(*args, **kwargs)

    stored = [ok(normalise_image(encode(scene(w, h, seed=w), "JPEG"), ImageConfig(min_side=1, max_aspect=64.0))).jpeg
              for w, h in [(40, 40), (200, 130), (300, 260), (700, 520), (1200, 600)]]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decode.Image, "open", counting_open)
        for data in stored:
            decode._grey_at_draft_scale(data)
    assert calls == []


def test_grey_draft_decode_leaves_damaged_streams_to_pillow() -> None:
    # libjpeg only warns about a truncated stream (and fills in grey); simplejpeg's strict mode
    # turns that into an error, so Pillow decides, as before: it refuses to hash a truncated file.
    data = encode(scene(256, 256, seed=3), "JPEG", quality=90)
    truncated = data[: len(data) // 2]
    with pytest.raises(OSError):
        perceptual_hash(truncated)
    # Junk between segments: libjpeg warns, Pillow skips it; same hash as the clean file's.
    head = data.index(b"\xff\xdb")
    junk = data[:head] + b"\x00\x00" + data[head:]
    assert perceptual_hash(junk) == _imagehash_phash(junk)


def test_perceptual_hash_of_flat_images() -> None:
    # Flat: the DCT of a constant is DC plus exact zeros, so the median is 0.0. Black has DC 0
    # too: no bit is set, and the hex keeps all 16 digits; any other grey sets the DC bit only.
    black = encode(Image.new("L", (64, 64), 0), "JPEG")
    assert perceptual_hash(black) == _imagehash_phash(black) == "0" * 16
    for value in (1, 128, 255):
        grey = encode(Image.new("L", (64, 64), value), "JPEG")
        assert perceptual_hash(grey) == _imagehash_phash(grey) == "8" + "0" * 15


def test_rejection_reason_must_be_in_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="unknown reason code"):
        ImageRejection("not_a_code", "typo")


def test_header_only_png_helper_is_what_it_claims() -> None:
    # Guards the bomb tests: the crafted file must open and report the declared size.
    with Image.open(io.BytesIO(png_header_only(1234, 567))) as im:
        assert im.size == (1234, 567)
    assert png_chunk(b"IEND", b"").endswith(b"\xaeB`\x82")
    with Image.open(io.BytesIO(png_grey_bomb(64))) as im:
        im.load()
        assert im.size == (64, 64)
