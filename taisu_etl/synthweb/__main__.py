"""python -m taisu_etl.synthweb --pairs 200 --out DIR: write a URL list and serve it until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from taisu_etl.synthweb.scenes import SPLITS, make_pairs
from taisu_etl.synthweb.server import HOSTILE_CASES, SyntheticWeb

_EXT = {"csv": "csv", "tsv": "tsv", "jsonl": "jsonl"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taisu_etl.synthweb", description=__doc__)
    parser.add_argument("--pairs", type=int, default=200, help="number of image-caption pairs (default 200)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the URL list and its manifest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--mismatch-rate", type=float, default=0.1, help="share of pairs given another scene's caption")
    parser.add_argument("--format", choices=tuple(_EXT), default="csv")
    parser.add_argument("--hostile", action="store_true", help="append one row per hostile case to the list")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    parser.add_argument("--processes", type=int, default=0, help="serving processes (default 0: a thread)")
    args = parser.parse_args(argv)

    pairs = make_pairs(args.pairs, seed=args.seed, mismatch_rate=args.mismatch_rate, split=args.split)
    web = SyntheticWeb(pairs, port=args.port, processes=args.processes)
    stop = threading.Event()
    # SIGTERM as well as Ctrl-C, so a demo script can end the server cleanly.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with web:
        args.out.mkdir(parents=True, exist_ok=True)
        hostile = [c.name for c in HOSTILE_CASES] if args.hostile else []
        written = web.write_url_list(args.out / f"urls.{_EXT[args.format]}", fmt=args.format, hostile=hostile)
        print(f"serving {len(pairs)} pairs at {web.base_url} (rendered in {web.render_seconds:.1f} s)", flush=True)
        print(f"url list: {written.urls}", flush=True)
        print(f"manifest: {written.manifest}", flush=True)
        print("Ctrl-C to stop", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
