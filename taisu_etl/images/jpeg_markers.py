"""A JPEG rewritten at the marker level: what decoding needs, nothing else, every length checked.

`read_jpeg_header` parses up to the first scan and reports what the segments the rewrite drops
said about the pixels (EXIF/XMP orientation, the ICC profile, the Adobe colour transform), so the
caller can decide, before any entropy-coded byte is read, whether dropping them keeps the
pixels' meaning. `strip_jpeg` then keeps SOI, DQT, DHT, DRI, SOF, each SOS with its entropy-coded
data, and EOI, copied byte for byte, so the result decodes to exactly the pixels of the input.
Every APPn and COM segment (JFIF, EXIF with GPS, XMP, ICC, IPTC, Adobe) and anything after EOI
(an appended ZIP, the second picture of an MPO) is gone.

Anything this module does not fully understand raises `UnsupportedJpeg`; the caller then takes
the decode + re-encode path, which keeps its own, older rejection behaviour for damaged files.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final

SOI: Final = 0xD8
EOI: Final = 0xD9
SOS: Final = 0xDA
DQT: Final = 0xDB
DHT: Final = 0xC4
DRI: Final = 0xDD
COM: Final = 0xFE
# Baseline, extended sequential, progressive: all Huffman-coded. SOF3 (lossless), SOF5-7
# (hierarchical), SOF9-15 (arithmetic) are legal but rare on the web; they take the full path.
HUFFMAN_SOF: Final = frozenset({0xC0, 0xC1, 0xC2})
OTHER_SOF: Final = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
KEPT: Final = frozenset({DQT, DHT, DRI})

_EXIF_ID: Final = b"Exif\x00\x00"
_XMP_ID: Final = b"http://ns.adobe.com/xap/1.0/\x00"
_ICC_ID: Final = b"ICC_PROFILE\x00"
_ADOBE_ID: Final = b"Adobe"
_ORIENTATION_TAG: Final = 0x0112
# Pillow reads an orientation from XMP when EXIF has none; the same pattern it searches for.
_XMP_ORIENTATION: Final = re.compile(rb'tiff:Orientation(?:="|>)([0-9])')
# In entropy-coded data 0xFF is followed by 0x00 (a stuffed byte), by 0xD0-0xD7 (a restart
# marker, part of the scan) or by another 0xFF (fill); any other byte after 0xFF is a marker.
_SCAN_END: Final = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


class UnsupportedJpeg(ValueError):
    """The file is malformed or uses a feature the lossless rewrite does not take."""


@dataclass(frozen=True, slots=True)
class JpegHeader:
    """What a JPEG says before its first scan: all Pillow and libjpeg read to interpret it.

    Segments after the first SOS (tables of later progressive scans, stray APPn) are never
    consulted for orientation, profile or colour transform, by Pillow or by libjpeg, so they
    are not here either.
    """

    width: int
    height: int
    sof: int  # 0xC0, 0xC1 or 0xC2
    component_ids: tuple[int, ...]
    # Pixels per MCU (8 x the largest horizontal, vertical sampling factor): the block grid a
    # lossless rotation moves, which must cover the image exactly along the edges it moves.
    mcu: tuple[int, int]
    # None: no EXIF/XMP orientation. -1: an EXIF block whose orientation cannot be read.
    orientation: int | None
    icc_profile: bytes | None  # chunks joined in sequence order, as Pillow joins them
    adobe_transform: int | None  # APP14 transform flag; None without an Adobe segment
    kept: tuple[tuple[int, int], ...]  # byte ranges of the tables and SOF before the first scan
    first_scan: int  # offset of the first SOS marker


def read_jpeg_header(data: bytes) -> JpegHeader:
    """Parse `data` up to its first SOS; raise `UnsupportedJpeg` if it is not a plain JPEG.

    Checks: SOI first; each segment length >= 2 and inside the buffer; exactly one SOF, of a
    Huffman-coded kind, with 8-bit precision, a non-zero size (a zero height needs DNL) and a
    consistent component table; no marker that a plain web JPEG does not have. Costs
    microseconds: nothing of the entropy-coded data is read.
    """
    size = len(data)
    if size < 4 or data[0] != 0xFF or data[1] != SOI:
        raise UnsupportedJpeg("no SOI marker")
    frame: tuple[int, int, int, tuple[int, ...], tuple[int, int]] | None = None
    kept: list[tuple[int, int]] = []
    exif: list[bytes] = []
    xmp_orientation: int | None = None
    icc_chunks: list[tuple[int, bytes]] = []
    adobe_transform: int | None = None
    pos = 2
    while True:
        marker, start, pos = _next_segment(data, pos)
        body = data[start + 4 : pos]
        if marker == SOS:
            if frame is None:
                raise UnsupportedJpeg("SOS before SOF")
            break
        if marker in KEPT:
            kept.append((start, pos))
        elif marker in HUFFMAN_SOF:
            if frame is not None:
                raise UnsupportedJpeg("more than one SOF")
            frame = (marker, *_parse_sof(body))
            kept.append((start, pos))
        elif marker in OTHER_SOF:
            raise UnsupportedJpeg(f"SOF 0x{marker:02X} (lossless, hierarchical or arithmetic)")
        elif 0xE0 <= marker <= 0xEF:
            if marker == 0xE1 and body.startswith(_EXIF_ID):
                exif.append(body)
            elif marker == 0xE1 and body.startswith(_XMP_ID):
                found = _XMP_ORIENTATION.search(body)
                if found is not None:
                    xmp_orientation = int(found[1])  # Pillow keeps the last XMP segment
            elif marker == 0xE2 and body.startswith(_ICC_ID) and len(body) >= 14:
                icc_chunks.append((body[12], body[14:]))
            elif marker == 0xEE and body.startswith(_ADOBE_ID) and len(body) >= 12:
                adobe_transform = body[11]
        elif marker != COM:
            # DAC (arithmetic tables), DNL, DHP, EXP, JPGn, reserved: not in a plain web JPEG.
            raise UnsupportedJpeg(f"marker 0x{marker:02X} is not taken by the lossless path")
    assert frame is not None  # the loop only leaves at an SOS, which needs a frame
    sof, width, height, ids, mcu = frame
    return JpegHeader(
        width=width,
        height=height,
        sof=sof,
        component_ids=ids,
        mcu=mcu,
        orientation=_orientation(exif, xmp_orientation),
        icc_profile=b"".join(chunk for _, chunk in sorted(icc_chunks)) if icc_chunks else None,
        adobe_transform=adobe_transform,
        kept=tuple(kept),
        first_scan=start,
    )


def strip_jpeg(data: bytes, header: JpegHeader | None = None) -> bytes:
    """SOI, the kept tables, SOF, every scan with its entropy-coded data, EOI; nothing else.

    Continues from `header` (as `read_jpeg_header(data)` returned it) without parsing the
    header again. Raises `UnsupportedJpeg` where a scan's data runs to the end of the buffer
    (truncated), a scan names a component the frame lacks, or EOI never comes; anything after
    EOI is dropped. Restart markers and the tables between progressive scans are kept as found.
    """
    if header is None:
        header = read_jpeg_header(data)
    out = [b"\xff\xd8"]
    out.extend(data[start:end] for start, end in header.kept)
    pos = header.first_scan
    while True:
        marker, start, pos = _next_segment(data, pos)
        if marker == EOI:
            out.append(b"\xff\xd9")
            return b"".join(out)
        if marker == SOS:
            _check_sos(data[start + 4 : pos], header.component_ids)
            match = _SCAN_END.search(data, pos)
            if match is None:
                raise UnsupportedJpeg("scan data runs to the end of the file (truncated)")
            pos = match.start()
            out.append(data[start:pos])
        elif marker in KEPT:
            out.append(data[start:pos])
        elif not (0xE0 <= marker <= 0xEF or marker == COM):
            raise UnsupportedJpeg(f"marker 0x{marker:02X} between scans")


def _next_segment(data: bytes, pos: int) -> tuple[int, int, int]:
    """(marker, offset of its 0xFF, offset after its segment) of the marker at `pos`.

    EOI has no segment: its end is just after the marker. SOS ends after its header; the
    entropy-coded data that follows is the caller's.
    """
    size = len(data)
    if pos >= size or data[pos] != 0xFF:
        raise UnsupportedJpeg(f"no marker at byte {pos}")
    # Fill bytes: any number of 0xFF may precede a marker code.
    while pos < size and data[pos] == 0xFF:
        pos += 1
    if pos >= size:
        raise UnsupportedJpeg("file ends inside a marker")
    marker = data[pos]
    start = pos - 1
    pos += 1
    if marker == EOI:
        return marker, start, pos
    if marker in (0x00, 0x01, SOI) or 0xD0 <= marker <= 0xD7:
        raise UnsupportedJpeg(f"marker 0x{marker:02X} outside a scan")
    if pos + 2 > size:
        raise UnsupportedJpeg("file ends inside a segment length")
    (length,) = struct.unpack_from(">H", data, pos)
    end = pos + length
    if length < 2 or end > size:
        raise UnsupportedJpeg(f"segment 0x{marker:02X} length {length} out of bounds")
    return marker, start, end


def _parse_sof(body: bytes) -> tuple[int, int, tuple[int, ...], tuple[int, int]]:
    """(width, height, component ids, MCU size in pixels) of an SOF segment's body."""
    if len(body) < 6:
        raise UnsupportedJpeg("SOF too short")
    precision, height, width, count = struct.unpack_from(">BHHB", body)
    if precision != 8:
        raise UnsupportedJpeg(f"{precision}-bit samples")
    if width == 0 or height == 0:
        raise UnsupportedJpeg("zero width or height (DNL)")
    if count == 0 or len(body) != 6 + 3 * count:
        raise UnsupportedJpeg("SOF component table does not match its length")
    ids = tuple(body[6 + 3 * i] for i in range(count))
    samplings = [body[7 + 3 * i] for i in range(count)]
    for sampling in samplings:
        if not (1 <= sampling >> 4 <= 4 and 1 <= sampling & 0x0F <= 4):
            raise UnsupportedJpeg("bad sampling factor")
    if len(set(ids)) != count:
        raise UnsupportedJpeg("duplicate component ids")
    # A single-component scan is not interleaved, so its MCU is one 8x8 block whatever the
    # sampling factor says (libjpeg sets the MCU the same way).
    if count == 1:
        return width, height, ids, (8, 8)
    mcu = (8 * max(s >> 4 for s in samplings), 8 * max(s & 0x0F for s in samplings))
    return width, height, ids, mcu


