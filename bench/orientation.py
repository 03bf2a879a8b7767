"""Cost of an EXIF-rotated JPEG: lossless jpegtran rotation against decode + re-encode.

    .venv/bin/python bench/orientation.py [--rounds 20]

The same textured 1024x768 and 1600x1200 photos as bench/normalise.py (quality 90, EXIF
orientation 6, baseline and progressive). CPU counts this process and its waited-for children,
so jpegtran's own work is in the lossless figure; wall time includes the process start. Prints
the median per image, the stored size, and what spawning a do-nothing jpegtran costs alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import argparse
import resource
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.images.support: the test image makers

from taisu_etl.images import ImageConfig, NormalisedImage, normalise_image
from normalise import _exif, _photo
from tests.images.support import encode


def _cpu_s() -> float:
    """User + system CPU of this process and its waited-for children (microsecond resolution)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _median_ms(run: Callable[[], object], rounds: int) -> tuple[float, float]:
    """(wall, CPU) medians in ms over `rounds` calls, after one warm-up call."""
    run()
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), _cpu_s()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(_cpu_s() - cpu)
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    program = shutil.which("jpegtran")
    if program is None:
        raise SystemExit("jpegtran is not installed: bash .ci/system-deps (libjpeg-turbo-progs)")
    lossless, reencode = ImageConfig(), ImageConfig(lossless_jpeg=False)
    spawn = _median_ms(
        lambda: subprocess.run([program, "-version"], capture_output=True), args.rounds
    )
    print(f"jpegtran -version (process start only): {spawn[0]:.1f} ms wall, {spawn[1]:.1f} ms CPU")
    print(f"{'input':<24} {'KB':>5} {'re-encode wall/CPU ms':>22} {'lossless wall/CPU ms':>21} "
          f"{'stored KB re-encode':>20} {'lossless':>9}")
    for progressive in (False, True):
        for seed, (w, h) in enumerate([(1024, 768), (1600, 1200)]):
            data = encode(_photo(w, h, seed), "JPEG", quality=90, exif=_exif(6),
                          progressive=progressive)
            kept, made = normalise_image(data, lossless), normalise_image(data, reencode)
            assert isinstance(kept, NormalisedImage) and isinstance(made, NormalisedImage)
            assert b"PhoneMaker" not in kept.jpeg and (kept.width, kept.height) == (h, w)
            old = _median_ms(lambda: normalise_image(data, reencode), args.rounds)
            new = _median_ms(lambda: normalise_image(data, lossless), args.rounds)
            name = f"{w}x{h} {'progressive' if progressive else 'baseline'}"
            print(f"{name:<24} {len(data) / 1024:>5.0f} {old[0]:>11.1f} / {old[1]:<8.1f} "
                  f"{new[0]:>10.1f} / {new[1]:<8.1f} {len(made.jpeg) / 1024:>20.0f} "
                  f"{len(kept.jpeg) / 1024:>9.0f}")


if __name__ == "__main__":
    main()
