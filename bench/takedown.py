"""Takedown benchmark on a 1M-sample Postgres ledger (targets from issue 17):

- one request by URL, end to end (file, match, take down, delete the object, verify), no release
  holds the sample: under 1 s;
- 10,000 requests imported from one CSV and processed as one batch: under 60 s;
- patching one shard of a 100,000-sample release: MB/s close to the release writer's own MB/s.

Set-up (timed apart, kept between runs unless --rebuild): the ledger is written with COPY: 1M
samples with URLs, hashes, perceptual hashes and their index bands, three events each (ingest,
fetch, score); the first `--release-samples` are accepted and released (real 32x32 JPEGs in a
local object store, each distinct), the next `--bulk + 1` wait in image_ok with stored images (the takedown
targets), the rest wait in image_ok without objects.

    .venv/bin/python bench/takedown.py                                   # 1M samples, 100k release, 10k bulk
    .venv/bin/python bench/takedown.py --samples 200000 --release-samples 20000 --bulk 2000 --rebuild
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa  # noqa: E402

from taisu_etl.db.engine import make_engine  # noqa: E402
from taisu_etl.db.ledger import Ledger, shard_of  # noqa: E402
from taisu_etl.db.migrate import head_revision, upgrade  # noqa: E402
from taisu_etl.images.dedup import phash_bands, phash_int64  # noqa: E402
from taisu_etl.storage import LocalObjectStore  # noqa: E402
from taisu_etl.storage.base import image_key  # noqa: E402
from taisu_etl.urls import caption_hash, pair_hash, url_id  # noqa: E402

WORDS = ["一只橘色的小猫", "蓝天下的雪山", "城市夜晚的街道", "一束盛开的玫瑰", "一碗热腾腾的面条", "停在路边的汽车"]
SHARDS = 64
DISTANCE = 4
CHUNK = 50_000


def _jpeg(i: int) -> bytes:
    """A 32x32 JPEG of noise seeded by i: distinct bytes for every i (so no two samples share an image)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _copy(raw: object, table: str, columns: list[str], rows: list[list[object]]) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    buf.seek(0)
    with raw.cursor() as cur:  # type: ignore[attr-defined]
        cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", buf)


def build(url: str, root: Path, n: int, released: int, targets: int) -> float:
    """A fresh 1M-sample ledger and the objects of its released and target samples; returns seconds."""
    from ledger import _reset_database  # bench/ledger.py

    t0 = time.perf_counter()
    _reset_database(url)
    engine = make_engine(url)
    upgrade(engine)
    store = LocalObjectStore(root)
    rng = random.Random(17)
    raw = engine.raw_connection()
    try:
        for start in range(0, n, CHUNK):
            samples, states, events, bands = [], [], [], []
            for i in range(start, min(n, start + CHUNK)):
                sid = i + 1
                u = f"http://img{i % 997}.example.com/photos/{i // 997}/{i}.jpg"
                cap = f"{WORDS[i % 6]}{WORDS[(i // 6) % 6]} 第{i}张"
                uid = url_id(u)
                if i < released + targets:
                    put = store.put_image(_jpeg(i), check_existing=False)
                    sha, key, size = put.sha256, put.key, put.size
                else:
                    sha = f"{rng.getrandbits(256):064x}"
                    key, size = image_key(sha), 700
                ph = f"{rng.getrandbits(64):016x}"
                accepted = i < released
                samples.append([sid, pair_hash(u, cap), uid, u, cap, caption_hash(cap), f"wukong_100m_{i % 8}.csv", f"line {i + 2}",
                                key, sha, ph, 32, 32, size, "jpeg", 0.3 if accepted else "", "bench-clip" if accepted else ""])
                states.append([sid, shard_of(uid, SHARDS), "accepted" if accepted else "image_ok", "ok"])
                events += [[sid, "ingest", "", "ingested", "ingested", "", "taisu_pipeline", "bench", "ingest"],
                           [sid, "fetch", "text_ok", "fetched", "ok", json.dumps({"http_status": 200}), "taisu_pipeline", "bench", "fetch"]]
                if accepted:
                    events.append([sid, "score", "image_ok", "accepted", "ok",
                                   json.dumps({"model": "bench-clip", "chunk": sid - sid % 1000 + 1, "score": 0.3}), "taisu_pipeline", "bench", "score"])
                bands += [[sid, b, v, phash_int64(ph)] for b, v in enumerate(phash_bands(ph, DISTANCE + 1))]
            _copy(raw, "sample", ["id", "pair_hash", "url_id", "url", "caption", "caption_hash", "source", "source_pos", "object_key",
                                  "sha256", "phash", "width", "height", "bytes", "format", "score", "score_model"], samples)
            _copy(raw, "sample_state", ["sample_id", "shard", "state", "last_reason"], states)
            _copy(raw, "sample_event", ["sample_id", "stage", "from_state", "to_state", "reason", "details", "dag_id", "run_id", "task_id"], events)
            _copy(raw, "image_band", ["sample_id", "band", "value", "phash"], bands)
            raw.commit()
            print(f"  set-up: {min(n, start + CHUNK):,} samples written ({time.perf_counter() - t0:.0f} s)", flush=True)
        with raw.cursor() as cur:
            cur.execute("SELECT setval(pg_get_serial_sequence('sample', 'id'), (SELECT MAX(id) FROM sample))")
        raw.commit()
    finally:
        raw.close()
    engine.dispose()
    return time.perf_counter() - t0


