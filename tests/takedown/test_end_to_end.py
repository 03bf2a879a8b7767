"""From a rights holder's request to an image gone everywhere, on SQLite and Postgres, a local
folder and a versioned S3 bucket: images fetched from a web server on 127.0.0.1, a published
release, then requests by URL, by sha256, by a re-hosted copy of the picture, by domain and in a
bulk CSV. Afterwards no version of any image is left, the patched release verifies and its tars
no longer hold them, `removed.txt` lists them, and the same URL or the same picture from another
URL is refused with reason `blocklisted` at ingest and at fetch."""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import sqlalchemy as sa

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import ingest_issue, sample, sample_state
from taisu_etl.images import ImageConfig
from taisu_etl.release import ReleaseOptions, create_release, diff_releases, layout, verify_release
from taisu_etl.stages.dedup import dedup_shard
from taisu_etl.stages.fetch import fetch_shard
from taisu_etl.stages.ingest import ingest_file
from taisu_etl.stages.text_filter import filter_shard
from taisu_etl.storage import ObjectStore
from taisu_etl.synthweb import SyntheticWeb, make_pairs
from taisu_etl.takedown.process import process_request, process_requests
from taisu_etl.takedown.requests import file_request, import_requests
from taisu_etl.text import TextFilter
from taisu_etl.vocab import Stage, State

from tests.stages.test_fetch_stage import settings_for, write_list

from .support import CONFIG, add_stored, photo, rehosted

D = CONFIG.phash_distance


def _members(store: ObjectStore, name: str) -> set[str]:
    """Sample ids found by reading the release's image tars (TaiSu parts and webdataset shards)."""
    manifest = __import__("json").loads(store.get(layout.key(name, layout.MANIFEST)))
    found: set[str] = set()
    for f in manifest["files"]:
        if f["path"].endswith((".tar", ".tgz")):
            with tarfile.open(fileobj=io.BytesIO(store.get(layout.key(name, f["path"]))), mode="r:*") as tar:
                found |= {m.name.split(".", 1)[0] for m in tar if m.name.endswith(".jpg")}
    return found


def _row(ledger: Ledger, url: str) -> dict:
    with ledger.engine.connect() as conn:
        return dict(conn.execute(sa.select(sample.c.id, sample.c.url_id, sample.c.sha256, sample.c.object_key, sample_state.c.state,
                                           sample_state.c.last_reason).join(sample_state, sample_state.c.sample_id == sample.c.id)
                                 .where(sample.c.url == url)).mappings().one())


def test_takedowns_end_to_end(ledger: Ledger, store: ObjectStore, tmp_path: Path) -> None:
    pairs = make_pairs(14, seed=23, mismatch_rate=0.0)
    with SyntheticWeb(pairs) as web:
        rows = [(web.url_for(p.id), p.caption) for p in pairs]
        ingest_file(ledger, write_list(tmp_path / "web.csv", rows))
        filter_shard(ledger, TextFilter())
        fetch_shard(ledger, store, settings_for(web), ImageConfig(), decode_workers=1)
        dedup_shard(ledger, store, ImageConfig())
        with ledger.engine.connect() as conn:
            ok = list(conn.execute(sa.select(sample_state.c.sample_id).where(sample_state.c.state == "image_ok")).scalars())
        assert len(ok) >= 10
        ledger.move(ok, from_state=State.IMAGE_OK, to_state=State.ACCEPTED, stage=Stage.SCORE, reason="ok",
                    updates={"score": [0.4] * len(ok), "score_model": ["tiny-clip@test"] * len(ok)})
        # Two more on a rights holder's own host (stored as the fetch stage stores them).
        shop = [add_stored(ledger, store, f"https://cdn.shop.example/{i}.jpg", photo(300 + i), caption=f"商店的第{i}张商品照片")
                for i in range(2)]
        report = create_release(ledger, store, "r1", ReleaseOptions(parent=None, shard_size=4), progress=lambda _: None)
        assert _members(store, "r1") >= {s.url_id for s in shop}

        by_url = {url: _row(ledger, url) for url, _ in rows}
        members = [u for u, r in by_url.items() if r["state"] == "accepted"]
        a, b, c, d, e = members[:5]
        removed: set[str] = set()

        # By URL, by sha256, by a re-hosted copy of C's picture (the file the photographer sends).
        for kind, value, image in (("url", a, None), ("sha256", by_url[b]["sha256"], None),
                                   ("image", "their-copy.jpg", rehosted(pairs[[u for u, _ in rows].index(c)].jpeg()))):
            rid = file_request(ledger, kind, value, requester="Rights Co", image=image)
            rep = process_request(ledger, store, rid, max_distance=D)
            assert rep.ok, rep.summary()
            removed |= set(rep.url_ids)
        assert {by_url[a]["url_id"], by_url[b]["url_id"], by_url[c]["url_id"]} <= removed
        # By domain, and two more in a bulk CSV.
        rep = process_request(ledger, store, file_request(ledger, "domain", "shop.example", requester="Shop"), max_distance=D)
        assert rep.ok and set(rep.url_ids) == {s.url_id for s in shop}
        removed |= set(rep.url_ids)
        bulk = tmp_path / "bulk.csv"
        with open(bulk, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([["kind", "value", "requester"], ["url", d, "Agency"], ["url", e, "Agency"]])
        reps = process_requests(ledger, store, import_requests(ledger, bulk).filed, max_distance=D)
        assert all(r.ok for r in reps)
        removed |= {u for r in reps for u in r.url_ids}

        # Gone everywhere: every version of every image, the release's tars, and the release verifies.
        for url in (a, b, c, d, e):
            row = _row(ledger, url)
            assert row["state"] == "taken_down" and store.versions(row["object_key"]) == []
        for s in shop:
            assert store.versions(s.key) == []
        assert verify_release(store, "r1", ledger=ledger).ok
        left = _members(store, "r1")
        assert not left & removed and len(left) == report.samples - len(removed & {by_url[u]["url_id"] for u in members} | {s.url_id for s in shop})
        listed = set(store.get(layout.key("r1", layout.REMOVED)).decode().split())
        assert removed <= listed
        assert set(diff_releases(store, "r1@1", "r1", examples=100).removed_examples) == removed & _members_v1(store)

        # Never again: the same URL with a new caption is refused at ingest; the same bytes and a
        # re-encoded copy from other URLs are refused at fetch.
        again = write_list(tmp_path / "again.csv", [(a, "同一张图片的新说明文字"), (a + "?copy=1", "别处转载的同一张图"),
                                                     (web.url_for(pairs[[u for u, _ in rows].index(b)].id) + "?mirror=2", "镜像网站上的这张图")])
        ingest_file(ledger, again)
        with ledger.engine.connect() as conn:
            issues = conn.execute(sa.select(ingest_issue.c.position, ingest_issue.c.reason).where(ingest_issue.c.source.like("%again.csv"))).all()
        assert [(p, r) for p, r in issues] == [("line 2", "blocklisted")]
        filter_shard(ledger, TextFilter())
        fetch_shard(ledger, store, settings_for(web), ImageConfig(), decode_workers=1)
        for url in (a + "?copy=1", web.url_for(pairs[[u for u, _ in rows].index(b)].id) + "?mirror=2"):
            row = _row(ledger, url)
            assert (row["state"], row["last_reason"]) == ("fetch_failed", "blocklisted")
            assert row["object_key"] is None


def _members_v1(store: ObjectStore) -> set[str]:
    return set(store.get(layout.key("r1", layout.history_ids(1))).decode().split())