def _check_sos(body: bytes, frame_ids: tuple[int, ...]) -> None:
    if not body:
        raise UnsupportedJpeg("empty SOS")
    count = body[0]
    if count == 0 or len(body) != 1 + 2 * count + 3:
        raise UnsupportedJpeg("SOS component table does not match its length")
    for i in range(count):
        if body[1 + 2 * i] not in frame_ids:
            raise UnsupportedJpeg("SOS names a component the frame does not have")


def _orientation(exif: list[bytes], xmp_orientation: int | None) -> int | None:
    """The orientation Pillow's exif_transpose would act on: EXIF IFD0 first, else XMP's."""
    if len(exif) > 1:
        return -1  # Pillow joins several EXIF segments; not worth reproducing
    found = _exif_orientation(exif[0][len(_EXIF_ID) :]) if exif else None
    return xmp_orientation if found is None else found


def _exif_orientation(tiff: bytes) -> int | None:
    """Orientation tag of IFD0; None when absent, -1 when the TIFF structure cannot be read."""
    if len(tiff) < 8:
        return -1
    if tiff[:4] == b"II*\x00":
        order = "<"
    elif tiff[:4] == b"MM\x00*":
        order = ">"
    else:
        return -1
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return -1
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    if ifd + 2 + 12 * count > len(tiff):
        return -1
    for i in range(count):
        tag, kind, n = struct.unpack_from(order + "HHI", tiff, ifd + 2 + 12 * i)
        if tag == _ORIENTATION_TAG:
            if kind != 3 or n != 1:  # SHORT, one value: anything else is not what Pillow reads
                return -1
            (value,) = struct.unpack_from(order + "H", tiff, ifd + 2 + 12 * i + 8)
            return value
    return None
