"""perceptual_hash against the Pillow-only decode it replaced, side by side on the same bytes.

Both hash the stage's own stored JPEGs (synthetic scenes, normalised as the fetch stage does) and
must agree on every hash; the figure is CPU microseconds per image (this process's CPU time, best
of the rounds, the two ways alternating so that other load on the machine hits both alike).

    python bench/phash.py --images 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

from taisu_etl.images import ImageConfig, normalise_image, perceptual_hash
from taisu_etl.images.decode import _phash_hex
from taisu_etl.images.results import NormalisedImage
from taisu_etl.synthweb import make_pairs


def pillow_only_phash(jpeg: bytes) -> str:
    """The previous perceptual_hash: Pillow's draft("L", (64, 64)) decode, then the same steps."""
    with Image.open(io.BytesIO(jpeg), formats=["JPEG"]) as im:
        im.draft("L", (64, 64))
        grey = im if im.mode == "L" else im.convert("L")
        small = grey.resize((32, 32), Image.Resampling.LANCZOS)
    return _phash_hex(np.asarray(small))


def cpu_us_per_image(fn, datas: list[bytes]) -> float:
    t0 = time.process_time()
    for data in datas:
        fn(data)
    return (time.process_time() - t0) / len(datas) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    config = ImageConfig()
    stored = []
    for pair in make_pairs(args.images, seed=42):
        result = normalise_image(pair.jpeg(), config)
        if isinstance(result, NormalisedImage):
            stored.append(result.jpeg)
    mismatches = sum(perceptual_hash(d) != pillow_only_phash(d) for d in stored)
    if mismatches:
        raise SystemExit(f"{mismatches} of {len(stored)} hashes differ between the two ways")
    best = {"pillow only": float("inf"), "perceptual_hash": float("inf")}
    for _ in range(args.rounds):
        best["pillow only"] = min(best["pillow only"], cpu_us_per_image(pillow_only_phash, stored))
        best["perceptual_hash"] = min(best["perceptual_hash"], cpu_us_per_image(perceptual_hash, stored))
    print(f"pHash of {len(stored):,} stored 256x256 JPEGs, all {len(stored):,} hashes equal; CPU per image, best of {args.rounds}:")
    for name, us in best.items():
        print(f"  {name:<16} {us:7.1f} us")
    print(f"  ratio {best['pillow only'] / best['perceptual_hash']:.2f}x")
    print(f"reproduce: python bench/phash.py --images {args.images} --rounds {args.rounds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
