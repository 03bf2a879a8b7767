"""A realistic photo set for bench/fetch.py --photos: seeded, generated here, cached on disk.

The fetch benchmark's default images are 256x256 drawings of ~6 KB; web photos are not. These are
1024x768 and 1600x1200 scenes with the statistics of a camera picture: smooth colour regions
(sky, walls), mid-frequency texture (foliage, gravel) and sensor grain, JPEG quality 85-95, a
quarter of them progressive, a third with EXIF (camera, date, GPS position and an Orientation of
1, 3, 6 or 8), 100-400 KB each. Every photo has pixels of its own (a crop at its own offset of
one of 48 larger canvases, its own grain and colour cast), so neither tool can skip work on a
duplicate: taisu-etl stores by content hash, and two equal images would be one PUT.

    photos = photo_set(5000, seed=7)   # [Path], cached under ~/.cache/taisu-bench (or $TAISU_BENCH_CACHE)

Generation is deterministic (numpy's PCG64 and random.Random from the seed, Pillow's encoder) and
takes ~70 ms of CPU per photo, spread over the cores (5,000 in 6 minutes on two busy cores);
photo i depends on the seed and i alone, so a larger set reuses a smaller one's files; the cache
folder is named by the seed and the generator's version.
"""

from __future__ import annotations

import io
import os
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

VERSION = 1
SIZES = ((1024, 768), (1600, 1200))
MIN_BYTES, MAX_BYTES = 100 << 10, 400 << 10
_CANVASES = 48
_CANVAS = (1856, 1392)  # room for a 1600x1200 crop at 256 x 192 offsets
_GRAIN_BANK = (1456, 1856)  # rows, columns


def cache_dir() -> Path:
    return Path(os.environ.get("TAISU_BENCH_CACHE") or Path.home() / ".cache" / "taisu-bench")


