"""A release read the way its users read it: TaiSu's tars + caption files, webdataset, open_clip, Parquet."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from PIL import Image

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import release, release_member
from taisu_etl.release import ReleaseOptions, create_release, verify_release
from taisu_etl.sources.taisu import iter_caption_file
from taisu_etl.storage import ObjectStore

from .support import CAPTION_MODEL, SCORE_MODEL, download_release, seed


def _tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:*") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def test_release_reads_like_taisu_on_every_ledger_and_store(ledger: Ledger, any_store: ObjectStore, tmp_path: Path) -> None:
    seeded = seed(ledger, any_store)
    report = create_release(ledger, any_store, "v1", ReleaseOptions(shard_size=7))
    assert report.samples == len(seeded.eligible) and report.shards == -(-len(seeded.eligible) // 7)
    root = download_release(any_store, "v1", tmp_path / "v1")

    # Images from the tar parts, joined to captions by id as TaiSu's users do.
    images: dict[str, bytes] = {}
    for part in sorted((root / "taisu" / "images").glob("*.tar")):
        for name, data in _tar_members(part).items():
            assert name.endswith(".jpg")
            images[name[:-4]] = data
    assert set(images) == seeded.eligible
    assert not set(images) & (seeded.taken_down | seeded.blocklisted | seeded.rejected)
    captions = json.loads((root / "taisu" / "captions.json").read_text(encoding="utf-8"))
    assert list(captions) == sorted(images)
    for sid, data in images.items():
        truth = seeded.by_id[sid]
        assert data == truth["jpeg"]
        Image.open(io.BytesIO(data)).verify()
        w = captions[sid]["w"]
        assert w in (truth["caption"], truth["caption"].replace(" ", ""))  # caption_clean when set
        assert (captions[sid]["g"] is not None) == (sid in seeded.captioned_with_g)
    lines = [json.loads(line) for line in (root / "taisu" / "captions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {d["id"]: {"w": d["w"], "g": d["g"], "url_id": d["url_id"]} for d in lines} == captions
    assert all(v["url_id"] == k for k, v in captions.items())  # URL samples: named by their url_id
    txt = (root / "taisu" / "captions.txt").read_text(encoding="utf-8").splitlines()
    assert len(txt) == len(captions)
    for line in txt:
        sid, w, g = line.split("*****")
        assert w == captions[sid]["w"] and g == (captions[sid]["g"] if captions[sid]["g"] is not None else "None")
    # The project's own TaiSu reader takes the release back, in all three caption forms.
    for form in ("captions.json", "captions.jsonl", "captions.txt"):
        recs = {r.id: (r.w, r.g) for r in iter_caption_file(root / "taisu" / form)}
        assert recs == {k: (v["w"], v["g"]) for k, v in captions.items()}
    assert (root / "ids.txt").read_text().split() == sorted(images)

    # The ledger recorded the release and which sample went into which shard.
    with ledger.engine.connect() as conn:
        row = conn.execute(sa.select(release).where(release.c.name == "v1")).mappings().one()
        members = conn.execute(sa.select(sa.func.count()).where(release_member.c.release_id == row["id"])).scalar_one()
    assert row["state"] == "published" and row["published_at"] is not None and row["manifest_key"] == "releases/v1/manifest.json"
    assert row["counts"]["samples"] == members == len(seeded.eligible)
    assert verify_release(any_store, "v1", ledger=ledger).ok


def test_webdataset_shards_read_by_webdataset_and_open_clip(sqlite_ledger: Ledger, local_store: ObjectStore, tmp_path: Path) -> None:
    import webdataset as wds

    seeded = seed(sqlite_ledger, local_store)
    create_release(sqlite_ledger, local_store, "wds", ReleaseOptions(shard_size=8, formats=("webdataset",)))
    root = download_release(local_store, "wds", tmp_path / "wds")
    shards = sorted(str(p) for p in (root / "webdataset").glob("*.tar"))
    seen = {}
    for s in wds.WebDataset(shards, shardshuffle=False).decode("pil"):
        meta = s["json"]
        assert s["__key__"] == meta["id"] and s["txt"] == meta["caption"]
        assert s["jpg"].size == (32, 32)
        assert meta["score_model"] == SCORE_MODEL
        assert meta["gen_caption_model"] in (None, CAPTION_MODEL)
        seen[s["__key__"]] = s["txt"]
    assert set(seen) == seeded.eligible
    sizes = json.loads((root / "webdataset" / "sizes.json").read_text())
    assert sum(sizes.values()) == len(seeded.eligible) and set(sizes) == {Path(s).name for s in shards}


# open_clip's trainer itself reads these shards in tests/release/test_open_clip_train.py: it runs
# `open_clip_train.main` in its own environment (`make train-env`; it pins webdataset<=0.2.86).


def test_tgz_parts_open_with_pigz(sqlite_ledger: Ledger, local_store: ObjectStore, tmp_path: Path) -> None:
    if shutil.which("pigz") is None:
        pytest.skip("pigz is not installed")
    seeded = seed(sqlite_ledger, local_store)
    create_release(sqlite_ledger, local_store, "gz", ReleaseOptions(shard_size=100, tgz=True, formats=("taisu",), min_shards=1))
    root = download_release(local_store, "gz", tmp_path / "gz")
    parts = sorted((root / "taisu" / "images").glob("*.tgz"))
    assert len(parts) == 1
    plain = subprocess.run(["pigz", "-dc", str(parts[0])], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        names = [m.name for m in tar]
        assert all(m.mode == 0o644 and m.uid == m.gid == 0 and m.mtime == 0 and m.uname == m.gname == "" for m in tar)
    assert sorted(n[:-4] for n in names) == sorted(seeded.eligible)
    listing = subprocess.run(["tar", "-tzf", str(parts[0])], check=True, capture_output=True, text=True).stdout.split()
    assert listing == names
    assert not (root / "webdataset").exists() and not (root / "parquet").exists()


def test_parquet_metadata_one_row_per_sample(sqlite_ledger: Ledger, local_store: ObjectStore, tmp_path: Path) -> None:
    seeded = seed(sqlite_ledger, local_store)
    create_release(sqlite_ledger, local_store, "pq", ReleaseOptions(shard_size=9))
    root = download_release(local_store, "pq", tmp_path / "pq")
    table = pq.read_table(root / "parquet")
    rows = table.to_pylist()
    assert sorted(r["url_id"] for r in rows) == sorted(seeded.eligible)
    for r in rows:
        truth = seeded.by_id[r["url_id"]]
        assert r["source"] == Path(truth["source"]).name and r["url"].endswith(f"/p/{truth['i']}.jpg")
        assert r["bytes"] == len(truth["jpeg"]) and r["width"] == r["height"] == 32 and r["sha256"] and r["phash"]
        assert r["score_model"] == SCORE_MODEL and 0.2 <= r["score"] <= 0.5
        assert (r["gen_caption"] is not None) == (r["url_id"] in seeded.captioned_with_g)
        assert r["gen_caption_model"] == (CAPTION_MODEL if r["gen_caption"] else None)
        assert len(r["shards"]) == 2 and all((root / s).exists() for s in r["shards"])
        shard = _tar_members(root / r["shards"][1])
        assert f"{r['url_id']}.jpg" in shard
