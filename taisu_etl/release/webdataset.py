"""webdataset shards: `<id>.jpg`, `<id>.json`, `<id>.txt` per sample, consecutive in one tar.

open_clip's trainer (open_clip_train/data.py) groups members by the part of the name before the
first dot, keeps samples that have `txt` and `jpg`, and reads the dataset size from `sizes.json`
next to the shards; ids are 32 hex digits, so they never contain a dot.
"""

from __future__ import annotations

import json
from typing import Any

from taisu_etl.release.tarwriter import TarWriter

# The metadata each sample carries in its .json, in a fixed key order for reproducible bytes.
JSON_FIELDS = (
    "id", "url", "taisu_id", "caption", "gen_caption", "gen_caption_model", "score", "score_model",
    "sha256", "width", "height", "source",
)


def sample_json(meta: dict[str, Any]) -> bytes:
    return json.dumps({k: meta.get(k) for k in JSON_FIELDS}, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def add_sample(tar: TarWriter, sample_id: str, image: bytes, caption: str, meta: dict[str, Any]) -> None:
    """Members in extension order (jpg, json, txt): readers group by key, the order only fixes the bytes."""
    tar.add(f"{sample_id}.jpg", image)
    tar.add(f"{sample_id}.json", sample_json(meta))
    tar.add(f"{sample_id}.txt", caption.encode())


def sizes_json(sizes: dict[str, int]) -> bytes:
    """`{"00000.tar": n, ...}`: what open_clip's get_dataset_size() reads for --train-num-samples."""
    return (json.dumps(sizes, sort_keys=True, indent=1) + "\n").encode()
