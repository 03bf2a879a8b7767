"""Lossless JPEG sanitising, the fallbacks around it, and the resize modes.

The promise under test: a clean JPEG is stored as its own scans, so its stored bytes decode to
exactly the input's pixels, while nothing of its metadata or trailing bytes survives; every
input the lossless path does not take gets what the decode + re-encode path gives.
"""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import struct
import subprocess
import time

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageCms
from pydantic import ValidationError

from taisu_etl.images import (
    DecodePool,
    ImageConfig,
    ImageRejection,
    NormalisedImage,
    normalise_image,
    perceptual_hash,
)
from taisu_etl.images import jpeg_orient
from taisu_etl.images.jpeg_markers import UnsupportedJpeg, read_jpeg_header, strip_jpeg
from taisu_etl.images.jpeg_orient import can_orient_losslessly
from tests.images.support import encode, jpeg_segments, linear_rgb_icc, scene

# What a losslessly kept JPEG may contain: SOI, DQT, DHT, DRI, SOF0-2, SOS (and RSTn inside scans).
LOSSLESS_MARKERS = {0xD8, 0xDB, 0xC4, 0xDD, 0xC0, 0xC1, 0xC2, 0xDA}

CONFIG = ImageConfig(min_side=1, max_aspect=100.0)
REENCODE = CONFIG.model_copy(update={"lossless_jpeg": False})


def ok(result: NormalisedImage | ImageRejection) -> NormalisedImage:
    assert isinstance(result, NormalisedImage), result
    return result


def decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB") if im.mode != "RGB" else im)


def all_markers(data: bytes) -> list[int]:
    """Every marker of a JPEG, scans skipped, up to EOI (which must be the last two bytes)."""
    markers, pos = [], 0
    while True:
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        markers.append(marker)
        if marker == 0xD8:
            pos += 2
            continue
        if marker == 0xD9:
            assert pos + 2 == len(data), "bytes after EOI"
            return markers
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
        if marker == 0xDA:
            while not (data[pos] == 0xFF and data[pos + 1] not in (0x00, *range(0xD0, 0xD8))):
                pos += 1


def exif(orientation: int | None, gps: bool = True) -> Image.Exif:
    out = Image.Exif()
    if orientation is not None:
        out[0x0112] = orientation
    out[0x010F] = "PhoneMaker"
    if gps:
        ifd = out.get_ifd(0x8825)
        ifd[1], ifd[2], ifd[3], ifd[4] = "N", (39.0, 54.0, 15.0), "E", (116.0, 23.0, 30.0)
    return out


SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _with_everything(**params: object) -> bytes:
    return encode(
        scene(480, 320, seed=5),
        "JPEG",
        quality=88,
        exif=exif(1),
        icc_profile=SRGB,
        comment=b"shot at home",
        xmp=b"<x:xmpmeta>secret place</x:xmpmeta>",
        **params,
    )


CLEAN_INPUTS = {
    "baseline-420": lambda: encode(scene(640, 480), "JPEG", quality=85),
    "baseline-444": lambda: encode(scene(641, 479, seed=1), "JPEG", quality=95, subsampling=0),
    "baseline-422": lambda: encode(scene(333, 517, seed=2), "JPEG", quality=90, subsampling=1),
    "progressive": lambda: encode(scene(800, 600, seed=3), "JPEG", quality=90, progressive=True),
    "optimized": lambda: encode(scene(500, 400, seed=4), "JPEG", quality=75, optimize=True),
    "restart-markers": lambda: encode(scene(512, 384, seed=6), "JPEG", restart_marker_blocks=4),
    "all-metadata": _with_everything,
    "all-metadata-progressive": lambda: _with_everything(progressive=True),
    "tiny": lambda: encode(scene(9, 7, seed=7), "JPEG"),
}


@pytest.mark.parametrize("name", list(CLEAN_INPUTS))
def test_clean_jpeg_keeps_its_pixels_exactly(name: str) -> None:
    data = CLEAN_INPUTS[name]()
    result = ok(normalise_image(data, CONFIG))
    assert np.array_equal(decoded(result.jpeg), decoded(data))
    assert set(all_markers(result.jpeg)) <= LOSSLESS_MARKERS | {0xD9}
    assert len(result.jpeg) < len(data)
    assert (result.width, result.height) == Image.open(io.BytesIO(data)).size
    assert (result.source_width, result.source_height) == (result.width, result.height)
    assert Image.open(io.BytesIO(result.jpeg)).mode == "RGB"
    # Recomputable from the stored bytes, and still imagehash's pHash.
    assert result.phash == perceptual_hash(result.jpeg)
    assert result.phash == str(_imagehash(result.jpeg))


