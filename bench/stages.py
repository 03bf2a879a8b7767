"""The whole pipeline on N synthetic samples, stage by stage: CPU and wall time per sample, and the
ledger and object-store footprint per sample. docs/scaling.md is derived from what this prints.

    python bench/stages.py                      # 3,000 samples: 4-8 minutes on this shared 2-core machine
    python bench/stages.py --caption-flops      # also coca_ViT-B-32's FLOPs per image (1-2 minutes more)
    python bench/stages.py --samples 10000 --vit-pairs 400 --caption-images 600

What runs, in this process, one stage after another, on the same ledger and object store:
ingest (Wukong-style CSVs) -> text filter -> fetch (a synthetic web on 127.0.0.1, its own
process; the per-host politeness limits lifted, since it is one host) -> dedup -> score ->
caption -> release, with a Postgres ledger in a database of its own (`--db-url`, dropped and
recreated) and objects in rclone's `serve s3` (bench/fetch.py's S3 stand-in: SigV4, MD5 ETags,
files under /dev/shm). Stage functions are called as the DAG tasks call them, with the project's
default settings; models are loaded before the clock starts (the load time is printed apart).

Model stages: score runs the committed tiny CLIP, and open_clip's ViT-B-32 architecture with
random weights on `--vit-pairs` of the pairs (bench/score.py's `_scorer`: no weights can be
downloaded, and compute does not depend on them; its decisions are noise). Caption runs the
tiny CoCa (beam search) on `--caption-images` accepted images: the slowest stage on a CPU.

Per-task start-up: a model stage's task starts decode/preprocess workers that import torch
(seconds of CPU each, once per task), which would swamp the per-sample cost of this run's small
shards; a fetch task starts a fork server and decode workers. So before fetch and each model
stage the waiting samples are regrouped (an UPDATE of
sample_state.shard) into bench shards: a warm-up (the process's first call also pays lazy
imports), a probe of one batch per worker, and one large shard per measured run. The probe and
the large run give the per-task cost F and the per-sample cost c from CPU = F + n * c. The
release is measured the same way, on the `--probe-pairs` listed in a source file of their own
(a release changes no sample state, so warm-up and probe publish the same samples), then the rest.

Torch runs one thread in this process (the workers run one each anyway): the figures are per
core. With two threads on two shared cores, OpenMP threads spin waiting for each other whenever
another process holds a core, and CPU time then measures the contention, not the work.

What is charged to a stage (CPU seconds: user + system, from /proc, see bench/proc_cpu.py):
- stage: this process, less the meter's own polling thread, and every process below it
  (decode and preprocess workers, forked by the fork server);
- Postgres: the backends connected to the benchmark's database (and only those: other work on
  the same server is left out), i.e. the database side of the stage's ledger reads and writes;
- S3: the rclone process, i.e. what an object-store server spends on the stage's PUTs and GETs.
The synthetic web server is in none of them: it stands for the internet. A process that exits is
read for the last time up to `--interval` seconds before it ends, so a little of its CPU can be
missed. CPU per sample is the figure that holds on this shared 2-core machine: other work
competing for the cores stretches wall time many times over, CPU time only somewhat (caches,
sibling hyperthreads), so the CPU figures are upper bounds. Wall time is printed beside them.

Also printed: the FLOPs of the models' work per sample (torch's FlopCounterMode), the inputs of
docs/scaling.md's CPU-to-GPU translation; after the run, every ledger table's rows, heap and
index bytes (pg_total_relation_size, pg_indexes_size) per ingested sample, as the run left them
and after VACUUM FULL; events per sample; objects and bytes per prefix of the bucket (per
release); the mean stored JPEG; and how many stored images share a pHash band with an image,
which is what the dedup stage's cost per image grows with.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch import S3Server, default_workdir, start_s3  # noqa: E402  (the S3 stand-in of bench/fetch.py)
from ledger import _reset_database  # noqa: E402  (recreate the benchmark's database)
from proc_cpu import _descendants, _snapshot, cpu_seconds  # noqa: E402
from score import _scorer  # noqa: E402  (an open_clip architecture with random weights)

import sqlalchemy as sa  # noqa: E402

from taisu_etl.config import PipelineConfig  # noqa: E402
from taisu_etl.db.engine import make_engine  # noqa: E402
from taisu_etl.db.ledger import Ledger  # noqa: E402
from taisu_etl.db.migrate import upgrade  # noqa: E402
from taisu_etl.fetch.settings import FetchSettings  # noqa: E402
from taisu_etl.images import ImageConfig  # noqa: E402
from taisu_etl.stages.model_config import CaptionConfig, ScoreConfig  # noqa: E402
from taisu_etl.synthweb import SyntheticWeb, make_pairs  # noqa: E402
from taisu_etl.vocab import State  # noqa: E402

VIT = "ViT-B-32"
BENCH_SHARDS = 1_000  # shard numbers from here on are the regrouped ones (see run_pipeline)


# ---------------------------------------------------------------------------------------- metering


@dataclass
class Cost:
    """What one stage cost: wall seconds and CPU seconds, split by who spent them."""

    wall_s: float = 0.0
    stage_cpu_s: float = 0.0
    ledger_cpu_s: float = 0.0
    store_cpu_s: float = 0.0
    workers_cpu_s: float = 0.0  # the part of stage_cpu_s spent in processes below this one


class StageMeter:
    """CPU of this process and its descendants, of the benchmark database's Postgres backends, and
    of the S3 server, over one `with` block (deltas for processes that were already there)."""

    def __init__(self, database: str, *, outside: set[int], store_pid: int, interval_s: float = 0.1) -> None:
        self.database = database
        self.outside = outside  # descendants that are not the stage's (the synthetic web, the S3 server)
        self.store_pid = store_pid
        self.interval_s = interval_s
        self.cost = Cost()
        self._backend_pids: set[int] = set()
        self._stop = threading.Event()

    def _serves_database(self, pid: int) -> bool:
        """A backend's title is `postgres: USER DATABASE HOST(PORT) STATE`."""
        if pid in self._backend_pids:
            return True
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                words = fh.read().replace(b"\0", b" ").decode(errors="replace").split()
        except OSError:
            return False
        # "postgres: [CLUSTER:] USER DATABASE HOST(PORT) STATE"; a new backend is untitled for a moment.
        if self.database in words[1:5]:
            self._backend_pids.add(pid)
            return True
        return False

    def _read(self) -> tuple[dict[int, float], dict[int, float]]:
        procs = _snapshot()
        me = os.getpid()
        children = {pid: procs[pid][2] for pid in _descendants(procs, me) - self.outside}
        backends = {pid: cpu for pid, (name, _, cpu) in procs.items() if name == "postgres" and self._serves_database(pid)}
        return children, backends

    def _poll(self) -> None:
        children, backends = self._read()
        self._children.update(children)
        self._backends.update(backends)

    def _run(self) -> None:
        started = time.thread_time()
        while not self._stop.wait(self.interval_s):
            self._poll()
        self._poll()
        self._meter_cpu = time.thread_time() - started

    def __enter__(self) -> "StageMeter":
        self._children0, self._backends0 = self._read()
        self._children, self._backends = dict(self._children0), dict(self._backends0)
        self._own0 = cpu_seconds(os.getpid())
        self._store0 = cpu_seconds(self.store_pid)
        self._meter_cpu = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._wall0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall0
        self._stop.set()
        self._thread.join()
        own = cpu_seconds(os.getpid()) - self._own0 - self._meter_cpu
        children = sum(cpu - self._children0.get(pid, 0.0) for pid, cpu in self._children.items())
        backends = sum(cpu - self._backends0.get(pid, 0.0) for pid, cpu in self._backends.items())
        self.cost = Cost(wall, own + children, backends, cpu_seconds(self.store_pid) - self._store0, children)


