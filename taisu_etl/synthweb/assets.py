"""The fixed files behind the hostile routes: odd formats, broken files and bombs.

Each builder is deterministic and cheap (milliseconds), except the two bombs, which take a
fraction of a second and are cached per process because they are the same for every server.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zipfile
import zlib

from PIL import Image

from taisu_etl.synthweb.scenes import DEFAULT_QUALITY, DEFAULT_SIZE, Scene, encode_jpeg, render

# The image every hostile route that needs "a good image" serves; its caption is SAMPLE_CAPTION.
# On the left, so a test can tell whether an EXIF rotation was applied.
SAMPLE_SCENE = Scene(shape="圆形", colour="红色", background="蓝色", size="大", position="左边", variant=7)
SAMPLE_CAPTION = "蓝色背景上有一个红色的大圆形，在画面左边"

# An EXIF orientation-6 file stores the picture turned 90 degrees counter-clockwise; viewers
# (and PIL's exif_transpose) turn it back. Non-square, so a missed transpose shows in the size.
EXIF_UPRIGHT_SIZE = (320, 256)
GPS = {1: "N", 2: (39.0, 54.0, 27.0), 3: "E", 4: (116.0, 23.0, 29.0)}  # Beijing; must not survive

TINY_SIZE = (32, 32)  # below any minimum side
WIDE_SIZE = (2400, 240)  # min side fine, aspect ratio 10


def sample_jpeg(size: tuple[int, int] = DEFAULT_SIZE, quality: int = DEFAULT_QUALITY) -> bytes:
    return encode_jpeg(render(SAMPLE_SCENE, size), quality)


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def png_bytes(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    return _save(render(SAMPLE_SCENE, size), "PNG")


def rgba_png_bytes(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    """A PNG with a half-transparent alpha channel: the decoder must flatten it to RGB."""
    image = render(SAMPLE_SCENE, size).convert("RGBA")
    image.putalpha(128)
    return _save(image, "PNG")


def webp_bytes(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    return _save(render(SAMPLE_SCENE, size), "WEBP", quality=90)


def cmyk_jpeg_bytes(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    return _save(render(SAMPLE_SCENE, size).convert("CMYK"), "JPEG", quality=DEFAULT_QUALITY)


def bmp_bytes(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    """A real image in a format outside the JPEG/PNG/WebP/GIF allowlist."""
    return _save(render(SAMPLE_SCENE, size), "BMP")


def animated_gif_bytes(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    """Three frames; the first is the sample scene, the others differ, so "first frame only" shows."""
    frames = [
        render(SAMPLE_SCENE, size),
        render(Scene("正方形", "黄色", "黑色", "大", "右边", 1), size),
        render(Scene("三角形", "绿色", "白色", "小", "中间", 2), size),
    ]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)


def exif_rotated_jpeg_bytes() -> bytes:
    """Orientation 6 plus a GPS position: shown upright only after exif_transpose, and it carries
    metadata the pipeline must strip."""
    upright = render(SAMPLE_SCENE, EXIF_UPRIGHT_SIZE)
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    exif[0x010F] = "SynthCam"  # Make
    exif.get_ifd(0x8825).update(GPS)  # GPSInfo
    return _save(stored, "JPEG", quality=DEFAULT_QUALITY, exif=exif.tobytes())


def appended_payload_jpeg_bytes(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    """A valid JPEG followed by a ZIP archive (a polyglot): decoders stop at EOI and ignore it,
    so only re-encoding from pixels removes it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("payload.txt", date_time=(2024, 1, 1, 0, 0, 0))  # fixed: same bytes every run
        zf.writestr(info, "this should never reach a release\n")
    return sample_jpeg(size) + buf.getvalue()


def truncated_jpeg_bytes(size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    data = sample_jpeg(size)
    return data[: len(data) // 2]


def random_bytes(n: int = 4096, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def html_page(title: str = "示例网页") -> bytes:
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>" + title + "</title></head>"
        "<body><h1>" + title + "</h1><p>这不是一张图片。</p><img src='/hostile/sample.jpg'></body></html>"
    ).encode("utf-8")


def svg_bytes() -> bytes:
    return (
        b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg' width='256' height='256'>"
        b"<rect width='256' height='256' fill='blue'/><circle cx='70' cy='128' r='56' fill='red'/></svg>"
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=4)
def bomb_png(side: int = 20000) -> bytes:
    """A side x side one-colour PNG (400 megapixels by default) of about 50 KB.

    Written by hand at 1 bit per pixel: the pixels never exist in memory, so building it costs a
    fraction of a second, while decoding it would cost side*side bytes or more.
    """
    if side < 1:
        raise ValueError(f"side must be >= 1, not {side}")
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale, no interlace
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte "none" + the packed row
    rows_per_block = max(1, (1 << 20) // len(row))
    comp = zlib.compressobj(9)
    parts = []
    remaining = side
    while remaining:
        k = min(rows_per_block, remaining)
        parts.append(comp.compress(row * k))
        remaining -= k
    parts.append(comp.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=4)
def gzip_bomb(decompressed_bytes: int = 64 << 20) -> bytes:
    """Gzip of `decompressed_bytes` zeros (about 1/1000 of that): for `Content-Encoding: gzip`
    sent to a client that asked for identity, so a byte cap must count decoded bytes, or the
    client must not decode."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container
    block = bytes(1 << 20)
    parts = []
    remaining = decompressed_bytes
    while remaining:
        k = min(len(block), remaining)
        parts.append(comp.compress(block[:k]))
        remaining -= k
    parts.append(comp.flush())
    return b"".join(parts)