def _ready(url: str, n: int) -> bool:
    try:
        engine = make_engine(url)
        with engine.connect() as conn:
            rev = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            count = conn.execute(sa.text("SELECT COUNT(*) FROM sample")).scalar_one()
            takedowns = conn.execute(sa.text("SELECT COUNT(*) FROM takedown_request")).scalar_one()
        engine.dispose()
        return rev == head_revision() and count == n and takedowns == 0
    except Exception:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db-url", default=os.environ.get("TAISU_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/taisu_bench_takedown"))
    ap.add_argument("--objects", default=str(Path(tempfile.gettempdir()) / "taisu-bench-takedown-objects"))
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--release-samples", type=int, default=100_000)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--bulk", type=int, default=10_000)
    ap.add_argument("--rebuild", action="store_true", help="rebuild the ledger even if a matching one exists")
    args = ap.parse_args()

    from taisu_etl.release import ReleaseOptions, create_release
    from taisu_etl.release.patch import patch_release
    from taisu_etl.takedown.process import process_request, process_requests
    from taisu_etl.takedown.requests import file_request, import_requests

    root = Path(args.objects)
    targets = args.bulk + 1
    # The takedowns of a run change the ledger: every run starts from a fresh build.
    if args.rebuild or not _ready(args.db_url, args.samples) or not root.exists():
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        print(f"building a {args.samples:,}-sample ledger at {args.db_url} ...", flush=True)
        print(f"set-up: {build(args.db_url, root, args.samples, args.release_samples, targets):.0f} s")
    # As autovacuum leaves a ledger that has been in use: statistics, and a visibility map that lets
    # the pHash band lookups stay in the index (right after a bulk COPY each one would read the heap).
    engine = make_engine(args.db_url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()
    store = LocalObjectStore(root)
    ledger = Ledger.open(args.db_url, shards=SHARDS, recipe_version="bench")
    results: dict[str, object] = {"samples": args.samples}

    t0 = time.perf_counter()
    rel = create_release(ledger, store, "bench", ReleaseOptions(parent=None, shard_size=args.shard_size), progress=lambda _: None)
    write_s = time.perf_counter() - t0
    results["release_create"] = {"samples": rel.samples, "shards": rel.shards, "seconds": round(write_s, 2),
                                 "mb": round(rel.bytes / 1e6, 1), "mb_per_s": round(rel.bytes / 1e6 / write_s, 1)}
    print(f"release create: {rel.samples:,} samples, {rel.shards} shards, {rel.bytes / 1e6:.1f} MB in {write_s:.1f} s "
          f"({rel.bytes / 1e6 / write_s:.1f} MB/s)")

    with ledger.engine.connect() as conn:
        target_url, target_id = conn.execute(sa.text(
            "SELECT s.url, s.id FROM sample s WHERE s.id = :i"), {"i": args.release_samples + 1}).one()
        in_release = conn.execute(sa.text(
            "SELECT m.sample_id FROM release_member m WHERE m.shard = :s ORDER BY m.sample_id LIMIT 1"),
            {"s": f"{min(3, rel.shards - 1):05d}"}).scalar_one()
        bulk_urls = [u for (u,) in conn.execute(sa.text(
            "SELECT url FROM sample WHERE id > :a AND id <= :b ORDER BY id"), {"a": args.release_samples + 1, "b": args.release_samples + targets})]

    # 1. One request end to end, no release involved.
    t0 = time.perf_counter()
    rid = file_request(ledger, "url", target_url, requester="bench")
    one = process_request(ledger, store, rid, max_distance=DISTANCE)
    one_s = time.perf_counter() - t0
    assert one.ok and len(one.matches) == 1 and one.matches[0].sample_id == target_id, one.summary()
    results["one_request_s"] = round(one_s, 3)
    print(f"one request (url), end to end: {one_s:.3f} s  (target < 1 s)  [{one.status}, {len(one.objects)} object deleted]")

    # 2. Bulk: import a CSV of requests, process them as one batch.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "requests.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["kind", "value", "requester"])
            w.writerows(["url", u, "bulk requester"] for u in bulk_urls)
        t0 = time.perf_counter()
        imported = import_requests(ledger, path)
        import_s = time.perf_counter() - t0
        reports = process_requests(ledger, store, imported.filed, max_distance=DISTANCE)
        bulk_s = time.perf_counter() - t0
    assert all(r.ok for r in reports) and sum(len(r.matches) for r in reports) == len(bulk_urls)
    results["bulk"] = {"requests": len(bulk_urls), "import_s": round(import_s, 2), "total_s": round(bulk_s, 2)}
    print(f"{len(bulk_urls):,} requests (CSV import {import_s:.1f} s + processing): {bulk_s:.1f} s  (target < 60 s)")

    # 3. Patch one shard of the release (the takedown's release step, measured on its own).
    t0 = time.perf_counter()
    patch = patch_release(ledger, store, "bench", [in_release], progress=lambda _: None)
    patch_s = time.perf_counter() - t0
    written = patch.bytes_written
    results["patch"] = {"shards_rewritten": len(patch.shards_rewritten), "seconds": round(patch_s, 2), "mb": round(written / 1e6, 1),
                        "mb_per_s": round(written / 1e6 / patch_s, 1),
                        "ratio_to_writer": round((written / patch_s) / (rel.bytes / write_s), 2)}
    print(f"release patch: {len(patch.shards_rewritten)} shard(s) rewritten, {written / 1e6:.1f} MB written in {patch_s:.2f} s "
          f"({written / 1e6 / patch_s:.1f} MB/s; {results['patch']['ratio_to_writer']}x the release writer's MB/s)")  # type: ignore[index]
    ledger.dispose()
    print("RESULT " + json.dumps(results))
    print(f"reproduce: .venv/bin/python bench/takedown.py --samples {args.samples} --release-samples {args.release_samples} "
          f"--bulk {args.bulk} --rebuild")
    return 0


if __name__ == "__main__":
    sys.exit(main())