@dataclass
class StageRun:
    name: str
    unit: str  # what `samples` counts
    samples: int
    cost: Cost
    outcome: str
    # "warmup:KIND" for a first run in the process (it pays lazy imports), "probe:KIND[:note]" for a
    # small run that measures the per-task cost of KIND, "main:KIND[:note]" for a run whose
    # per-sample cost is taken net of it; empty for stages measured in one run.
    role: str = ""

    @property
    def kind(self) -> str:
        return self.role.split(":")[1] if self.role else ""

    @property
    def note(self) -> str:
        return self.role.split(":", 2)[2] if self.role.count(":") >= 2 else ""


# ------------------------------------------------------------------------------------------ stages


@dataclass
class Bench:
    """The run's shared state: ledger, object store, synthetic web and where the results go."""

    args: argparse.Namespace
    ledger: Ledger
    server: S3Server
    web: SyntheticWeb
    workdir: Path
    database: str
    runs: list[StageRun] = field(default_factory=list)
    released: dict[str, int] = field(default_factory=dict)  # release name -> samples in it

    def measure(self, name: str, unit: str, work: Callable[[], tuple[int, str]], role: str = "") -> StageRun:
        meter = StageMeter(self.database, outside={*self.web_pids(), self.server.proc.pid}, store_pid=self.server.proc.pid,
                           interval_s=self.args.interval)
        with meter:
            samples, outcome = work()
        run = StageRun(name, unit, samples, meter.cost, outcome, role)
        self.runs.append(run)
        c = run.cost
        print(f"  {name:<28} {samples:>7,} {unit:<9} {c.wall_s:6.1f} s wall, CPU {c.stage_cpu_s:6.1f} s stage "
              f"({c.workers_cpu_s:.1f} s in workers) + "
              f"{c.ledger_cpu_s:5.1f} s Postgres + {c.store_cpu_s:5.1f} s S3: {outcome}", flush=True)
        return run

    def web_pids(self) -> set[int]:
        return {child.pid for child, _ in self.web._children if child.pid is not None}