def _imagehash(data: bytes) -> imagehash.ImageHash:
    with Image.open(io.BytesIO(data)) as im:
        im.draft("L", (64, 64))
        return imagehash.phash(im)


def test_scans_are_copied_byte_for_byte() -> None:
    data = _with_everything(progressive=True)
    result = ok(normalise_image(data, CONFIG))
    first_sos = data.index(b"\xff\xda")
    assert result.jpeg.endswith(data[first_sos : data.rindex(b"\xff\xd9") + 2])
    # The re-encoding path, by contrast, makes a new (second-generation) stream.
    assert ok(normalise_image(data, REENCODE)).jpeg != result.jpeg


def test_metadata_and_trailing_bytes_are_gone() -> None:
    token = os.urandom(24)
    data = _with_everything() + b"PK\x03\x04" + b"\x14\x00" * 8 + b"payload.exe" + token
    assert {0xE0, 0xE1, 0xE2, 0xFE} <= set(jpeg_segments(data))
    result = ok(normalise_image(data, CONFIG))
    for secret in (b"Exif", b"PhoneMaker", b"shot at home", b"secret place", b"xmpmeta",
                   b"ICC_PROFILE", b"JFIF", b"PK\x03\x04", b"payload.exe", token):
        assert secret not in result.jpeg
    assert result.jpeg.endswith(b"\xff\xd9")
    assert result.orig_bytes == len(data)
    with Image.open(io.BytesIO(result.jpeg)) as im:
        assert not im.getexif() and not {"exif", "icc_profile", "comment", "xmp"} & set(im.info)


def test_mpo_keeps_the_first_picture_losslessly() -> None:
    first, second = scene(300, 300, seed=8), scene(300, 300, seed=9)
    data = encode(first, "MPO", save_all=True, append_images=[second])
    result = ok(normalise_image(data, CONFIG))
    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        want = np.asarray(im.convert("RGB"))
    assert np.array_equal(decoded(result.jpeg), want)
    assert result.jpeg.count(b"\xff\xd8") == 1


# -- EXIF orientation: turned upright by jpegtran where exact, else re-encoded ------------------

needs_jpegtran = pytest.mark.skipif(
    shutil.which("jpegtran") is None,
    reason="jpegtran is not installed (Debian libjpeg-turbo-progs: bash .ci/system-deps)",
)

# EXIF orientation -> the jpegtran transform that puts it back (for the round-trip proof).
_UNDO = {2: ["-flip", "horizontal"], 3: ["-rotate", "180"], 4: ["-flip", "vertical"],
         5: ["-transpose"], 6: ["-rotate", "270"], 7: ["-transverse"], 8: ["-rotate", "90"]}


