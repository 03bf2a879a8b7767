"""How fast a SyntheticWeb serves: python -m taisu_etl.synthweb.loadtest [--processes N].

A plain aiohttp client (keep-alive, `--concurrency` connections, bodies read in full) fetches
every image `--rounds` times from a fresh server and prints requests per second. The client is
one process; with --processes 0 it shares that process (and its GIL) with the server thread, so
that figure is a lower bound of what the server alone can do.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from taisu_etl.synthweb.scenes import make_pairs
from taisu_etl.synthweb.server import SyntheticWeb


@dataclass(frozen=True)
class LoadResult:
    requests: int
    failures: int
    bytes: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


async def fetch_all(urls: Sequence[str], concurrency: int = 64) -> LoadResult:
    """GET every URL once with `concurrency` workers over keep-alive connections."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    counts = {"failures": 0, "bytes": 0}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                url = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            async with session.get(url, allow_redirects=False) as resp:
                body = await resp.read()
                if resp.status != 200:
                    counts["failures"] += 1
                counts["bytes"] += len(body)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return LoadResult(len(urls), counts["failures"], counts["bytes"], seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taisu_etl.synthweb.loadtest", description=__doc__)
    parser.add_argument("--pairs", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--processes", type=int, default=0, help="serving processes (0: a thread of this process)")
    parser.add_argument("--render-workers", type=int, default=1)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    pairs = make_pairs(args.pairs, seed=0)
    made = time.perf_counter() - t0
    with SyntheticWeb(pairs, processes=args.processes, render_workers=args.render_workers) as web:
        print(f"{len(pairs)} pairs made in {made:.2f} s, rendered in {web.render_seconds:.2f} s "
              f"({args.render_workers} worker(s)); serving at {web.base_url} with "
              f"{args.processes or 'a thread, no'} process(es)")
        urls = [web.url_for(p.id) for p in pairs] * args.rounds
        asyncio.run(fetch_all(urls[: min(len(urls), 1000)], args.concurrency))  # warm-up
        result = asyncio.run(fetch_all(urls, args.concurrency))
        served = web.total_hits()
    print(
        f"{result.requests} requests, {result.failures} failures, {result.bytes / 1e6:.1f} MB in "
        f"{result.seconds:.2f} s: {result.rate:.0f} req/s (concurrency {args.concurrency}); server counted {served}"
    )
    return 0 if result.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