def _canvas(seed: int, k: int) -> np.ndarray:
    """One scene: a few large colour regions, a horizon-like gradient and mid-frequency texture."""
    rng = np.random.default_rng([seed, k])
    w, h = _CANVAS
    low = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    mid = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    fine = Image.fromarray(rng.integers(0, 256, (232, 310), dtype=np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
    sky = np.linspace(40, -40, h, dtype=np.float32)[:, None, None] * rng.uniform(0.3, 1.0)
    a = (np.asarray(low, np.float32) * 0.8 + (np.asarray(mid, np.float32) - 128) * 0.35
         + (np.asarray(fine, np.float32)[:, :, None] - 128) * 0.12 + sky)
    return np.clip(a, 0, 255).astype(np.int16)


def _exif(rng: random.Random) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = rng.choice((1, 3, 6, 8))
    exif[ExifTags.Base.Make] = rng.choice(("Canon", "NIKON CORPORATION", "Xiaomi", "HUAWEI"))
    exif[ExifTags.Base.Model] = rng.choice(("EOS 5D Mark IV", "D750", "MI 11", "P40 Pro"))
    exif[ExifTags.Base.DateTime] = f"20{rng.randint(15, 24)}:{rng.randint(1, 12):02d}:{rng.randint(1, 28):02d} 12:{rng.randint(0, 59):02d}:00"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    lat, lon = rng.uniform(18, 50), rng.uniform(75, 134)

    def dms(x: float) -> tuple[IFDRational, IFDRational, IFDRational]:
        d, m = int(x), int(x * 60) % 60
        return IFDRational(d), IFDRational(m), IFDRational(round((x * 3600) % 60 * 100), 100)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = dms(lat)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = dms(lon)
    return exif.tobytes()


def _make(args: tuple[int, int, list[int], Path]) -> list[tuple[int, int]]:
    """Render photos `indices` into `folder`; returns (index, bytes) for each."""
    seed, _, indices, folder = args
    canvases: dict[int, np.ndarray] = {}
    grain_rng = np.random.default_rng([seed, 10_000])
    bank = grain_rng.integers(-8, 9, _GRAIN_BANK, dtype=np.int16)[:, :, None]
    out = []
    for i in indices:
        rng = random.Random(f"taisu-bench-photo:{seed}:{i}")
        k = rng.randrange(_CANVASES)
        if k not in canvases:
            canvases[k] = _canvas(seed, k)
        w, h = SIZES[0] if rng.random() < 0.6 else SIZES[1]
        x, y = rng.randrange(_CANVAS[0] - w), rng.randrange(_CANVAS[1] - h)
        gx, gy = rng.randrange(_GRAIN_BANK[1] - w), rng.randrange(_GRAIN_BANK[0] - h)
        cast = np.array([rng.randint(-12, 12) for _ in range(3)], np.int16)
        quality = rng.randint(85, 95)
        progressive = rng.random() < 0.25
        exif = _exif(rng) if rng.random() < 1 / 3 else b""
        grain = rng.uniform(0.3, 1.0)
        data = b""
        for _ in range(4):  # sized into [MIN_BYTES, MAX_BYTES] by the grain, which costs the most bytes
            pixels = canvases[k][y:y + h, x:x + w] + cast + (bank[gy:gy + h, gx:gx + w] * grain).astype(np.int16)
            img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=quality, progressive=progressive, exif=exif, optimize=False)
            data = buf.getvalue()
            if len(data) > MAX_BYTES:
                grain *= 0.5
            elif len(data) < MIN_BYTES:
                grain = min(grain * 2 + 0.3, 2.0)
            else:
                break
        tmp = folder / f".photo-{seed}-{i:06d}.tmp"
        tmp.write_bytes(data)
        tmp.replace(folder / f"photo-{seed}-{i:06d}.jpg")  # whole or absent, if generation is cut short
        out.append((i, len(data)))
    return out


def photo_set(n: int, seed: int = 7, workers: int | None = None) -> list[Path]:
    """`n` photos (paths, in index order), generated once and cached."""
    folder = cache_dir() / f"photos-v{VERSION}-seed{seed}"
    paths = [folder / f"photo-{seed}-{i:06d}.jpg" for i in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    todo = [i for i, p in enumerate(paths) if not p.exists()]  # photo i depends on (seed, i) alone
    if not todo:
        return paths
    workers = workers or max(1, len(os.sched_getaffinity(0)))
    # Grouped by canvas so each process renders few canvases.
    groups: dict[int, list[int]] = {}
    for i in todo:
        groups.setdefault(random.Random(f"taisu-bench-photo:{seed}:{i}").randrange(_CANVASES), []).append(i)
    batches = [(seed, k, idx, folder) for k, idx in sorted(groups.items())]
    with ProcessPoolExecutor(workers) as pool:
        for _ in pool.map(_make, batches):
            pass
    return paths


def describe(paths: list[Path]) -> str:
    """Sizes, byte range, progressive and EXIF counts of a set, read back from the files."""
    sizes: dict[tuple[int, int], int] = {}
    progressive = with_gps = rotated = 0
    lengths = []
    for p in paths:
        with Image.open(p) as im:
            sizes[im.size] = sizes.get(im.size, 0) + 1
            progressive += bool(im.info.get("progressive") or im.info.get("progression"))
            exif = im.getexif()
            with_gps += bool(exif.get_ifd(ExifTags.IFD.GPSInfo))
            rotated += exif.get(ExifTags.Base.Orientation, 1) != 1
        lengths.append(p.stat().st_size)
    lengths.sort()
    return (", ".join(f"{w}x{h}: {c}" for (w, h), c in sorted(sizes.items()))
            + f"; {lengths[0] >> 10}-{lengths[-1] >> 10} KB (median {lengths[len(lengths) // 2] >> 10} KB, "
            f"{sum(lengths) / 1e6:.0f} MB); {progressive} progressive, {with_gps} with EXIF GPS, "
            f"{rotated} with an Orientation other than 1")


if __name__ == "__main__":
    import sys
    import time
    t0 = time.perf_counter()
    got = photo_set(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
    print(f"{len(got)} photos in {time.perf_counter() - t0:.1f} s: {describe(got)}")
