"""CPU per image of normalise_image, lossless JPEG path against decode + re-encode.

    .venv/bin/python bench/normalise.py [--rounds 5]

Realistic web photos, made here: 1024x768 and 1600x1200 scenes with fine texture (noise on
soft shapes, so the entropy-coded data is as dense as a camera photo's), quality 85-95, some
progressive, some with EXIF (GPS, orientation 1 or 6), an sRGB ICC profile, XMP and a comment.
Prints ms/image (CPU of this process and its jpegtran children) per input kind and for the whole mix.
"""

from __future__ import annotations

import sys
from pathlib import Path

import argparse
import resource

import numpy as np
from PIL import Image, ImageCms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.images.support: the test image makers

from taisu_etl.images import ImageConfig, NormalisedImage, normalise_image
from tests.images.support import encode, scene

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.asarray(scene(width, height, seed=seed), dtype=float)
    texture = rng.normal(0, 10, (height, width, 1)) + rng.normal(0, 4, (height, width, 3))
    return Image.fromarray(np.clip(base + texture, 0, 255).astype(np.uint8))


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "PhoneMaker"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (39.0, 54.0, 15.0), "E", (116.0, 23.0, 30.0)
    return exif


def corpus() -> dict[str, list[bytes]]:
    kinds: dict[str, list[bytes]] = {}
    for i, (w, h) in enumerate([(1024, 768), (1600, 1200)] * 3):
        im = _photo(w, h, seed=i)
        q = (85, 90, 95)[i % 3]
        kinds.setdefault("baseline", []).append(encode(im, "JPEG", quality=q))
        kinds.setdefault("progressive", []).append(encode(im, "JPEG", quality=q, progressive=True))
        kinds.setdefault("exif-gps-icc-xmp", []).append(
            encode(im, "JPEG", quality=q, exif=_exif(1), icc_profile=SRGB, xmp=b"<x:xmpmeta/>",
                   comment=b"shot at home")
        )
        kinds.setdefault("orientation-6", []).append(encode(im, "JPEG", quality=q, exif=_exif(6)))
        # Smoother, smaller: the 50-150 KB end of web images.
        kinds.setdefault("smooth-800x600", []).append(encode(scene(800, 600, seed=i), "JPEG", quality=q))
    return kinds


def _cpu_ms(datas: list[bytes], config: ImageConfig, rounds: int) -> float:
    for data in datas[:2]:
        normalise_image(data, config)  # warm the imports and the transform cache
    start = _cpu_s()
    for _ in range(rounds):
        for data in datas:
            assert isinstance(normalise_image(data, config), NormalisedImage)
    return (_cpu_s() - start) * 1000 / (rounds * len(datas))


def _cpu_s() -> float:
    """CPU of this process and its waited-for children: a rotated JPEG's jpegtran runs as a child."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    new = ImageConfig()
    old = ImageConfig(lossless_jpeg=False)
    kinds = corpus()
    mix = [d for datas in kinds.values() for d in datas]
    print(f"{'input':<20} {'n':>3} {'KB':>6} {'re-encode ms':>13} {'lossless ms':>12} "
          f"{'stored KB re-encode':>20} {'lossless':>9}")
    for name, datas in [*kinds.items(), ("mix", mix)]:
        kb = sum(map(len, datas)) / len(datas) / 1024
        ms_old, ms_new = _cpu_ms(datas, old, args.rounds), _cpu_ms(datas, new, args.rounds)
        kb_old, kb_new = (
            sum(len(normalise_image(d, c).jpeg) for d in datas) / len(datas) / 1024  # type: ignore[union-attr]
            for c in (old, new)
        )
        print(f"{name:<20} {len(datas):>3} {kb:>6.0f} {ms_old:>13.2f} {ms_new:>12.2f} "
              f"{kb_old:>20.0f} {kb_new:>9.0f}")
    print("resize of the mix (always decode + re-encode), ms/image:")
    for mode in ("keep_ratio_largest", "keep_ratio", "center_crop", "border"):
        for side in (256, 512):
            config = ImageConfig(max_side=side, resize_mode=mode)
            print(f"  {mode:<20} max_side={side:<5} {_cpu_ms(mix, config, args.rounds):>8.2f}")


if __name__ == "__main__":
    main()
