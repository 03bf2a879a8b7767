"""Takedown processing on SQLite and Postgres, a local store and a versioned S3 bucket: matching
(exact, re-hosted near duplicate, duplicate_of, domain), the move to taken_down with one event per
sample, every object version deleted, embeddings cut, blocklist, verification, dry run, and a
crash half-way completed by a re-run."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import blocklist, sample_event, takedown_match, takedown_object, takedown_request
from taisu_etl.stages.score import embeddings_key
from taisu_etl.storage import LocalObjectStore, ObjectStore
from taisu_etl.takedown import objects as takedown_objects
from taisu_etl.takedown.errors import TakedownError
from taisu_etl.takedown.process import preview_request, process_open, process_request
from taisu_etl.takedown.requests import file_request, parse_selector
from taisu_etl.takedown.verification import verify_requests
from taisu_etl.vocab import State

from .support import CONFIG, add_stored, events_of, photo, rehosted, state_of

D = CONFIG.phash_distance


def _rows(ledger: Ledger, table: sa.Table, **where: object) -> list[dict]:
    with ledger.engine.connect() as conn:
        query = sa.select(table)
        for k, v in where.items():
            query = query.where(table.c[k] == v)
        return [dict(r) for r in conn.execute(query).mappings()]


def test_url_request_removes_every_version_and_verifies(ledger: Ledger, store: ObjectStore) -> None:
    target = add_stored(ledger, store, "http://img.example.com/a.jpg", photo(1))
    other = add_stored(ledger, store, "http://img.example.com/b.jpg", photo(2), caption="湖边的一座古老寺庙")
    # A second version of the same key, as a re-upload on a versioned bucket leaves it.
    store.put(target.key, store.get(target.key))
    rid = file_request(ledger, "url", "HTTP://IMG.example.com:80/a.jpg", requester="Rights Co", reference="mail-123")
    report = process_request(ledger, store, rid, max_distance=D)
    assert report.ok and report.status == "verified", report.summary()
    assert [m.sample_id for m in report.matches] == [target.sample_id]
    assert state_of(ledger, target.sample_id) == "taken_down" and state_of(ledger, other.sample_id) == "accepted"
    assert store.versions(target.key) == [] and store.exists(other.key)
    assert events_of(ledger, target.sample_id)[-1] == ("takedown", "taken_down", "takedown")
    with ledger.engine.connect() as conn:
        detail = conn.execute(sa.select(sample_event.c.details).where(sample_event.c.sample_id == target.sample_id,
                                                                      sample_event.c.stage == "takedown")).scalar_one()
    assert (detail if isinstance(detail, dict) else __import__("json").loads(detail))["request"] == rid
    kinds = {(b["kind"], b["value"]) for b in _rows(ledger, blocklist, takedown_id=rid)}
    assert {("url", target.url), ("sha256", target.sha256), ("phash", target.phash)} <= kinds
    obj = _rows(ledger, takedown_object, takedown_id=rid)
    assert [(o["object_key"], o["versions_left"]) for o in obj] == [(target.key, 0)]
    assert obj[0]["versions_deleted"] == (2 if store.versions(other.key) != ["current"] else 1)
    req = _rows(ledger, takedown_request, id=rid)[0]
    assert req["status"] == "verified" and req["verified_at"] is not None and req["reference"] == "mail-123"
    # Processing again changes nothing and still verifies.
    again = process_request(ledger, store, rid, max_distance=D)
    assert again.ok and again.taken_down == 0 and len(events_of(ledger, target.sample_id)) == len(events_of(ledger, target.sample_id))


def test_rehosted_image_file_finds_near_duplicates_and_sha_twins(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "o")
    original = photo(7, size=240)
    a = add_stored(ledger, store, "http://a.example.com/cat.jpg", original)
    b = add_stored(ledger, store, "http://b.example.org/copy.jpg", rehosted(original), caption="别的网站转载的照片")
    c = add_stored(ledger, store, "http://c.example.net/same.jpg", original, caption="同一张图片另一个地址", state=State.DUPLICATE,
                   duplicate_of=a.sample_id)
    unrelated = add_stored(ledger, store, "http://a.example.com/dog.jpg", photo(8, size=240), caption="一只白色的小狗")
    # The rights holder sends their own file: yet another encoding of the picture.
    sel = parse_selector("image", "mine.jpg", image=rehosted(original), image_config=CONFIG)
    preview = preview_request(ledger, store, sel, max_distance=D)
    assert {m.sample_id for m in preview.matches} == {a.sample_id, b.sample_id, c.sample_id}
    assert state_of(ledger, a.sample_id) == "accepted" and store.exists(a.key)  # the preview changed nothing
    rid = file_request(ledger, "image", "mine.jpg", requester="Photographer", image=rehosted(original))
    report = process_request(ledger, store, rid, max_distance=D)
    assert report.ok, report.summary()
    how = {m.sample_id: m.how for m in report.matches}
    assert how[a.sample_id] in ("phash", "sha256") and how[b.sample_id] in ("phash", "sha256") and c.sample_id in how
    for s in (a, b, c):
        assert state_of(ledger, s.sample_id) == "taken_down" and not store.exists(s.key)
    assert state_of(ledger, unrelated.sample_id) == "accepted" and store.exists(unrelated.key)


def test_duplicates_follow_their_original_and_domain_takes_every_host(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "o")
    orig = add_stored(ledger, store, "http://x.example.org/1.jpg", photo(11))
    dup = add_stored(ledger, store, "http://y.example.org/1.jpg", photo(12), caption="另一张", state=State.DUPLICATE,
                     duplicate_of=orig.sample_id)
    r1 = process_request(ledger, store, file_request(ledger, "sample", orig.url_id, requester="R"), max_distance=D)
    assert {m.sample_id: m.how for m in r1.matches} == {orig.sample_id: "sample", dup.sample_id: "duplicate_of"}
    on_host = [add_stored(ledger, store, f"http://{h}/{i}.jpg", photo(20 + i), caption=f"第{i}张风景照片")
               for i, h in enumerate(["shop.com", "img.shop.com", "shop.com:8080", "notshop.com"])]
    r2 = process_request(ledger, store, file_request(ledger, "domain", "https://Shop.com/anything", requester="Shop"), max_distance=0)
    assert {m.sample_id for m in r2.matches} == {s.sample_id for s in on_host[:3]}
    assert state_of(ledger, on_host[3].sample_id) == "accepted"
    assert ("host", "shop.com") in {(b["kind"], b["value"]) for b in _rows(ledger, blocklist, takedown_id=r2.request_id)}


def test_request_for_an_unknown_url_blocklists_it_and_verifies(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "o")
    rid = file_request(ledger, "url", "https://future.example.com/p.jpg", requester="R")
    report = process_request(ledger, store, rid, max_distance=D)
    assert report.ok and report.matches == []
    assert ("url", "https://future.example.com/p.jpg") in {(b["kind"], b["value"]) for b in _rows(ledger, blocklist)}


def test_embedding_vectors_are_cut_out(ledger: Ledger, store: ObjectStore) -> None:
    a = add_stored(ledger, store, "http://e.example.com/a.jpg", photo(31))
    b = add_stored(ledger, store, "http://e.example.com/b.jpg", photo(32), caption="第二张")
    with ledger.engine.connect() as conn:
        shard = conn.execute(sa.text("SELECT shard FROM sample_state WHERE sample_id = :i"), {"i": a.sample_id}).scalar_one()
    # add_stored records the score event of each sample with chunk = its own id; one file per chunk here.
    for s in (a, b):
        buf = io.BytesIO()
        ids = np.array([a.sample_id, b.sample_id], dtype=np.int64) if s is a else np.array([b.sample_id], dtype=np.int64)
        np.savez(buf, ids=ids, image=np.ones((len(ids), 4), np.float16), text=np.ones((len(ids), 4), np.float16))
        store.put(embeddings_key("tiny-clip@test", shard, s.sample_id, int(ids[-1])), buf.getvalue())
    report = process_request(ledger, store, file_request(ledger, "sha256", a.sha256, requester="R"), max_distance=0)
    assert report.ok, report.summary()
    key = embeddings_key("tiny-clip@test", shard, a.sample_id, b.sample_id)
    with np.load(io.BytesIO(store.get(key))) as npz:
        assert list(npz["ids"]) == [b.sample_id] and npz["image"].shape == (1, 4)
    assert len(store.versions(key)) == 1  # the old bytes (with a's vector) are gone on a versioned bucket too
    assert {o.kind for o in report.objects} == {"image", "embeddings"}


def test_crash_after_take_down_is_completed_by_a_rerun(ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalObjectStore(tmp_path / "o")
    s = add_stored(ledger, store, "http://k.example.com/a.jpg", photo(41))
    rid = file_request(ledger, "url", s.url, requester="R")

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(takedown_objects, "delete_images", crash)
    with pytest.raises(KeyboardInterrupt):
        process_request(ledger, store, rid, max_distance=D)
    assert state_of(ledger, s.sample_id) == "taken_down" and store.exists(s.key)
    assert _rows(ledger, takedown_request, id=rid)[0]["status"] == "matched"
    monkeypatch.undo()
    # The scheduled run picks it up: it is still open.
    reports = process_open(ledger, store, max_distance=D)
    assert [r.request_id for r in reports] == [rid] and reports[0].ok
    assert not store.exists(s.key) and len([e for e in events_of(ledger, s.sample_id) if e[0] == "takedown"]) == 1


def test_verification_reports_a_version_left_behind(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "o")
    s = add_stored(ledger, store, "http://v.example.com/a.jpg", photo(51))
    rid = file_request(ledger, "url", s.url, requester="R")
    assert process_request(ledger, store, rid, max_distance=D).ok
    store.put(s.key, b"\xff\xd8 came back")  # e.g. a replica that synced the object back
    report = verify_requests(ledger, store, [rid])[rid]
    assert not report.ok and any(s.key in p for p in report.problems)
    req = _rows(ledger, takedown_request, id=rid)[0]
    assert req["status"] == "processed" and s.key in req["status_detail"]
    assert process_request(ledger, store, rid, max_distance=D).ok  # processing again deletes it and verifies


def test_dry_run_changes_nothing(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "o")
    s = add_stored(ledger, store, "http://d.example.com/a.jpg", photo(61))
    rid = file_request(ledger, "url", s.url, requester="R")
    report = process_request(ledger, store, rid, max_distance=D, dry_run=True)
    assert [m.sample_id for m in report.matches] == [s.sample_id] and [o.key for o in report.objects if o.kind == "image"] == [s.key]
    assert "would remove" in report.summary()
    assert state_of(ledger, s.sample_id) == "accepted" and store.exists(s.key)
    assert _rows(ledger, takedown_match) == [] and _rows(ledger, blocklist) == []
    assert _rows(ledger, takedown_request, id=rid)[0]["status"] == "received"


def test_rejected_request_is_never_processed(ledger: Ledger, tmp_path: Path) -> None:
    from taisu_etl.takedown.requests import reject

    store = LocalObjectStore(tmp_path / "o")
    s = add_stored(ledger, store, "http://r.example.com/a.jpg", photo(71))
    rid = file_request(ledger, "url", s.url, requester="Someone")
    reject(ledger, rid, "not the rights holder")
    with pytest.raises(TakedownError, match="rejected"):
        process_request(ledger, store, rid, max_distance=D)
    assert process_open(ledger, store, max_distance=D) == [] and state_of(ledger, s.sample_id) == "accepted"