def _reasons(counter: dict[str, int]) -> str:
    return ", ".join(f"{r} {n:,}" for r, n in sorted(counter.items(), key=lambda kv: -kv[1]))


def regroup(engine: sa.Engine, state: State, to_shard: int, limit: int | None, *, skip: tuple[int, ...] = ()) -> int:
    """Move up to `limit` samples in `state` (lowest ids first, from any shard but `skip`) to `to_shard`."""
    with engine.begin() as conn:
        return conn.execute(sa.text(
            "UPDATE sample_state SET shard = :to WHERE sample_id IN (SELECT sample_id FROM sample_state "
            "WHERE state = :state AND shard <> ALL(:skip) ORDER BY sample_id LIMIT :n)"),
            {"to": to_shard, "state": state.value, "skip": [to_shard, *skip], "n": limit}).rowcount


def model_flops(model: Any, work: Callable[[], Any]) -> float:
    """FLOPs of `work` by torch's FlopCounterMode (two per multiply-add); the weights' values do not matter."""
    from torch.utils.flop_counter import FlopCounterMode

    model.requires_grad_(False)  # else the counter's module tracker trips over inference-mode tensors
    with FlopCounterMode(display=False) as counter:
        work()
    return float(counter.get_total_flops())


def scorer_flops(scorer: Any, caption: str, n: int = 8) -> float:
    """FLOPs per pair of the score stage's model work: both towers, one image and one caption."""
    import torch

    pixels = torch.zeros(n, 3, scorer.image_size, scorer.image_size)
    return model_flops(scorer.model, lambda: (scorer.encode_images(pixels), scorer.encode_texts([caption] * n))) / n


def coca_flops(workdir: Path, config: CaptionConfig) -> tuple[str, float]:
    """FLOPs per image of open_clip's coca_ViT-B-32 (random weights) decoding as `config` says."""
    import open_clip
    import torch

    from taisu_etl.models import CaptionGenerator, ModelSpec

    path = workdir / "coca_ViT-B-32-random.pt"
    torch.save(open_clip.create_model("coca_ViT-B-32", pretrained=None).state_dict(), path)
    coca = CaptionGenerator.load(ModelSpec(arch="coca_ViT-B-32", checkpoint=str(path), tokenizer="open_clip"), device="cpu")
    pixels = torch.zeros(1, 3, coca.image_size, coca.image_size)
    flops = model_flops(coca.model, lambda: coca.generate(
        pixels, num_captions=config.num_captions, method=config.method, beam_width=config.beam_width,
        top_p=config.top_p, temperature=config.temperature, max_len=config.max_len, seed=config.seed))
    return coca.model_id, flops