def _upright(data: bytes, orientation: int, mode: str, scale: int = 1) -> np.ndarray:
    """The input decoded (at 1/scale for scale > 1) in `mode`, then transposed as EXIF says."""
    with Image.open(io.BytesIO(data)) as im:
        if scale > 1:
            im.draft(mode, (im.width // scale, im.height // scale))
        return np.asarray(im.convert(mode).transpose(_TRANSPOSE[orientation]))


def _decoded(data: bytes, mode: str, scale: int = 1) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        if scale > 1:
            im.draft(mode, (im.width // scale, im.height // scale))
        return np.asarray(im.convert(mode))


def _luma(data: bytes, transpose: Image.Transpose | None = None) -> np.ndarray:
    """libjpeg's Y channel as decoded, before any colour conversion or chroma upsampling."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("YCbCr", im.size)
        y = im.getchannel(0)
        return np.asarray(y if transpose is None else y.transpose(transpose))


@needs_jpegtran
@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_orientation_is_applied_losslessly(orientation: int) -> None:
    # 1024x768 4:2:0: whole 16x16 MCUs both ways, so every transform is exact.
    data = encode(scene(1024, 768, seed=10), "JPEG", quality=90, exif=exif(orientation))
    result = ok(normalise_image(data, CONFIG))
    size = (768, 1024) if orientation >= 5 else (1024, 768)
    assert (result.width, result.height) == size == (result.source_width, result.source_height)
    assert set(all_markers(result.jpeg)) <= LOSSLESS_MARKERS | {0xD9}
    for secret in (b"Exif", b"PhoneMaker", b"JFIF"):
        assert secret not in result.jpeg
    # Every coefficient kept: undoing the transform gives back exactly the input's pixels.
    back = subprocess.run(["jpegtran", *_UNDO[orientation]], input=result.jpeg,
                          capture_output=True, check=True).stdout
    assert np.array_equal(decoded(back), decoded(data))
    # Against the input's pixels transposed in numpy. DC only (the 1/8-scale decode the pHash
    # uses): exact. Luma at full scale: exact for the flips; the transposing ones differ by at
    # most 1 because libjpeg's integer IDCT rounds after its column pass, then its row pass,
    # and a transposed block swaps which pass sees which rounding. RGB adds the chroma
    # upsampler, whose rounding bias alternates pixel by pixel and so is not mirror-symmetric:
    # at most 3 levels, on a few percent of pixels.
    assert np.array_equal(_decoded(result.jpeg, "L", 8), _upright(data, orientation, "L", 8))
    luma_error = np.abs(_luma(result.jpeg).astype(int)
                        - _luma(data, _TRANSPOSE[orientation]).astype(int)).max()
    assert luma_error == (0 if orientation <= 4 else 1)
    rgb_error = np.abs(decoded(result.jpeg).astype(int) - _upright(data, orientation, "RGB"))
    assert rgb_error.max() <= 3 and rgb_error.mean() < 0.2
    assert result.phash == perceptual_hash(result.jpeg) == str(_imagehash(result.jpeg))


@needs_jpegtran
@pytest.mark.parametrize(
    "params",
    [{"subsampling": 0}, {"subsampling": 1}, {"progressive": True}, {"restart_marker_blocks": 4}],
    ids=["444", "422", "progressive", "restart-markers"],
)
def test_rotation_of_other_jpeg_layouts(params: dict[str, object]) -> None:
    data = encode(scene(640, 480, seed=22), "JPEG", quality=90, exif=exif(6), **params)
    result = ok(normalise_image(data, CONFIG))
    assert (result.width, result.height) == (480, 640)
    assert set(all_markers(result.jpeg)) <= LOSSLESS_MARKERS | {0xD9}
    back = subprocess.run(["jpegtran", *_UNDO[6]], input=result.jpeg,
                          capture_output=True, check=True).stdout
    assert np.array_equal(decoded(back), decoded(data))


@needs_jpegtran
def test_rotation_that_would_move_partial_edge_blocks_is_reencoded() -> None:
    # 1024x760 4:2:0: the bottom MCU row is partial (760 = 47.5 x 16).
    im = scene(1024, 760, seed=23)
    rotated = encode(im, "JPEG", quality=90, exif=exif(6))  # the bottom edge would move left
    result = ok(normalise_image(rotated, CONFIG))
    assert result.jpeg == ok(normalise_image(rotated, REENCODE)).jpeg
    assert (result.width, result.height) == (760, 1024)
    assert np.abs(decoded(result.jpeg).astype(int) - _upright(rotated, 6, "RGB")).mean() < 3
    # The same size, but transforms that leave the bottom edge where it is: still lossless.
    for orientation in (2, 5):  # mirror left-right; transpose moves no edge block at all
        data = encode(im, "JPEG", quality=90, exif=exif(orientation))
        kept = ok(normalise_image(data, CONFIG))
        assert kept.jpeg != ok(normalise_image(data, REENCODE)).jpeg
        back = subprocess.run(["jpegtran", *_UNDO[orientation]], input=kept.jpeg,
                              capture_output=True, check=True).stdout
        assert np.array_equal(decoded(back), decoded(data))


@needs_jpegtran
def test_perfect_precheck_agrees_with_jpegtran() -> None:
    # The check that spares a process for images -perfect would refuse is jpegtran's own rule.
    for subsampling in (0, 1, 2):
        for size in ((64, 48), (72, 48), (64, 52), (68, 44), (40, 40), (33, 17)):
            data = encode(scene(*size, seed=1), "JPEG", subsampling=subsampling)
            header = read_jpeg_header(data)
            for orientation, undo in _UNDO.items():
                forward = {6: ["-rotate", "90"], 8: ["-rotate", "270"]}.get(orientation, undo)
                run = subprocess.run(["jpegtran", "-perfect", *forward], input=data,
                                     capture_output=True)
                expected = run.returncode == 0
                assert can_orient_losslessly(orientation, *size, header.mcu) == expected, (
                    subsampling, size, orientation)


@needs_jpegtran
def test_pool_workers_rotate_losslessly() -> None:
    # A worker process spawns jpegtran as the caller's own process does: the same bytes.
    datas = [encode(scene(512, 384, seed=s), "JPEG", quality=90, exif=exif(o))
             for s, o in ((28, 6), (29, 3), (30, 8))]
    with DecodePool(CONFIG, workers=1) as pool:
        results = pool.map(datas, 60)
    for data, result in zip(datas, results, strict=True):
        assert ok(result).jpeg == ok(normalise_image(data, CONFIG)).jpeg
        assert ok(result).jpeg != ok(normalise_image(data, REENCODE)).jpeg


def test_missing_jpegtran_falls_back_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no jpegtran on PATH
    monkeypatch.setattr(jpeg_orient, "_missing_logged", False)
    for seed, orientation in ((24, 6), (25, 3)):
        data = encode(scene(1024, 768, seed=seed), "JPEG", quality=90, exif=exif(orientation))
        with caplog.at_level("INFO", logger=jpeg_orient.__name__):
            result = ok(normalise_image(data, CONFIG))
        assert result.jpeg == ok(normalise_image(data, REENCODE)).jpeg
    warnings = [r for r in caplog.records if "jpegtran is not on PATH" in r.getMessage()]
    assert len(warnings) == 1


def _fake_jpegtran(directory, script: str) -> None:
    path = directory / "jpegtran"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


@pytest.mark.parametrize(
    ("script", "config"),
    [
        ("cat >/dev/null; exit 1", CONFIG),  # refuses, as -perfect or -strict would
        ("cat >/dev/null; exec head -c 50000000 /dev/zero", CONFIG),  # far more than the cap
        ("exec sleep 30", CONFIG.model_copy(update={"decode_timeout_s": 0.5})),  # hangs
        ("cat", CONFIG),  # exit 0 but the bytes are not rotated: the size check catches it
    ],
    ids=["fails", "floods", "hangs", "unrotated"],
)
def test_misbehaving_jpegtran_falls_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path, script: str, config: ImageConfig
) -> None:
    _fake_jpegtran(tmp_path, script)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    data = encode(scene(512, 384, seed=26), "JPEG", quality=90, exif=exif(6))
    started = time.monotonic()
    result = ok(normalise_image(data, config))
    assert time.monotonic() - started < 10
    assert result.jpeg == ok(normalise_image(data, REENCODE)).jpeg
    assert (result.width, result.height) == (384, 512)


@needs_jpegtran
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the EXIF it cannot read
def test_jpegtran_only_sees_stripped_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []
    real = jpeg_orient._run_bounded

    def spy(command, data, timeout_s, max_output):  # type: ignore[no-untyped-def]
        seen.append(data)
        return real(command, data, timeout_s, max_output)

    monkeypatch.setattr(jpeg_orient, "_run_bounded", spy)
    base = encode(scene(512, 384, seed=27), "JPEG", quality=90, progressive=True, exif=exif(6),
                  comment=b"shot at home")
    header_end = base.index(b"\xff\xda") + 14
    rng = random.Random(12)
    for _ in range(150):
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(2, header_end)] = rng.randrange(256)
        normalise_image(bytes(data), CONFIG)
    # Truncated and corrupt streams as well: strip refuses the first, jpegtran -strict the second.
    normalise_image(base[: len(base) // 2], CONFIG)
    corrupt = bytearray(base)
    for i in range(header_end + 3000, header_end + 3400):
        corrupt[i] = rng.randrange(256) if corrupt[i - 1] != 0xFF else 0
    outcome = normalise_image(bytes(corrupt), CONFIG)
    if isinstance(outcome, NormalisedImage):
        assert outcome.jpeg == ok(normalise_image(bytes(corrupt), REENCODE)).jpeg
    assert seen
    for data in seen:  # each is already its own strip: markers checked, metadata gone
        assert strip_jpeg(data) == data
        assert not {m for m in all_markers(data) if 0xE0 <= m <= 0xEF or m == 0xFE}


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def test_xmp_orientation_without_exif_is_applied() -> None:
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    data = encode(scene(400, 240, seed=11), "JPEG", xmp=xmp)
    result = ok(normalise_image(data, CONFIG))
    assert (result.width, result.height) == (240, 400)
    assert b"xmpmeta" not in result.jpeg


@pytest.mark.parametrize("orientation", [None, 1, 0, 9])
def test_orientations_pillow_ignores_stay_lossless(orientation: int | None) -> None:
    data = encode(scene(400, 240, seed=12), "JPEG", exif=exif(orientation))
    result = ok(normalise_image(data, CONFIG))
    assert (result.width, result.height) == (400, 240)
    assert np.array_equal(decoded(result.jpeg), decoded(data))


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the EXIF it cannot read
def test_broken_exif_is_left_to_the_full_path() -> None:
    data = encode(scene(300, 200, seed=13), "JPEG")
    bad = b"Exif\x00\x00MM\x00*\xff\xff\xff\xff"  # IFD0 offset far outside the block
    broken = data[:2] + b"\xff\xe1" + struct.pack(">H", 2 + len(bad)) + bad + data[2:]
    assert read_jpeg_header(broken).orientation == -1
    assert ok(normalise_image(broken, CONFIG)).jpeg == ok(normalise_image(broken, REENCODE)).jpeg


def test_non_srgb_profile_is_converted_srgb_dropped() -> None:
    grey = Image.new("RGB", (300, 300), (128, 128, 128))
    linear = encode(grey, "JPEG", quality=95, icc_profile=linear_rgb_icc())
    converted = ok(normalise_image(linear, CONFIG))
    assert np.abs(decoded(converted.jpeg)[150, 150].astype(int) - 188).max() <= 3
    # Opting out of colour management: the profile is ignored, so the scans are kept.
    raw = ok(normalise_image(linear, CONFIG.model_copy(update={"color_manage": False})))
    assert np.array_equal(decoded(raw.jpeg), decoded(linear))
    # An sRGB profile says what an untagged file means anyway: dropped, scans kept.
    tagged = encode(scene(300, 200, seed=14), "JPEG", icc_profile=SRGB)
    kept = ok(normalise_image(tagged, CONFIG))
    assert np.array_equal(decoded(kept.jpeg), decoded(tagged))
    assert b"ICC_PROFILE" not in kept.jpeg


def test_adobe_ycbcr_is_kept_adobe_rgb_is_reencoded() -> None:
    im = scene(320, 240, seed=15)
    rgb_jpeg = encode(im, "JPEG", quality=95, keep_rgb=True)  # Adobe transform 0, ids R, G, B
    parts = read_jpeg_header(rgb_jpeg)
    assert parts.adobe_transform == 0 and parts.component_ids == (0x52, 0x47, 0x42)
    result = ok(normalise_image(rgb_jpeg, CONFIG))
    assert result.jpeg == ok(normalise_image(rgb_jpeg, REENCODE)).jpeg
    assert np.abs(decoded(result.jpeg).astype(int) - decoded(rgb_jpeg).astype(int)).mean() < 5
    # An Adobe segment that says YCbCr (transform 1): dropping it changes nothing.
    ycc = encode(im, "JPEG", quality=90)
    adobe = b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 1)
    tagged = ycc[:2] + b"\xff\xee" + struct.pack(">H", 2 + len(adobe)) + adobe + ycc[2:]
    assert read_jpeg_header(tagged).adobe_transform == 1
    kept = ok(normalise_image(tagged, CONFIG))
    assert np.array_equal(decoded(kept.jpeg), decoded(tagged))
    assert b"Adobe" not in kept.jpeg


def test_rgb_component_ids_are_not_reinterpreted() -> None:
    # JFIF + ids 'R','G','B': libjpeg reads YCbCr because of JFIF; without JFIF it would read RGB.
    data = bytearray(encode(scene(256, 256, seed=16), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    sos = data.index(b"\xff\xda")
    for i, cid in enumerate(b"RGB"):
        data[sof + 10 + 3 * i] = cid
        data[sos + 5 + 2 * i] = cid
    data = bytes(data)
    assert read_jpeg_header(data).component_ids == (0x52, 0x47, 0x42)
    result = ok(normalise_image(data, CONFIG))
    assert result.jpeg == ok(normalise_image(data, REENCODE)).jpeg
    assert np.abs(decoded(result.jpeg).astype(int) - decoded(data).astype(int)).mean() < 2


@pytest.mark.parametrize(
    "make",
    [lambda: scene(300, 200).convert("L"), lambda: scene(300, 200).convert("CMYK")],
    ids=["grey", "cmyk"],
)
def test_grey_and_cmyk_take_the_full_path(make) -> None:
    data = encode(make(), "JPEG")
    result = ok(normalise_image(data, CONFIG))
    assert result.jpeg == ok(normalise_image(data, REENCODE)).jpeg
    assert Image.open(io.BytesIO(result.jpeg)).mode == "RGB"


def test_unusual_frames_are_refused_by_the_rewriter() -> None:
    data = encode(scene(64, 64), "JPEG")
    sof = data.index(b"\xff\xc0")
    twelve_bit = data[: sof + 4] + b"\x0c" + data[sof + 5 :]
    arithmetic = data[: sof + 1] + b"\xc9" + data[sof + 2 :]
    lossless = data[: sof + 1] + b"\xc3" + data[sof + 2 :]
    for bad in (twelve_bit, arithmetic, lossless):
        with pytest.raises(UnsupportedJpeg):
            read_jpeg_header(bad)


# -- hostile and damaged input ------------------------------------------------------------------


def _same_outcome(data: bytes) -> None:
    a, b = normalise_image(data, CONFIG), normalise_image(data, REENCODE)
    if isinstance(b, ImageRejection):
        assert isinstance(a, ImageRejection) and a.reason == b.reason
        assert re.sub(" at 0x[0-9a-f]+", "", a.detail) == re.sub(" at 0x[0-9a-f]+", "", b.detail)
    else:
        assert isinstance(a, NormalisedImage)


def test_truncated_and_garbage_keep_their_rejections() -> None:
    data = encode(scene(640, 480), "JPEG", quality=90)
    truncated = normalise_image(data[: len(data) // 2], CONFIG)
    assert isinstance(truncated, ImageRejection) and truncated.reason == "decode_error"
    assert "truncated" in truncated.detail
    _same_outcome(data[: len(data) // 2])
    _same_outcome(data[:-2])  # EOI missing
    _same_outcome(b"\xff\xd8\xff" + random.Random(7).randbytes(2000))


def test_corrupt_scan_data_is_not_kept_losslessly() -> None:
    data = bytearray(encode(scene(640, 480, seed=17), "JPEG", quality=90))
    start = data.index(b"\xff\xda") + 20
    rng = random.Random(3)
    for i in range(start + 2000, start + 2400):
        data[i] = rng.randrange(256) if data[i - 1] != 0xFF else 0
    data = bytes(data)
    result = normalise_image(data, CONFIG)
    # Whatever the full path makes of it, the lossless path must not have kept the bad stream.
    if isinstance(result, NormalisedImage):
        assert result.jpeg == ok(normalise_image(data, REENCODE)).jpeg
    _same_outcome(data)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the EXIF it cannot read
def test_mutated_headers_never_crash_and_kept_files_decode() -> None:
    base = _with_everything(progressive=True)
    header_end = base.index(b"\xff\xda") + 14
    rng = random.Random(11)
    kept = 0
    for _ in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(2, header_end)] = rng.randrange(256)
        result = normalise_image(bytes(data), CONFIG)
        lossless = LOSSLESS_MARKERS | {0xD9}
        if isinstance(result, NormalisedImage) and set(all_markers(result.jpeg)) <= lossless:
            kept += 1
            with Image.open(io.BytesIO(result.jpeg)) as im:
                im.load()  # a kept stream decodes in full, not just at draft scale
    assert kept > 0


def test_segment_length_past_the_end_is_refused() -> None:
    data = encode(scene(64, 64), "JPEG")
    dqt = data.index(b"\xff\xdb")
    for length in (b"\x00\x00", b"\x00\x01", b"\xff\xff"):
        with pytest.raises(UnsupportedJpeg):
            strip_jpeg(data[: dqt + 2] + length + data[dqt + 4 : dqt + 40])


def test_header_checks_on_the_lossless_path() -> None:
    config = ImageConfig()
    small = encode(scene(199, 400), "JPEG")
    result = normalise_image(small, config, apply_checks=True)
    assert isinstance(result, ImageRejection) and result.reason == "too_small"
    big = encode(scene(600, 500), "JPEG")
    capped = normalise_image(big, config.model_copy(update={"max_pixels": 299_999}))
    assert isinstance(capped, ImageRejection) and capped.reason == "too_many_pixels"


# -- resize modes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "source", "expected"),
    [
        ("keep_ratio_largest", (1600, 1000), (512, 320)),
        ("keep_ratio_largest", (1000, 1600), (320, 512)),
        ("keep_ratio", (1600, 1000), (819, 512)),
        ("keep_ratio", (1000, 1600), (512, 819)),
        ("center_crop", (1600, 1000), (512, 512)),
        ("border", (1600, 1000), (512, 512)),
    ],
)
def test_resize_modes(mode: str, source: tuple[int, int], expected: tuple[int, int]) -> None:
    im = scene(*source, seed=18)
    config = CONFIG.model_copy(update={"max_side": 512, "resize_mode": mode})
    result = ok(normalise_image(encode(im, "JPEG", quality=92), config))
    assert (result.width, result.height) == expected
    assert (result.source_width, result.source_height) == source
    out = decoded(result.jpeg).astype(int)
    if mode == "center_crop":
        scaled = im.resize((819, 512), Image.Resampling.BOX)
        reference = np.asarray(scaled.crop((153, 0, 665, 512)), dtype=int)
    elif mode == "border":
        inner = np.asarray(im.resize((512, 320), Image.Resampling.BOX), dtype=int)
        assert (out[:88] > 245).all() and (out[-88:] > 245).all()  # white bands above and below
        out, reference = out[96:416], inner
    else:
        reference = np.asarray(im.resize(expected, Image.Resampling.BOX), dtype=int)
    assert np.abs(out - reference).mean() < 4


@pytest.mark.parametrize("mode", ["keep_ratio_largest", "keep_ratio", "center_crop", "border"])
def test_images_within_max_side_stay_lossless(mode: str) -> None:
    data = encode(scene(600, 400, seed=19), "JPEG", exif=exif(1))
    side = 600 if mode in ("keep_ratio_largest", "border") else 400
    config = CONFIG.model_copy(update={"max_side": side, "resize_mode": mode})
    result = ok(normalise_image(data, config))
    assert (result.width, result.height) == (600, 400)
    assert np.array_equal(decoded(result.jpeg), decoded(data))


def test_resize_longest_is_max_side_keep_ratio_largest() -> None:
    data = encode(scene(1200, 900, seed=20), "JPEG", exif=exif(6))
    old = ok(normalise_image(data, CONFIG.model_copy(update={"resize_longest": 400})))
    new = ok(normalise_image(data, CONFIG.model_copy(update={"max_side": 400})))
    assert old.jpeg == new.jpeg and (old.width, old.height) == (300, 400)


def test_resize_config_is_validated() -> None:
    with pytest.raises(ValidationError, match="max_side"):
        ImageConfig(max_side=512, resize_longest=512)
    with pytest.raises(ValidationError, match="below min_side"):
        ImageConfig(max_side=100)
    with pytest.raises(ValidationError):
        ImageConfig(max_side=512, resize_mode="stretch")  # type: ignore[arg-type]
    center = ImageConfig(max_side=512, resize_mode="center_crop")
    assert center.resize_target() == (512, "center_crop")
    assert ImageConfig(resize_longest=300).resize_target() == (300, "keep_ratio_largest")


def test_segments_between_progressive_scans() -> None:
    data = encode(scene(400, 300, seed=21), "JPEG", progressive=True)
    second_scan = data.index(b"\xff\xda", data.index(b"\xff\xda") + 2)
    # A comment and a GPS-bearing EXIF between scans: dropped; the DHT before the scan: kept.
    com = b"\xff\xfe" + struct.pack(">H", 2 + 12) + b"between scan"
    exif_bytes = exif(6).tobytes()
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(exif_bytes)) + b"Exif\x00\x00" + exif_bytes
    mixed = data[:second_scan] + com + app1 + data[second_scan:]
    result = ok(normalise_image(mixed, CONFIG))
    assert np.array_equal(decoded(result.jpeg), decoded(data))
    assert b"between scan" not in result.jpeg and b"PhoneMaker" not in result.jpeg
    # Neither Pillow nor libjpeg reads an orientation after the first scan: not rotated.
    assert (result.width, result.height) == (400, 300)
    assert result.jpeg == ok(normalise_image(data, CONFIG)).jpeg
