"""Ingest + text filter on the Postgres ledger: 1M generated captions (target: under 2 minutes).

Writes N realistic captions (85% ordinary, 15% web noise) as Wukong-style CSV parts, then times
ingest (stream, normalise, upsert, one event each) and the text filter stage (scan, rules, one
reason-coded event each). `--workers W` runs W processes, as W mapped Airflow tasks would: ingest
takes one CSV part each (Wukong ships 256 parts), the filter takes every W-th shard. Resident
memory of each worker is sampled throughout to show it stays flat.

    python bench/text_filter.py --db-url postgresql://postgres@127.0.0.1:5432/taisu_bench_text --captions 1000000 --workers 2
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ledger import _reset_database  # noqa: E402  (same database reset as the ledger benchmark)

from taisu_etl.db.engine import make_engine  # noqa: E402
from taisu_etl.db.ledger import Ledger  # noqa: E402
from taisu_etl.db.migrate import upgrade  # noqa: E402
from taisu_etl.stages.ingest import ingest_file  # noqa: E402
from taisu_etl.stages.text_filter import filter_shard  # noqa: E402
from taisu_etl.text import TextFilter  # noqa: E402

SUBJECTS = ["一只橘猫", "两只小狗", "一位老人", "小女孩", "红色自行车", "古老的石桥", "金黄的麦田", "牛肉面", "白色帆船", "樱花树", "故宫的红墙", "西湖的断桥"]
PLACES = ["在窗台上", "在海边", "在雪地里", "在公园里", "在夕阳下", "在街头", "在湖边", "在山顶上", "在雨中的小巷", "在厨房里"]
ACTIONS = ["晒太阳", "奔跑", "看书", "放风筝", "静静地停着", "随风摇曳", "冒着热气", "缓缓前行", "开心地笑着", "等待着"]
NOISE = ["图片", "查看源网页", "IMG_20190312_154233.jpg", "联系电话13812345678", "哈哈哈哈哈哈哈哈", "好", "123456", "限时特价 秒杀 点击购买",
         "<b>高清</b>&nbsp;壁纸 😀", "iPhone 15 Pro 手机壳 透明 防摔"]


def write_captions(path: Path, n: int, seed: int = 7, start: int = 0) -> None:
    rng = random.Random(seed + start)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["url", "caption"])
        for i in range(start, start + n):
            if rng.random() < 0.15:
                caption = rng.choice(NOISE)
            else:
                caption = f"{rng.choice(SUBJECTS)}{rng.choice(PLACES)}{rng.choice(ACTIONS)} {i % 9973}"
            w.writerow([f"http://img{i % 211}.example.com/p/{i}.jpg", caption])


class RssSampler(threading.Thread):
    """Resident memory of this process every 0.2 s (from /proc), to show it stays flat."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def rss_mb(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // (1 << 20)

    def run(self) -> None:
        start = time.perf_counter()
        while not self.stop.wait(0.2):
            self.samples.append((time.perf_counter() - start, self.rss_mb()))


def _ingest_worker(url: str, shards: int, path: str, out: "mp.Queue[tuple[str, float, int, int]]") -> None:
    sampler = RssSampler()
    sampler.start()
    ledger = Ledger.open(url, shards=shards, recipe_version="bench")
    t0 = time.perf_counter()
    report = ingest_file(ledger, path, batch_size=20_000)
    sampler.stop.set()
    out.put(("ingest", time.perf_counter() - t0, report.added.inserted, max(mb for _, mb in sampler.samples or [(0, 0)])))


def _filter_worker(url: str, shards: list[int], out: "mp.Queue[tuple[str, float, int, int]]") -> None:
    sampler = RssSampler()
    sampler.start()
    ledger = Ledger.open(url, recipe_version="bench")
    text_filter = TextFilter()
    t0 = time.perf_counter()
    seen = 0
    reasons: Counter[str] = Counter()
    for shard in shards:
        report = filter_shard(ledger, text_filter, shard=shard, batch_size=20_000)
        seen += report.seen
        reasons.update(report.reasons)
    sampler.stop.set()
    out.put(("filter", time.perf_counter() - t0, seen, max(mb for _, mb in sampler.samples or [(0, 0)])))
    out.put(("reasons", 0.0, 0, 0, dict(reasons)))  # type: ignore[arg-type]


def _run(target, args_list) -> tuple[float, list[tuple]]:  # type: ignore[no-untyped-def]
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    t0 = time.perf_counter()
    procs = [ctx.Process(target=target, args=(*a, out)) for a in args_list]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a worker failed with exit code {p.exitcode}")
    results = []
    while not out.empty():
        results.append(out.get())
    return time.perf_counter() - t0, results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db-url", default=os.environ.get("TAISU_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/taisu_bench_text"))
    ap.add_argument("--captions", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2, help="parallel processes, like mapped Airflow tasks (default: 2 = this machine's cores)")
    ap.add_argument("--shards", type=int, default=16)
    args = ap.parse_args()

    _reset_database(args.db_url)
    upgrade(make_engine(args.db_url))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        per = -(-args.captions // args.workers)
        parts = []
        for k in range(args.workers):
            part = Path(tmp) / f"wukong_100m_{k}.csv"
            write_captions(part, min(per, args.captions - k * per), start=k * per)
            parts.append(str(part))
        print(f"generated {args.captions:,} captions in {len(parts)} CSV part(s) in {time.perf_counter() - t0:.1f} s")
        t_ingest, ingested = _run(_ingest_worker, [(args.db_url, args.shards, p) for p in parts])
    shard_sets = [list(range(k, args.shards, args.workers)) for k in range(args.workers)]
    t_filter, filtered = _run(_filter_worker, [(args.db_url, s) for s in shard_sets])

    added = sum(r[2] for r in ingested)
    seen = sum(r[2] for r in filtered if r[0] == "filter")
    reasons: Counter[str] = Counter()
    for r in filtered:
        if r[0] == "reasons":
            reasons.update(r[4])
    peak = max(r[3] for r in ingested + filtered if r[0] != "reasons")
    total = t_ingest + t_filter
    safe = make_engine(args.db_url).url.render_as_string(hide_password=True)
    print(f"ingest + text filter on {safe}, {args.captions:,} captions, {args.workers} worker process(es), batch 20000")
    print(f"  ingest       {added:>10,} samples  {t_ingest:6.1f} s  {added / t_ingest:>9,.0f}/s")
    print(f"  text filter  {seen:>10,} captions {t_filter:6.1f} s  {seen / t_filter:>9,.0f}/s  kept {reasons.get('ok', 0):,}")
    print(f"  rejected by rule: {', '.join(f'{r} {n:,}' for r, n in reasons.most_common() if r != 'ok')}")
    print(f"  total        {total:6.1f} s  ({args.captions / total:,.0f} captions/s end to end); target under 120 s: {'MET' if total < 120 else 'NOT MET'}")
    print(f"  peak resident memory of a worker: {peak} MB")
    print(f"reproduce: python bench/text_filter.py --db-url {safe} --captions {args.captions} --workers {args.workers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