def run_pipeline(b: Bench, url_lists: list[Path], main_source: str, probe_source: str) -> dict[str, float]:
    """Run every stage, measured; returns the model FLOPs it counted (stage run name -> FLOPs per sample:
    both towers for one pair, or one image's captions)."""
    import torch

    from taisu_etl.models import CaptionGenerator, ClipScorer
    from taisu_etl.release import ReleaseOptions, create_release
    from taisu_etl.stages.caption import caption_shard
    from taisu_etl.stages.dedup import dedup_shard
    from taisu_etl.stages.fetch import fetch_shard
    from taisu_etl.stages.ingest import ingest_file
    from taisu_etl.stages.score import score_shard
    from taisu_etl.stages.text_filter import filter_shard
    from taisu_etl.text import TextFilter

    ledger, store, batch, engine = b.ledger, b.server.store(), PipelineConfig().batch_size, b.ledger.engine
    flops: dict[str, float] = {}
    next_shard = iter(range(BENCH_SHARDS, BENCH_SHARDS + 100))

    def groups(state: State, one_round: int, sizes: tuple[int | None, ...] = (None,)) -> tuple[int, ...]:
        """Regroup the samples waiting in `state` into bench shards: a warm-up and a probe of
        `one_round` samples each, then one shard per entry of `sizes` (None: the rest)."""
        made: list[int] = []
        for size in (one_round, one_round, *sizes):
            shard = next(next_shard)
            regroup(engine, state, shard, size, skip=tuple(made))
            made.append(shard)
        return tuple(made)

    def ingest() -> tuple[int, str]:
        reps = [ingest_file(ledger, path, batch_size=batch) for path in url_lists]
        return sum(r.stats.read for r in reps), f"{sum(r.added.inserted for r in reps):,} new samples"
    b.measure("ingest", "rows", ingest)

    def text() -> tuple[int, str]:
        rep = filter_shard(ledger, TextFilter(), shard=None, batch_size=batch)
        return rep.seen, f"{rep.kept:,} kept; {_reasons({r: n for r, n in rep.reasons.items() if r != 'ok'}) or 'none rejected'}"
    b.measure("text filter", "captions", text)

    # The synthetic web is one host: the per-host politeness limits would make this a benchmark of
    # the limits, so they are lifted as bench/fetch.py does (concurrency 64, no per-host rate).
    # A fetch task starts a fork server (once per process) and decode workers (once per task).
    fetch_settings = FetchSettings(allow_loopback=(b.web.netloc,), concurrency=64, per_host_concurrency=64,
                                   per_host_rate=None, batch_size=batch)
    warmup, probe, main = groups(State.TEXT_OK, 128)

    def fetch_on(shard: int) -> Callable[[], tuple[int, str]]:
        def work() -> tuple[int, str]:
            rep = fetch_shard(ledger, store, fetch_settings, ImageConfig(), shard=shard, decode_workers=2)
            return rep.claimed, f"{rep.states.get('fetched', 0):,} stored, {rep.bytes_stored / 1e6:.1f} MB; {_reasons(rep.states)}"
        return work
    b.measure("fetch: warm-up", "URLs", fetch_on(warmup), role="warmup:fetch")
    b.measure("fetch: probe", "URLs", fetch_on(probe), role="probe:fetch")
    b.measure("fetch", "URLs", fetch_on(main), role="main:fetch")

    def dedup() -> tuple[int, str]:
        rep = dedup_shard(ledger, store, ImageConfig(), shard=None)
        return rep.seen, _reasons(rep.reasons)
    b.measure("dedup", "images", dedup)

    # Model stages start worker processes that import torch (seconds of CPU each) once per task.
    # One torch thread here: the per-core cost. With two threads on two shared cores, torch's
    # OpenMP threads spin waiting for each other whenever another process holds a core, and CPU
    # time measures that.
    torch.set_num_threads(1)
    score_config = ScoreConfig()
    # A probe of one batch per worker: the pool starts a worker per batch in flight, up to `workers`.
    warmup, probe, vit_shard, tiny_shard = groups(State.IMAGE_OK, score_config.batch_size * max(score_config.workers, 1),
                                                  (b.args.vit_pairs, None))
    t0 = time.perf_counter()
    tiny = ClipScorer.load(score_config.model.spec(), device="cpu")
    tiny_load = time.perf_counter() - t0

    def score_on(scorer: Any, shard: int) -> Callable[[], tuple[int, str]]:
        def work() -> tuple[int, str]:
            rep = score_shard(ledger, store, score_config, shard=shard, scorer=scorer, progress=lambda _: None)
            return rep.seen, _reasons(rep.reasons)
        return work
    b.measure("score, tiny CLIP: warm-up", "pairs", score_on(tiny, warmup), role="warmup:score")
    b.measure("score, tiny CLIP: probe", "pairs", score_on(tiny, probe), role="probe:score")
    b.measure("score, tiny CLIP", "pairs", score_on(tiny, tiny_shard), role=f"main:score:model load {tiny_load:.1f} s")
    t0 = time.perf_counter()
    vit = _scorer(VIT, b.workdir, "cpu")
    vit_load = time.perf_counter() - t0
    b.measure(f"score, {VIT} random weights", "pairs", score_on(vit, vit_shard), role=f"main:score:model load {vit_load:.1f} s")
    flops[f"score, {VIT} random weights"] = scorer_flops(vit, "一只橘猫在窗台上晒太阳")
    del vit

    caption_config = CaptionConfig()
    warmup, probe, caption_main = groups(State.ACCEPTED, caption_config.batch_size * max(caption_config.workers, 1),
                                         (b.args.caption_images,))
    t0 = time.perf_counter()
    coca = CaptionGenerator.load(caption_config.model.spec(), device="cpu")
    coca_load = time.perf_counter() - t0
    text_filter = TextFilter()

    def caption_on(shard: int) -> Callable[[], tuple[int, str]]:
        def work() -> tuple[int, str]:
            rep = caption_shard(ledger, store, caption_config, score_config, text_filter, shard=shard, generator=coca,
                                scorer=tiny, progress=lambda _: None)
            return rep.seen, _reasons(rep.reasons)
        return work
    b.measure("caption, tiny CoCa: warm-up", "images", caption_on(warmup), role="warmup:caption")
    b.measure("caption, tiny CoCa: probe", "images", caption_on(probe), role="probe:caption")
    b.measure("caption, tiny CoCa", "images", caption_on(caption_main), role=f"main:caption:model load {coca_load:.1f} s")
    flops["score, tiny CLIP"] = scorer_flops(tiny, "一只橘猫在窗台上晒太阳")
    if b.args.caption_flops:
        print("  counting coca_ViT-B-32's FLOPs for one image (a minute or two on a CPU) ...", flush=True)
        model_id, per_image = coca_flops(b.workdir, caption_config)
        flops[f"caption, coca_ViT-B-32 ({caption_config.method} search, width {caption_config.beam_width}, "
              f"{caption_config.num_captions} captions of up to {caption_config.max_len} tokens)"] = per_image

    def release_of(name: str, source: str) -> Callable[[], tuple[int, str]]:
        def work() -> tuple[int, str]:
            rep = create_release(ledger, store, name, ReleaseOptions(parent=None, sources=(f"*{source}",)),
                                 progress=lambda _: None, workdir=b.workdir)
            b.released[name] = rep.samples
            return rep.samples, f"{rep.shards} shards, {rep.files} files, {rep.bytes / 1e6:.1f} MB"
        return work
    # A release writes no sample state: the warm-up and the probe publish the same probe samples.
    b.measure("release (all formats): warm-up", "samples", release_of("bench-warmup", probe_source), role="warmup:release")
    b.measure("release (all formats): probe", "samples", release_of("bench-probe", probe_source), role="probe:release")
    b.measure("release (all formats)", "samples", release_of("bench", main_source), role="main:release")
    return flops


