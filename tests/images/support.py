"""Image builders for the image tests: every input is made here with Pillow, nothing is shipped."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def scene(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """A deterministic photo-like picture: soft gradient, a few shapes, a little noise.

    pHash needs structure at low frequencies to tell pictures apart; a flat or pure-noise image
    would make every near-duplicate assertion meaningless.
    """
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    colours = rng.uniform(40, 215, (2, 3))
    base = x * colours[0] + (1 - y) * colours[1] * 0.5
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = rng.uniform(0, 0.8) * width, rng.uniform(0, 0.8) * height
        x1, y1 = x0 + rng.uniform(0.1, 0.4) * width, y0 + rng.uniform(0.1, 0.4) * height
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
    im = im.filter(ImageFilter.GaussianBlur(2))
    noise = rng.normal(0, 4, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(im) + noise, 0, 255).astype(np.uint8))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int, colour_type: int = 2) -> bytes:
    """A PNG that declares `width`x`height` but carries only a token IDAT: cheap to build, and
    anything that tried to decode it would first allocate the whole declared image."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + png_chunk(b"IEND", b"")
    )


def png_grey_bomb(side: int) -> bytes:
    """A complete, valid side x side greyscale PNG of zeros: ~side^2 bytes decoded, ~side^2/1000
    stored. Compressed row by row so building it needs no big buffer."""
    z = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    parts = [z.compress(row) for _ in range(side)]
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


def jpeg_segments(data: bytes) -> list[int]:
    """Marker codes of a JPEG's header segments, from SOI up to and including SOS."""
    assert data[:2] == b"\xff\xd8"
    markers = [0xD8]
    pos = 2
    while pos < len(data):
        assert data[pos] == 0xFF, f"no marker at {pos}"
        marker = data[pos + 1]
        markers.append(marker)
        if marker == 0xDA:  # SOS: entropy-coded data follows
            return markers
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
    raise AssertionError("no SOS marker")


def linear_rgb_icc(description: str = "Linear sRGB primaries (test)") -> bytes:
    """A minimal ICC v2 display profile: sRGB primaries, D50, but linear (gamma 1.0) curves.

    Pixels tagged with it are linear light, so a correct conversion to sRGB must brighten
    mid-grey (128 -> ~188); ignoring the profile would leave 128.
    """

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ \0\0\0\0" + s15(x) + s15(y) + s15(z)

    ascii_desc = description.encode("ascii") + b"\0"
    desc = (
        b"desc\0\0\0\0"
        + struct.pack(">I", len(ascii_desc))
        + ascii_desc
        + struct.pack(">II", 0, 0)  # no Unicode description
        + struct.pack(">HB", 0, 0)
        + b"\0" * 67  # no ScriptCode description
    )
    curve = b"curv\0\0\0\0" + struct.pack(">I", 0)  # no entries: the identity curve
    tags: list[tuple[bytes, bytes]] = [
        (b"desc", desc),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)),
        (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
        (b"cprt", b"text\0\0\0\0no copyright\0"),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table = struct.pack(">I", len(tags))
    body = b""
    for sig, data in tags:
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data + b"\0" * (-len(data) % 4)
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"\0\0\0\0"
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + b"\0" * 24  # platform, flags, manufacturer, model, attributes
        + struct.pack(">I", 0)  # perceptual intent
        + s15(0.9642) + s15(1.0) + s15(0.8249)
        + b"\0" * 48  # creator and reserved
    )
    assert len(header) == 128
    return header + table + body
