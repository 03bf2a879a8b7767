"""A small release trained on by the real open_clip trainer, in its own environment.

open_clip_torch 3.3.0 pins webdataset<=0.2.86 for `open_clip_train`, while this project needs
webdataset>=0.2.100, so the trainer cannot run in the project's venv. `make train-env` builds
.venv-train with open_clip_torch[training]==3.3.0 and its own pins; this test builds a release with
the project's code and runs `open_clip_train.main` on its webdataset shards, in a subprocess, on the
CPU, with the trainer's default `--workers` (not passed), so it also proves a small release has
enough shards for that default.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from taisu_etl.db.ledger import Ledger
from taisu_etl.release import ReleaseOptions, create_release
from taisu_etl.storage import ObjectStore

from .support import download_release, seed

REPO = Path(__file__).resolve().parents[2]
TRAIN_VENV = Path(os.environ.get("TAISU_TRAIN_VENV", REPO / ".venv-train"))
TRAIN_PYTHON = TRAIN_VENV / "bin" / "python"
LAUNCHER = Path(__file__).with_name("open_clip_train_launcher.py")
TINY_CLIP = REPO / "taisu_etl" / "models" / "tiny" / "tiny-clip.json"
# The vocabulary of open_clip's default SimpleTokenizer (CLIP's BPE, shipped inside the package).
SIMPLE_TOKENIZER_VOCAB = 49408
BATCH_SIZE = 4
STEP_LINE = re.compile(r"Train Epoch: 0 \[\s*(\d+)/(\d+) \(\d+%\)\].* Loss: (\S+) \(")

pytestmark = pytest.mark.skipif(
    not (TRAIN_VENV / ".installed").exists(),
    reason=f"no open_clip training environment at {TRAIN_VENV}: create it with `make train-env` (`make test` does)",
)


def _smoke_model_config(dst: Path) -> Path:
    """The built-in tiny CLIP with CLIP's text vocabulary. open_clip_train takes its tokenizer from the
    model config: with no `hf_tokenizer_name` (no hub here) that is the default SimpleTokenizer, whose
    ids run past tiny-clip's 57-piece SentencePiece vocabulary and whose end token is the largest id,
    so the text tower gets CLIP's vocabulary size and its default argmax pooling."""
    cfg = json.loads(TINY_CLIP.read_text())
    for key in ("pad_id", "eos_id", "pool_type"):
        cfg["text_cfg"].pop(key, None)
    cfg["text_cfg"]["vocab_size"] = SIMPLE_TOKENIZER_VOCAB
    path = dst / "taisu-smoke-clip.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def _params(path: Path) -> dict[str, str]:
    """open_clip_train's params.txt: one `name: value` line per argument it ran with."""
    return dict(line.split(": ", 1) for line in path.read_text().splitlines() if ": " in line)


def test_open_clip_train_trains_on_a_small_release(sqlite_ledger: Ledger, local_store: ObjectStore, tmp_path: Path) -> None:
    seeded = seed(sqlite_ledger, local_store)
    # Default packaging: 31 samples fit in one default-size shard, so only the release's minimum
    # shard count makes this trainable with open_clip_train's default --workers.
    report = create_release(sqlite_ledger, local_store, "oc", ReleaseOptions(formats=("webdataset",)))
    root = download_release(local_store, "oc", tmp_path / "release")
    wds_dir = root / "webdataset"
    shards = sorted(wds_dir.glob("*.tar"))
    assert len(shards) == report.shards
    # The brace form open_clip's documentation uses; the size comes from the release's sizes.json.
    train_data = f"{wds_dir}/{{{shards[0].stem}..{shards[-1].stem}}}.tar"
    config = _smoke_model_config(tmp_path)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled")
    cmd = [
        str(TRAIN_PYTHON), str(LAUNCHER), "--model-config", str(config), "--",
        "--model", config.stem, "--train-data", train_data, "--dataset-type", "webdataset",
        "--device", "cpu", "--precision", "fp32", "--epochs", "1", "--batch-size", str(BATCH_SIZE),
        "--lr", "1e-3", "--warmup", "1", "--seed", "0", "--log-every-n-steps", "1",
        "--logs", str(tmp_path / "logs"), "--name", "smoke", "--save-frequency", "1", "--report-to", "",
    ]
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"open_clip_train failed ({run.returncode}):\n{output[-4000:]}"

    run_dir = tmp_path / "logs" / "smoke"
    params = _params(run_dir / "params.txt")
    workers = int(params["workers"])  # the trainer's own default: the command above does not set it
    assert workers >= 1 and len(shards) >= workers
    assert params["dataset_type"] == "webdataset" and params["train_num_samples"] == "None"
    log = (run_dir / "out.log").read_text()
    assert "Handling webdataset error" not in log + output, "open_clip_train skipped samples it could not read"

    # The epoch size comes from sizes.json (the release's sample count), rounded up by open_clip to
    # whole batches on every worker.
    per_round = BATCH_SIZE * workers
    epoch_samples = math.ceil(len(seeded.eligible) / per_round) * per_round
    steps = STEP_LINE.findall(log)
    assert [int(seen) for seen, _, _ in steps] == list(range(BATCH_SIZE, epoch_samples + 1, BATCH_SIZE))
    assert {int(total) for _, total, _ in steps} == {epoch_samples}
    losses = [float(loss) for _, _, loss in steps]
    assert all(math.isfinite(x) and x > 0 for x in losses), losses

    ckpt = torch.load(run_dir / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["name"] == "smoke"
    # Every parameter was updated once per logged step: the optimizer really trained on each batch.
    assert {int(state["step"]) for state in ckpt["optimizer"]["state"].values()} == {len(steps)}
    tensors = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert tensors and all(torch.isfinite(v).all() for v in tensors)
    assert ckpt["state_dict"]["token_embedding.weight"].shape[0] == SIMPLE_TOKENIZER_VOCAB
