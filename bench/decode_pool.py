"""DecodePool hand-off cost: a dispatcher thread against the caller's event loop, side by side.

The fetch stage awaits `pool.decode()` from 64 coroutines at once. Both ways decode the same
256x256 synthetic JPEGs in the same 2 worker processes; what differs is who reads the workers'
pipes and resolves the callers' futures. Printed: CPU per image of the calling process (the
hand-off, the thing that differs) and of the workers (the decoding itself), and images/s.
Runs alternate between the two ways, since these machines are shared and noisy.

    python bench/decode_pool.py --images 4000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proc_cpu import _snapshot  # noqa: E402

from taisu_etl.images import DecodePool, ImageConfig, normalise_image  # noqa: E402
from taisu_etl.synthweb import make_pairs  # noqa: E402
from taisu_etl.synthweb.scenes import render_jpegs  # noqa: E402


def one_run(images: list[bytes], config: ImageConfig, *, on_loop: bool, concurrency: int) -> tuple[float, float, float]:
    """(caller CPU ms per image, workers' CPU ms per image, images/s) for one way."""
    fn = functools.partial(normalise_image, apply_checks=True)

    async def main() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop() if on_loop else None
        with DecodePool(config, workers=2, fn=fn, loop=loop) as pool:
            await asyncio.gather(*(pool.decode(d) for d in images[:100]))  # workers warm
            workers = [w.process.pid for w in pool._workers]
            before = _snapshot()
            me0 = time.process_time()
            t0 = time.perf_counter()
            sem = asyncio.Semaphore(concurrency)

            async def one(data: bytes) -> None:
                async with sem:
                    await pool.decode(data)

            await asyncio.gather(*(one(d) for d in images))
            seconds = time.perf_counter() - t0
            me = time.process_time() - me0
            after = _snapshot()
        # Workers are never recycled here (fewer images than max_tasks_per_worker).
        worker_cpu = sum(after[p][2] - before[p][2] for p in workers if p in after and p in before)
        n = len(images)
        return me / n * 1000, worker_cpu / n * 1000, n / seconds

    return asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    images = list(render_jpegs(make_pairs(args.images, seed=42)).values())
    config = ImageConfig()
    print(f"{len(images):,} synthetic 256x256 JPEGs, 2 decode workers, {args.concurrency} awaiting coroutines")
    results: dict[str, list[tuple[float, float, float]]] = {"thread": [], "loop": []}
    for r in range(args.rounds):
        for way in ("thread", "loop"):
            results[way].append(one_run(images, config, on_loop=way == "loop", concurrency=args.concurrency))
            caller, workers, rate = results[way][-1]
            print(f"  round {r + 1}, {way:6}: caller {caller:.3f} ms/img, workers {workers:.3f} ms/img, {rate:,.0f} img/s")
    for way, runs in results.items():
        caller = sorted(c for c, _, _ in runs)[len(runs) // 2]
        rate = sorted(x for _, _, x in runs)[len(runs) // 2]
        print(f"median, {way:6}: caller {caller:.3f} ms per image, {rate:,.0f} images/s")
    print(f"reproduce: python bench/decode_pool.py --images {args.images} --rounds {args.rounds} "
          f"--concurrency {args.concurrency}   (pid {os.getpid()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
