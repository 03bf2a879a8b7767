"""webdataset shards: `<id>.jpg`, `<id>.json`, `<id>.txt` (and `<id>.gen.txt`) per sample, consecutive in one tar.

What `.txt` carries is the recipe's `wds_captions`: `w` the web caption; `g` the generated caption,
or the web caption where the sample has none (every sample keeps a `.txt`, so sizes.json stays the
number of samples the trainer sees); `both` the web caption in `.txt` and the generated caption in
`.gen.txt` where the sample has one (a reader sees the key `gen.txt`; open_clip ignores it).

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


def captions_for(choice: str, w: str, g: str | None) -> tuple[str, str | None]:
    """(`.txt`, `.gen.txt` or None) of a sample with web caption `w` and generated caption `g`."""
    if choice == "w":
        return w, None
    if choice == "g":
        return (g if g is not None else w), None
    if choice == "both":
        return w, g
    raise ValueError(f"unknown webdataset caption choice {choice!r}")


def add_sample(tar: TarWriter, sample_id: str, image: bytes, caption: str, meta: dict[str, Any], gen_caption: str | None = None) -> None:
    """Members in a fixed order (jpg, json, txt, gen.txt): readers group by key, the order only fixes the bytes."""
    tar.add(f"{sample_id}.jpg", image)
    tar.add(f"{sample_id}.json", sample_json(meta))
    tar.add(f"{sample_id}.txt", caption.encode())
    if gen_caption is not None:
        tar.add(f"{sample_id}.gen.txt", gen_caption.encode())


def sizes_json(sizes: dict[str, int]) -> bytes:
    """`{"00000.tar": n, ...}`: what open_clip's get_dataset_size() reads for --train-num-samples."""
    return (json.dumps(sizes, sort_keys=True, indent=1) + "\n").encode()