# --------------------------------------------------------------------------------------- footprint


@dataclass
class TableSize:
    name: str
    rows: int
    heap: int  # bytes of the table itself (with TOAST)
    indexes: int


def table_sizes(engine: sa.Engine) -> list[TableSize]:
    """Every table of the ledger's schema (not Alembic's bookkeeping): rows, heap and index bytes."""
    out = []
    with engine.connect() as conn:
        names = conn.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename <> 'alembic_version' ORDER BY 1"
        )).scalars().all()
        for name in names:
            rows = conn.execute(sa.text(f'SELECT count(*) FROM "{name}"')).scalar_one()
            total, indexes = conn.execute(sa.text(
                "SELECT pg_total_relation_size(CAST(:t AS regclass)), pg_indexes_size(CAST(:t AS regclass))"), {"t": name}).one()
            out.append(TableSize(name, rows, total - indexes, indexes))
    return out


def band_neighbours(engine: sa.Engine) -> tuple[int, float, int]:
    """(images with pHash bands, mean number of other images sharing at least one band value with
    one, bands per image): the near-duplicate candidates the dedup stage reads and compares per image."""
    with engine.connect() as conn:
        images, bands = conn.execute(sa.text(
            "SELECT count(DISTINCT sample_id), count(DISTINCT band) FROM image_band")).one()
        pairs = conn.execute(sa.text(
            "SELECT count(*) FROM (SELECT DISTINCT a.sample_id, b.sample_id FROM image_band a JOIN image_band b "
            "ON a.band = b.band AND a.value = b.value AND a.sample_id <> b.sample_id) AS p")).scalar_one()
    return int(images), pairs / max(int(images), 1), int(bands)


