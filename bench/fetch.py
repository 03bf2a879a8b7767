"""Fetch throughput: taisu-etl's fetch stage against img2dataset on the same loopback URL list.

One run, side by side (a ratio, since these machines are shared and noisy):
- a synthetic web (its own process) serves N meaningful 256x256 JPEGs on 127.0.0.1;
- img2dataset (its own venv, `bash bench/peer_env.sh`), resize_mode=no, P processes x T threads;
- taisu-etl's fetch stage with the same concurrency budget (P x T requests in flight), doing its
  full job: guarded fetch, decode + re-encode + pHash in a process pool, content-addressed PUT to an
  S3 server (moto, its own process, over HTTP), and one reason-coded event per sample in Postgres.
Only fetching is timed; ingest and the text filter run before, untimed.

    bash bench/peer_env.sh && python bench/fetch.py --images 10000 --processes 1 --threads 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from img2dataset_peer import run_img2dataset  # noqa: E402
from ledger import _reset_database  # noqa: E402

from taisu_etl.db.engine import make_engine  # noqa: E402
from taisu_etl.db.ledger import Ledger  # noqa: E402
from taisu_etl.db.migrate import upgrade  # noqa: E402
from taisu_etl.fetch.settings import FetchSettings  # noqa: E402
from taisu_etl.images import ImageConfig  # noqa: E402
from taisu_etl.stages.fetch import fetch_shard  # noqa: E402
from taisu_etl.stages.ingest import ingest_file  # noqa: E402
from taisu_etl.stages.text_filter import filter_shard  # noqa: E402
from taisu_etl.storage import LocalObjectStore, S3ObjectStore  # noqa: E402
from taisu_etl.synthweb import SyntheticWeb, make_pairs  # noqa: E402
from taisu_etl.text import TextFilter  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server in its own process on 127.0.0.1 (the CI stand-in for MinIO)."""
    port = _free_port()
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto_server did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--processes", type=int, default=1, help="img2dataset processes")
    ap.add_argument("--threads", type=int, default=64, help="img2dataset threads per process")
    ap.add_argument("--decode-workers", type=int, default=2, help="taisu-etl decode processes")
    ap.add_argument("--db-url", default=os.environ.get("TAISU_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/taisu_bench_fetch"))
    args = ap.parse_args()
    budget = args.processes * args.threads

    tmp = Path(tempfile.mkdtemp(prefix="taisu-bench-fetch-"))
    s3, endpoint = start_s3()
    try:
        pairs = make_pairs(args.images, seed=42)
        t0 = time.perf_counter()
        with SyntheticWeb(pairs, processes=1) as web:
            print(f"synthetic web: {args.images:,} images at {web.base_url} (rendered in {time.perf_counter() - t0:.1f} s)")
            urls = web.write_url_list(tmp / "urls.csv", pairs).urls

            peer = run_img2dataset(urls, tmp / "img2dataset", processes=args.processes, threads=args.threads)
            peer_re = run_img2dataset(urls, tmp / "img2dataset-reencode", processes=args.processes, threads=args.threads,
                                      reencode="default")

            _reset_database(args.db_url)
            upgrade(make_engine(args.db_url))
            ledger = Ledger.open(args.db_url, shards=1, recipe_version="bench")
            ingest_file(ledger, urls)
            filter_shard(ledger, TextFilter())
            store = S3ObjectStore(endpoint, "bench", "bench-secret", "taisu-bench", create_bucket=True)
            store.check()
            settings = FetchSettings(allow_loopback=(web.netloc,), concurrency=budget, per_host_concurrency=budget,
                                     per_host_rate=None, batch_size=2000)
            ours = fetch_shard(ledger, store, settings, ImageConfig(), shard=0, decode_workers=args.decode_workers)
            stored = ours.states.get("fetched", 0)
            # The same run with a local object store: shows what the S3 stand-in costs.
            _reset_database(args.db_url)
            upgrade(make_engine(args.db_url))
            ledger = Ledger.open(args.db_url, shards=1, recipe_version="bench")
            ingest_file(ledger, urls)
            filter_shard(ledger, TextFilter())
            local = fetch_shard(ledger, LocalObjectStore(tmp / "objects"), settings, ImageConfig(), shard=0, decode_workers=args.decode_workers)
    finally:
        s3.terminate()
        shutil.rmtree(tmp, ignore_errors=True)

    ours_rate = stored / ours.seconds
    print(f"fetch benchmark, {args.images:,} loopback images, concurrency budget {budget} ({args.processes} x {args.threads})")
    for label, run in (("img2dataset, bytes as downloaded", peer), ("img2dataset, decode + JPEG re-encode", peer_re)):
        print(f"  {label:<38}{run['samples']:>7,} ok  {run['seconds']:6.1f} s  {run['samples_per_s']:8,.0f} samples/s "
              f"(download phase alone: {run['samples_per_s_in_shards']:,.0f}/s)")
    print(f"  {'taisu-etl fetch stage (full work)':<38}{stored:>7,} ok  {ours.seconds:6.1f} s  {ours_rate:8,.0f} samples/s")
    local_rate = local.states.get("fetched", 0) / local.seconds
    print(f"  {'  the same, local-folder object store':<38}{local.states.get('fetched', 0):>7,} ok  {local.seconds:6.1f} s  {local_rate:8,.0f} samples/s "
          f"(ratio {local_rate / peer['samples_per_s']:.2f} / {local_rate / peer_re['samples_per_s']:.2f})")
    print(f"  ratio taisu-etl / img2dataset (wall, start-up included on both sides): {ours_rate / peer['samples_per_s']:.2f} "
          f"against its cheapest mode, {ours_rate / peer_re['samples_per_s']:.2f} against decode + re-encode (target >= 1.0, aim 2.0)")
    print(f"  ratio against img2dataset's download phase alone (its start-up excluded, ours included): "
          f"{ours_rate / peer['samples_per_s_in_shards']:.2f} / {ours_rate / peer_re['samples_per_s_in_shards']:.2f}")
    print(f"  taisu-etl did per image: guarded fetch, decode + JPEG re-encode + pHash, S3 PUT to {endpoint} (moto), "
          "Postgres ledger event; failures: " + (", ".join(f"{r} {n}" for r, n in ours.reasons.items() if r != "ok") or "none"))
    print(f"reproduce: bash bench/peer_env.sh && python bench/fetch.py --images {args.images} --processes {args.processes} --threads {args.threads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
