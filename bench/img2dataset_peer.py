"""The img2dataset half of bench/fetch.py: fetch a url,caption CSV with img2dataset, count what it got.

img2dataset (PyPI, pinned by bench/peer_env.sh) runs in its own venv, bench/.venv-img2dataset, as a
subprocess; this module itself needs only the standard library, so bench/fetch.py can import it from
the project's environment (`python bench/fetch.py` puts bench/ on sys.path):

    from img2dataset_peer import run_img2dataset
    r = run_img2dataset(Path("urls.csv"), Path("out/i2d"), processes=1, threads=64)

or run it alone:

    bash bench/peer_env.sh
    python bench/img2dataset_peer.py URLS.csv OUTDIR --processes 1 --threads 64

Successes and failures are read from the `NNNNN_stats.json` file img2dataset writes per shard.
`seconds` is the wall time of the whole img2dataset command, start-up included: importing its stack
(opencv, albumentations, pandas, pyarrow, wandb) takes a few seconds in the parent and again in each
spawned worker process. `shard_seconds` is the span from the first shard's start to the last
shard's end, as its stats record them (that is, download time alone).

What img2dataset does per image, by `reencode` (with the default `resize_mode="no"`; any other
resize mode, with `image_size` and `--resize_only_if_bigger`, decodes, shrinks and re-encodes):

- "none" (the default; `--disable_all_reencoding True`): the cheapest path it offers. The
  downloaded bytes are written unchanged, never decoded, so a truncated or non-image body still
  counts as a success. Our stage decodes and re-encodes every image, which is more work than this.
- "skip" (`--skip_reencode True`): decodes each image with cv2.imdecode (so it is checked, and
  its size recorded) but writes the original bytes when they are already JPEG.
- "default" (no flag): img2dataset's own default. `resize_mode=no` still decodes every image and
  re-encodes it as JPEG quality 95. This mode does the same kind of work as our stage.

Whatever the mode, img2dataset's other defaults apply: EXIF extraction (exifread), a sha256 of each
body, one .jpg + .txt + .json file per sample plus a parquet per shard (`--output_format files`),
and a browser User-Agent. It rejects responses whose X-Robots-Tag header holds noai, noimageai,
noindex or noimageindex; those count as failed_to_download. It never reads robots.txt. It applies
no URL filter, so loopback URLs are fetched like any others, with urllib (which honours
http_proxy/no_proxy: the subprocess gets no_proxy covering 127.0.0.1 and localhost).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PEER_VENV = BENCH_DIR / ".venv-img2dataset"
PEER_BIN = PEER_VENV / "bin" / "img2dataset"
PEER_PYTHON = PEER_VENV / "bin" / "python"

REENCODE_FLAGS = {
    "none": ["--disable_all_reencoding", "True"],
    "skip": ["--skip_reencode", "True"],
    "default": [],
}
# img2dataset's resize modes (`--resize_mode`); any but "no" decodes, resizes and re-encodes.
RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")

# img2dataset's own default shard size. A shard goes to one worker process, so with P processes
# we cut the list into at least P shards, or the extra processes would sit idle.
MAX_SHARD_SIZE = 10_000


class PeerNotInstalled(RuntimeError):
    pass


def peer_version() -> str:
    """img2dataset's version in the peer venv; raises PeerNotInstalled if the venv is missing."""
    if not PEER_BIN.exists():
        raise PeerNotInstalled(f"{PEER_BIN} not found: run `bash bench/peer_env.sh` first")
    out = subprocess.run(
        [str(PEER_PYTHON), "-c", 'import importlib.metadata as m; print(m.version("img2dataset"))'],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


def _count_rows(url_list_csv: Path) -> int:
    with open(url_list_csv, newline="", encoding="utf-8") as f:
        return sum(1 for _ in csv.reader(f)) - 1  # header


def _peer_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # nothing from the project's environment leaks into the peer's
    env.pop("VIRTUAL_ENV", None)
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"  # albumentations otherwise asks pypi.org for updates on import
    env["WANDB_MODE"] = "disabled"  # --enable_wandb is False already; belt and braces
    env["WANDB_SILENT"] = "true"
    loopback = "127.0.0.1,localhost,::1"
    for key in ("no_proxy", "NO_PROXY"):
        env[key] = f"{env[key]},{loopback}" if env.get(key) else loopback
    return env


def build_command(
    url_list_csv: Path,
    output_dir: Path,
    *,
    processes: int,
    threads: int,
    timeout_s: int,
    shard_size: int,
    reencode: str,
    resize_mode: str = "no",
    image_size: int = 256,
) -> list[str]:
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, not {resize_mode!r}")
    # A resize only ever shrinks, as taisu-etl's max_side does.
    resize = [] if resize_mode == "no" else ["--image_size", str(image_size), "--resize_only_if_bigger", "True"]
    return [
        str(PEER_BIN),
        "--url_list", str(url_list_csv),
        "--output_folder", str(output_dir),
        "--input_format", "csv",
        "--url_col", "url",
        "--caption_col", "caption",
        "--resize_mode", resize_mode,
        *resize,
        "--output_format", "files",
        "--processes_count", str(processes),
        "--thread_count", str(threads),
        "--timeout", str(timeout_s),
        "--retries", "0",
        "--number_sample_per_shard", str(shard_size),
        "--enable_wandb", "False",
        *REENCODE_FLAGS[reencode],
    ]


def read_stats(output_dir: Path) -> dict:
    """Sum img2dataset's per-shard `*_stats.json` files."""
    totals = Counter()
    statuses: Counter = Counter()
    starts, ends = [], []
    files = sorted(output_dir.glob("*_stats.json"))
    for path in files:
        s = json.loads(path.read_text())
        for k in ("count", "successes", "failed_to_download", "failed_to_resize"):
            totals[k] += s[k]
        statuses.update(s.get("status_dict", {}))
        starts.append(s["start_time"])
        ends.append(s["end_time"])
    return {
        "shards": len(files),
        **{k: totals[k] for k in ("count", "successes", "failed_to_download", "failed_to_resize")},
        "statuses": dict(statuses.most_common(10)),
        "shard_seconds": (max(ends) - min(starts)) if files else 0.0,
    }


def run_img2dataset(
    url_list_csv: Path,
    output_dir: Path,
    *,
    processes: int,
    threads: int,
    timeout_s: int = 10,
    reencode: str = "none",
    shard_size: int | None = None,
    log_path: Path | None = None,
    resize_mode: str = "no",
    image_size: int = 256,
) -> dict:
    """Fetch every URL of `url_list_csv` (columns url, caption) with img2dataset into `output_dir`.

    `processes` x `threads` is the concurrency budget (img2dataset: worker processes, each with a
    thread pool). `output_dir` must be absent or empty. The command's output goes to `log_path`
    (default: `<output_dir>.log`, beside it). Returns samples (successes), failed, seconds (wall
    time of the command), samples_per_s (samples / seconds), and details.
    """
    if reencode not in REENCODE_FLAGS:
        raise ValueError(f"reencode must be one of {sorted(REENCODE_FLAGS)}, not {reencode!r}")
    if not PEER_BIN.exists():
        raise PeerNotInstalled(f"{PEER_BIN} not found: run `bash bench/peer_env.sh` first")
    url_list_csv = Path(url_list_csv).resolve()
    output_dir = Path(output_dir).resolve()
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ValueError(f"{output_dir} is not empty (img2dataset would skip shards it finds there)")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_path) if log_path else output_dir.with_name(output_dir.name + ".log")

    rows = _count_rows(url_list_csv)
    if shard_size is None:
        shard_size = max(1, min(MAX_SHARD_SIZE, math.ceil(rows / processes)))
    cmd = build_command(
        url_list_csv, output_dir, processes=processes, threads=threads, timeout_s=timeout_s,
        shard_size=shard_size, reencode=reencode, resize_mode=resize_mode, image_size=image_size,
    )

    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_peer_env(), cwd=output_dir.parent)
        seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"img2dataset exited {proc.returncode}; log {log_path}:\n{tail}")

    stats = read_stats(output_dir)
    samples = stats["successes"]
    failed = stats["failed_to_download"] + stats["failed_to_resize"]
    return {
        "samples": samples,
        "failed": failed,
        "missing": rows - stats["count"],  # rows in shards that never finished (no stats file)
        "seconds": seconds,
        "samples_per_s": samples / seconds if seconds > 0 else 0.0,
        "shard_seconds": stats["shard_seconds"],
        "samples_per_s_in_shards": samples / stats["shard_seconds"] if stats["shard_seconds"] > 0 else 0.0,
        "failed_to_download": stats["failed_to_download"],
        "failed_to_resize": stats["failed_to_resize"],
        "statuses": stats["statuses"],
        "shards": stats["shards"],
        "shard_size": shard_size,
        "processes": processes,
        "threads": threads,
        "reencode": reencode,
        "resize_mode": resize_mode,
        "command": cmd,
        "log": str(log_path),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url_list_csv", type=Path, help="CSV with url and caption columns")
    ap.add_argument("output_dir", type=Path, help="absent or empty directory")
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--timeout", type=int, default=10, help="per-request timeout, seconds")
    ap.add_argument("--reencode", choices=sorted(REENCODE_FLAGS), default="none")
    ap.add_argument("--shard-size", type=int, default=None, help="default: rows / processes, at most 10000")
    ap.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = ap.parse_args(argv)

    print(f"img2dataset {peer_version()}", file=sys.stderr)
    r = run_img2dataset(
        args.url_list_csv, args.output_dir, processes=args.processes, threads=args.threads,
        timeout_s=args.timeout, reencode=args.reencode, shard_size=args.shard_size,
    )
    if args.json:
        print(json.dumps(r, indent=2, ensure_ascii=False))
    else:
        print(
            f"img2dataset: {r['samples']} samples, {r['failed']} failed, {r['missing']} missing in "
            f"{r['seconds']:.2f}s = {r['samples_per_s']:.1f} samples/s "
            f"({r['samples_per_s_in_shards']:.1f}/s over {r['shard_seconds']:.2f}s of shard time; "
            f"processes={r['processes']} threads={r['threads']} reencode={r['reencode']})"
        )
        if r["failed"]:
            print(f"  statuses: {r['statuses']}")
    return 0 if r["missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