def random_neighbours(images: int, bands: int) -> float:
    """Expected images sharing a band value with one image, for uniformly random 64-bit hashes cut
    into `bands` contiguous bands (widths as taisu_etl.images.dedup lays them out: 64 // bands bits,
    one more for the first 64 % bands)."""
    widths = [64 // bands + (1 if i < 64 % bands else 0) for i in range(bands)]
    return (images - 1) * sum(2.0 ** -w for w in widths)


def vacuum_full(engine: sa.Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM FULL")


def bucket_usage(root: Path) -> dict[str, tuple[int, int]]:
    """(objects, bytes) per top-level prefix of the bucket (per release under releases/), read
    from the S3 server's files."""
    usage: dict[str, tuple[int, int]] = {}
    for dirpath, _, files in os.walk(root):
        rel = Path(dirpath).relative_to(root).parts
        prefix = "/".join(rel[:2]) + "/" if rel[:1] == ("releases",) and len(rel) > 1 else (rel[0] + "/" if rel else "(top)")
        for name in files:
            n, size = usage.get(prefix, (0, 0))
            usage[prefix] = (n + 1, size + os.path.getsize(os.path.join(dirpath, name)))
    return usage


# ------------------------------------------------------------------------------------------ output


@dataclass
class PerSample:
    """A stage's CPU per sample, net of its per-task start-up where a probe measured that."""

    run: StageRun
    cpu_ms: float  # all of the stage's own processes
    workers_ms: float  # the part in processes below the stage's own (decode/preprocess workers)
    fixed_cpu_s: float | None  # per task
    fixed_workers_s: float | None


def per_sample(runs: list[StageRun]) -> list[PerSample]:
    """Two runs of one stage, a probe of n0 samples (cost C0) and a main run of n1 (C1), give the
    per-task cost F and the per-sample cost c from C = F + n*c, for the whole and for the workers'
    part alike. Later main runs of the same stage (ViT-B-32 after the tiny CLIP: the same worker
    start-up) take F from the first pair."""
    fixed: dict[str, tuple[float, float]] = {}
    probes: dict[str, StageRun] = {}
    warmups: dict[str, StageRun] = {}
    out = []
    for r in runs:
        if r.role.startswith("warmup:"):
            warmups[r.kind] = r
            continue
        if r.role.startswith("probe:"):
            probes[r.kind] = r
            if r.kind in warmups and ":first call" not in r.role:
                first = warmups[r.kind].cost.stage_cpu_s - r.cost.stage_cpu_s
                r.role += f":first call in the process {first:+.1f} s (imports)"
            continue
        n1 = max(r.samples, 1)
        totals = (r.cost.stage_cpu_s, r.cost.workers_cpu_s)
        if r.role.startswith("main:") and r.kind not in fixed and r.kind in probes and r.samples <= probes[r.kind].samples:
            r.role += (", " if r.note else ":") + "no larger than its probe: start-up included"
        elif r.role.startswith("main:") and r.kind not in fixed and r.kind in probes:
            p = probes[r.kind]
            n0 = p.samples
            per = [(c1 - c0) / (n1 - n0) for c1, c0 in zip(totals, (p.cost.stage_cpu_s, p.cost.workers_cpu_s))]
            fixed[r.kind] = (p.cost.stage_cpu_s - n0 * per[0], p.cost.workers_cpu_s - n0 * per[1])
            if p.note and p.note not in r.role:
                r.role += (", " if r.note else ":") + p.note
        if r.role.startswith("main:") and r.kind in fixed:
            f_all, f_workers = fixed[r.kind]
            out.append(PerSample(r, (totals[0] - f_all) / n1 * 1000, (totals[1] - f_workers) / n1 * 1000, f_all, f_workers))
        else:
            out.append(PerSample(r, totals[0] / n1 * 1000, totals[1] / n1 * 1000, None, None))
    return out


def print_table(runs: list[StageRun]) -> list[PerSample]:
    rows = per_sample(runs)
    print("\nper stage: CPU ms per sample (user + system) of the stage's own processes ('workers': the part in its decode/"
          "preprocess\nprocesses), net of the per-task start-up where a probe measured it ('per task', CPU s); 'per core' = "
          "samples per CPU-second;\nPostgres and S3: the servers' CPU ms per sample for the stage")
    print(f"  {'stage':<30}{'samples':>8}  {'wall s':>7}  {'/s wall':>8}  {'CPU ms':>8}  {'workers':>8}  {'per core/s':>10}  "
          f"{'per task':>9}  {'Postgres':>8}  {'S3':>6}")
    for row in rows:
        r, c, n = row.run, row.run.cost, max(row.run.samples, 1)
        per_core = 1000 / row.cpu_ms if row.cpu_ms > 0 else float("inf")
        fixed = f"{row.fixed_cpu_s:7.1f} s" if row.fixed_cpu_s is not None else f"{'-':>9}"
        print(f"  {r.name:<30}{r.samples:>8,}  {c.wall_s:>7.1f}  {n / c.wall_s:>8,.0f}  {row.cpu_ms:>8.2f}  {row.workers_ms:>8.2f}  "
              f"{per_core:>10,.0f}  {fixed}  {c.ledger_cpu_s / n * 1000:>8.3f}  {c.store_cpu_s / n * 1000:>6.3f}"
              + (f"   ({r.note})" if r.note else ""))
    return rows


def print_flops(flops: dict[str, float], rows: list[PerSample]) -> None:
    if not flops:
        return
    print("\nmodel FLOPs (torch FlopCounterMode: 2 per multiply-add), and what this CPU core did with them")
    for name, per in flops.items():
        line = f"  {name:<78} {per / 1e9:>9.2f} GFLOP per sample"
        stage = next((row for row in rows if name == row.run.name), None)
        if stage is not None and stage.cpu_ms > stage.workers_ms:
            # The model runs in the stage's own process; its workers only decode and preprocess.
            line += f"   {per / 1e9 / ((stage.cpu_ms - stage.workers_ms) / 1000):6.1f} GFLOP/s per core in the model's process"
        print(line)


def print_footprint(before: list[TableSize], after: list[TableSize], samples: int, events: int, engine: sa.Engine,
                    usage: dict[str, tuple[int, int]], released: dict[str, int]) -> None:
    print(f"\nledger footprint per ingested sample ({samples:,} samples; {events / samples:.2f} events per sample)")
    print(f"  {'table':<18}{'rows/sample':>12}  {'heap B/sample':>14}  {'index B/sample':>15}  {'after VACUUM FULL: heap':>24}  {'index':>7}")
    compact = {t.name: t for t in after}
    tot = [0, 0, 0, 0]
    for t in before:
        c = compact[t.name]
        if t.rows == 0 and t.heap + t.indexes < 64 << 10:
            continue
        print(f"  {t.name:<18}{t.rows / samples:>12.2f}  {t.heap / samples:>14,.0f}  {t.indexes / samples:>15,.0f}  "
              f"{c.heap / samples:>24,.0f}  {c.indexes / samples:>7,.0f}")
        tot = [tot[0] + t.heap, tot[1] + t.indexes, tot[2] + c.heap, tot[3] + c.indexes]
    print(f"  {'all tables':<18}{'':>12}  {tot[0] / samples:>14,.0f}  {tot[1] / samples:>15,.0f}  {tot[2] / samples:>24,.0f}  "
          f"{tot[3] / samples:>7,.0f}")
    with engine.connect() as conn:
        jpeg = conn.execute(sa.text(
            "SELECT count(*), avg(bytes), avg(width), avg(height) FROM sample WHERE object_key LIKE 'images/%'")).one()
    stored = int(jpeg[0])
    print(f"\nobjects ({stored:,} stored images; mean stored JPEG {float(jpeg[1] or 0):,.0f} B at "
          f"{float(jpeg[2] or 0):.0f}x{float(jpeg[3] or 0):.0f} px)")
    for prefix, (n, size) in sorted(usage.items()):
        release = prefix.removeprefix("releases/").rstrip("/")
        per = (f"{size / max(released[release], 1):>9,.0f} B per released sample ({released[release]:,} samples)"
               if release in released else f"{size / max(stored, 1):>9,.0f} B per stored image")
        print(f"  {prefix:<24}{n:>8,} objects  {size / 1e6:>9.1f} MB  {per}")
    images, neighbours, bands = band_neighbours(engine)
    print(f"\nnear-duplicate candidates: {images:,} images in {bands} pHash bands; each shares a band value with "
          f"{neighbours:,.1f} other images on average (random 64-bit hashes would give about "
          f"{random_neighbours(images, bands):,.1f}; at 166M images, {random_neighbours(166_000_000, bands):,.0f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=3000, help="synthetic URL/caption pairs ingested")
    ap.add_argument("--shards", type=int, default=16, help="ledger shards at ingest (the project's default)")
    ap.add_argument("--probe-pairs", type=int, default=64,
                    help="of --samples, pairs listed in a source file of their own: the release probe publishes them")
    ap.add_argument("--vit-pairs", type=int, default=200, help="pairs scored by ViT-B-32 (random weights) instead of the tiny CLIP")
    ap.add_argument("--caption-images", type=int, default=240, help="accepted images the tiny CoCa captions")
    ap.add_argument("--caption-flops", action="store_true",
                    help="also count the FLOPs of open_clip's coca_ViT-B-32 captioning one image (a minute or two more)")
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between /proc readings")
    ap.add_argument("--workdir", type=Path, default=None, help="the S3 stand-in's files (default /dev/shm when it has room)")
    ap.add_argument("--db-url", default=os.environ.get("TAISU_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/taisu_bench_stages"))
    args = ap.parse_args(argv)
    if not 0 < args.probe_pairs < args.samples:
        ap.error("--probe-pairs must be between 0 and --samples")

    workdir = Path(tempfile.mkdtemp(prefix="taisu-bench-stages-", dir=args.workdir or default_workdir()))
    database = sa.engine.make_url(args.db_url).database
    if not database:
        ap.error("--db-url must name a database (it is dropped and recreated)")
    _reset_database(args.db_url)
    engine = make_engine(args.db_url)
    upgrade(engine)
    server = start_s3("rclone", workdir)
    try:
        t0 = time.perf_counter()
        pairs = make_pairs(args.samples, seed=7, split="heldout")
        with SyntheticWeb(pairs, processes=1) as web:
            main_list = Path(web.write_url_list(workdir / "synthetic_web.csv", pairs[args.probe_pairs:]).urls)
            probe_list = Path(web.write_url_list(workdir / "probe.csv", pairs[:args.probe_pairs]).urls)
            print(f"setup: {args.samples:,} pairs on {web.base_url} (rendered in {time.perf_counter() - t0:.1f} s), "
                  f"ledger {engine.url.render_as_string(hide_password=True)} with {args.shards} shards, "
                  f"S3 {server.endpoint} (rclone serve s3, files under {workdir}); {os.cpu_count()} cores, shared with other work")
            ledger = Ledger.open(args.db_url, shards=args.shards, recipe_version="bench")
            b = Bench(args, ledger, server, web, workdir, database)
            flops = run_pipeline(b, [main_list, probe_list], main_list.name, probe_list.name)
            ledger.dispose()
        print_flops(flops, print_table(b.runs))
        samples = b.runs[0].samples
        with engine.connect() as conn:
            events = conn.execute(sa.text("SELECT count(*) FROM sample_event")).scalar_one()
        before = table_sizes(engine)
        vacuum_full(engine)
        print_footprint(before, table_sizes(engine), samples, events, engine, bucket_usage(server.data_dir / "taisu"), b.released)
    finally:
        if errors := server.logged_errors():
            print(f"rclone logged {len(errors)} failed requests: {errors[:3]}")
        server.stop()
        engine.dispose()
        shutil.rmtree(workdir, ignore_errors=True)
    safe = make_engine(args.db_url).url.render_as_string(hide_password=True)
    print(f"\nreproduce: python bench/stages.py --samples {args.samples} --shards {args.shards} --vit-pairs {args.vit_pairs} "
          f"--caption-images {args.caption_images}{' --caption-flops' if args.caption_flops else ''} --db-url {safe}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
