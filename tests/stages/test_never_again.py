"""Never again: a blocklisted image is not admitted by any stage, and a takedown that lands while a
stage is in flight wins.

The takedown itself is simulated as the takedown package performs it: blocklist rows first, then
the sample's move to `taken_down` (one `takedown` event); it deletes nothing, so whatever is gone
from the store afterwards was removed by the stage. The races are placed with hooks at the exact
point named (no sleeps): after fetch's pre-download check, just before a stage's ledger move,
after the score model ran. The fetch and score races run twice: with that simulation, and with the
real takedown (`process_request`, which also deletes and verifies) at the same point; afterwards
the request still verifies.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import sqlalchemy as sa

from taisu_etl.db.leases import StageLease
from taisu_etl.db.ledger import Ledger, NewSample
from taisu_etl.db.schema import blocklist, ingest_issue, sample, sample_state
from taisu_etl.fetch import Fetcher
from taisu_etl.images import ImageConfig, normalise_image
from taisu_etl.images.dedup import hamming
from taisu_etl.release.selection import blocked
from taisu_etl.stages.dedup import dedup_shard
from taisu_etl.stages.fetch import fetch_shard
from taisu_etl.stages.ingest import ingest_file
from taisu_etl.stages.model_config import ScoreConfig
from taisu_etl.stages.score import score_shard
from taisu_etl.storage import LocalObjectStore, ObjectStore
from taisu_etl.storage.base import image_key
from taisu_etl.synthweb import SyntheticWeb, make_pairs
from taisu_etl.synthweb.seeding import seed_checked_pairs
from taisu_etl.takedown import guard
from taisu_etl.urls import normalise_url
from taisu_etl.vocab import Stage, State
from tests.stages.test_fetch_stage import prepare, settings_for, states, write_list
from tests.storage.conftest import make_s3_store, s3_server  # noqa: F401  (fixtures)

ADMITTED = {State.FETCHED.value, State.IMAGE_OK.value, State.ACCEPTED.value, State.CAPTIONED.value}


@pytest.fixture(params=["local", pytest.param("s3-versioned", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The local store, and a versioned bucket, where a deletion must take every version."""
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    return request.getfixturevalue("make_s3_store")(versioning=True)


@pytest.fixture(scope="module")
def scorer():
    from taisu_etl.models import ClipScorer

    return ClipScorer.load(ScoreConfig().model.spec(), device="cpu")


def block(ledger: Ledger, **values: str | None) -> None:
    """Blocklist rows, e.g. block(ledger, url=..., sha256=...); kinds already listed are skipped."""
    rows = [{"kind": kind, "value": value} for kind, value in values.items() if value]
    with ledger.engine.begin() as conn:
        have = {(k, v) for k, v in conn.execute(sa.select(blocklist.c.kind, blocklist.c.value))}
        new = [r for r in rows if (r["kind"], r["value"]) not in have]
        if new:
            conn.execute(sa.insert(blocklist), new)


def take_down(ledger: Ledger, sample_id: int, from_state: State) -> None:
    """What a takedown commits before it deletes anything: the blocklist, then the state."""
    with ledger.engine.connect() as conn:
        url, sha, ph = conn.execute(sa.select(sample.c.url, sample.c.sha256, sample.c.phash).where(sample.c.id == sample_id)).one()
    block(ledger, url=url, sha256=sha, phash=ph)
    assert ledger.move([sample_id], from_state=from_state, to_state=State.TAKEN_DOWN, stage=Stage.TAKEDOWN, reason="takedown") == 1


@pytest.fixture(params=["simulated", "real"])
def takedown_at(request: pytest.FixtureRequest, ledger: Ledger, store: ObjectStore) -> Callable[[int, State], int | None]:
    """How the race's takedown lands: simulated (nothing deleted) or the real processing of a request."""

    if request.param == "real" and not isinstance(store, LocalObjectStore):
        # The real takedown's deletions against a versioned bucket are covered by tests/takedown;
        # here the race is the point, and the local store keeps the suite's time down.
        pytest.skip("the real takedown races run on the local store")

    def land(sample_id: int, from_state: State) -> int | None:
        if request.param == "simulated":
            take_down(ledger, sample_id, from_state)
            return None
        from taisu_etl.takedown.process import process_request
        from taisu_etl.takedown.requests import file_request

        with ledger.engine.connect() as conn:
            uid = conn.execute(sa.select(sample.c.url_id).where(sample.c.id == sample_id)).scalar_one()
        rid = file_request(ledger, "sample", uid, requester="race")
        assert process_request(ledger, store, rid, max_distance=4).ok
        return rid

    return land


def _still_verified(ledger: Ledger, store: ObjectStore, rid: int | None) -> None:
    if rid is not None:
        from taisu_etl.takedown.verification import verify_requests

        report = verify_requests(ledger, store, [rid])[rid]
        assert report.ok, report.summary()


def sample_id_of(ledger: Ledger, url: str) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(sa.select(sample.c.id).where(sample.c.url == url)).scalar_one()


def state_of(ledger: Ledger, sample_id: int) -> str:
    with ledger.engine.connect() as conn:
        return conn.execute(sa.select(sample_state.c.state).where(sample_state.c.sample_id == sample_id)).scalar_one()


def admitted_events(ledger: Ledger, sample_id: int) -> list[tuple[str, str]]:
    return [(e["to_state"], e["reason"]) for e in ledger.events(sample_id) if e["to_state"] in ADMITTED]


def key_of(jpeg: bytes) -> str:
    return image_key(normalise_image(jpeg, ImageConfig()).sha256)


def image_keys(store: ObjectStore) -> set[str]:
    return {o.key for o in store.list("images/")}


# ---------------------------------------------------------------------------- the guard itself
def test_host_of_spells_hosts_as_the_blocklist_does() -> None:
    assert guard.host_of("https://user:pw@Img.Example.com.:8080/a?b") == "img.example.com"
    assert guard.host_of("http://[::1]:81/x") == "[::1]"
    assert guard.host_of(None) is None and guard.host_of("not a url") is None
    assert guard.host_and_parents("a.b.example.cn") == ["a.b.example.cn", "b.example.cn", "example.cn", "cn"]
    assert guard.host_and_parents("[::1]") == ["[::1]"]


def test_url_host_and_image_checks(ledger: Ledger) -> None:
    img = normalise_image(make_pairs(1, seed=31)[0].jpeg(), ImageConfig())
    near = f"{int(img.phash, 16) ^ 0b1011:016x}"  # three bits away
    far = f"{int(img.phash, 16) ^ 0xFF:016x}"  # eight bits away
    block(ledger, url="http://a.example.com/x.jpg", host="blocked.example.org", sha256="ab" * 32, phash=img.phash)
    rows = [
        {"id": 1, "url": "http://a.example.com/x.jpg"},
        {"id": 2, "url": "http://blocked.example.org:8080/y.jpg"},
        {"id": 3, "url": "https://img.cdn.blocked.example.org/z.jpg"},  # a subdomain
        {"id": 4, "url": "http://notblocked.example.org/y.jpg"},
        {"id": 5, "url": "http://a.example.com/other.jpg", "sha256": "ab" * 32},
        {"id": 6, "url": "http://c.example.com/1.jpg", "phash": near},
        {"id": 7, "url": "http://c.example.com/2.jpg", "phash": far, "sha256": "cd" * 32},
    ]
    assert guard.blocked_samples(ledger, rows, max_distance=4) == {1: "url", 2: "host", 3: "host", 5: "sha256", 6: "phash"}
    assert guard.blocked_urls(ledger, ["http://a.example.com/x.jpg", "http://a.example.com/"]) == {"http://a.example.com/x.jpg"}
    assert guard.blocked_hosts(ledger, ["blocked.example.org", "example.org"]) == {"blocked.example.org"}
    assert guard.blocked_images(ledger, rows, max_distance=2) == {5: "sha256"}  # `near` is 3 bits away


def test_the_image_blocklist_copy_follows_new_and_out_of_order_rows(ledger: Ledger) -> None:
    copy = guard.image_blocklist(ledger, 4)
    assert copy.match("11" * 32, None) is None
    with ledger.engine.begin() as conn:
        conn.execute(sa.insert(blocklist).values(id=5, kind="sha256", value="11" * 32))
    assert guard.image_blocklist(ledger, 4) is copy and copy.match("11" * 32, None) == "sha256"
    # A row that commits after one with a larger id was seen (two writers on Postgres) is found too.
    with ledger.engine.begin() as conn:
        conn.execute(sa.insert(blocklist).values(id=3, kind="phash", value="0123456789abcdef"))
    assert guard.image_blocklist(ledger, 4).match(None, "0123456789abcdee") == "phash"
    assert copy.match("11" * 32, None) == "sha256"


def test_release_selection_excludes_blocklisted_hosts_and_their_subdomains(ledger: Ledger) -> None:
    urls = ["http://img.example.com/a.jpg", "https://u:p@cdn.img.example.com:8443/b.jpg", "http://example.com/c.jpg",
            "http://img.example.com.evil.org/d.jpg", "http://evil.org/img.example.com/e.jpg", "http://a_b.example.net/f.jpg",
            "http://axb.example.net/g.jpg", "http://[::1]:8080/h.jpg", "http://other.org/i.jpg"]
    ledger.add_samples(NewSample(caption=f"第{i}张图片的说明文字", source="t.csv", url=normalise_url(u)) for i, u in enumerate(urls))
    block(ledger, host="img.example.com")
    block(ledger, host="a_b.example.net")
    block(ledger, host="[::1]")
    with ledger.engine.connect() as conn:
        got = set(conn.execute(sa.select(sample.c.url).where(blocked())).scalars())
    want = {normalise_url(u) for u in urls if any(h in {"img.example.com", "a_b.example.net", "[::1]"}
                                                   for h in guard.host_and_parents(guard.host_of(u) or ""))}
    assert got == want == {normalise_url(u) for u in urls[:2]} | {normalise_url(urls[5]), normalise_url(urls[7])}


# ---------------------------------------------------------------------------- ingest
def test_ingest_refuses_blocklisted_urls_and_hosts_with_file_and_line(ledger: Ledger, tmp_path: Path) -> None:
    path = write_list(tmp_path / "list.csv", [("http://img.example.com/gone.jpg", "被撤下的图片的说明"),
                                              ("http://ok.example.com/1.jpg", "一张正常的风景照片"),
                                              ("https://CDN.Banned.example.org:8443/2.jpg", "整个网站都被撤下了"),
                                              ("http://img.banned.example.org/3.jpg", "被撤下网站的子域名")])
    block(ledger, url="http://img.example.com/gone.jpg", host="banned.example.org")
    report = ingest_file(ledger, path)
    assert report.added.inserted == 1 and report.stats.bad == {"blocklisted": 3}
    assert "blocklisted 3" in report.summary() and f"{path}:2" in report.summary()
    with ledger.engine.connect() as conn:
        assert list(conn.execute(sa.select(sample.c.url)).scalars()) == ["http://ok.example.com/1.jpg"]
        issues = conn.execute(sa.select(ingest_issue.c.source, ingest_issue.c.position, ingest_issue.c.reason, ingest_issue.c.detail)
                              .order_by(ingest_issue.c.position)).all()
    assert [(s, p, r) for s, p, r, _ in issues] == [(str(path), "line 2", "blocklisted"), (str(path), "line 4", "blocklisted"),
                                                   (str(path), "line 5", "blocklisted")]
    assert issues[0].detail.startswith("url on the takedown blocklist") and issues[1].detail.startswith("host on")
    # Re-ingesting adds nothing and records nothing twice.
    assert ingest_file(ledger, path).added.inserted == 0 and sum(n for *_, n in ledger.issue_counts()) == 3


# ---------------------------------------------------------------------------- fetch
def test_fetch_refuses_the_same_picture_from_another_url_by_sha256_and_by_phash(ledger: Ledger, store: ObjectStore,
                                                                                tmp_path: Path) -> None:
    pairs = make_pairs(3, seed=32)
    original = normalise_image(pairs[1].jpeg(), ImageConfig())
    with SyntheticWeb(pairs) as web, SyntheticWeb(pairs, quality=60) as rehost:
        copy_url = web.url_for(pairs[0].id) + "?copy=1"
        near_url = rehost.url_for(pairs[1].id)
        rows = [(copy_url, "转载的同一张图片"), (near_url, "另一个网站重新压缩的图片"), (web.url_for(pairs[2].id), "一张没有问题的图片")]
        prepare(ledger, write_list(tmp_path / "t.csv", rows))
        # Taken down earlier from their first URLs: the exact bytes of one, the perceptual hash of the other.
        block(ledger, url=web.url_for(pairs[0].id), sha256=normalise_image(pairs[0].jpeg(), ImageConfig()).sha256)
        block(ledger, url=web.url_for(pairs[1].id), sha256=original.sha256, phash=original.phash)
        rehosted = normalise_image(pairs[1].jpeg(quality=60), ImageConfig())
        assert rehosted.sha256 != original.sha256 and hamming(rehosted.phash, original.phash) <= ImageConfig().phash_distance
        report = fetch_shard(ledger, store, settings_for(web, rehost), ImageConfig(), decode_workers=1)
    got = states(ledger)
    assert got[normalise_url(copy_url)] == got[normalise_url(near_url)] == ("fetch_failed", "blocklisted")
    assert got[normalise_url(rows[2][0])] == ("fetched", "ok")
    by = {ledger.events(sample_id_of(ledger, normalise_url(u)))[-1]["details"]["by"] for u in (copy_url, near_url)}
    assert by == {"sha256", "phash"} and report.reasons["blocklisted"] == 2
    assert image_keys(store) == {key_of(pairs[2].jpeg())}


def test_fetch_never_requests_a_url_on_a_blocklisted_host(ledger: Ledger, tmp_path: Path) -> None:
    pairs = make_pairs(2, seed=33)
    with SyntheticWeb(pairs) as web:
        rows = [(web.url_for(p.id), f"第{i}张：湖边的一棵柳树") for i, p in enumerate(pairs)]
        prepare(ledger, write_list(tmp_path / "t.csv", rows))
        block(ledger, host="127.0.0.1")  # every sample is already ingested: fetch must refuse them
        fetch_shard(ledger, LocalObjectStore(tmp_path / "o"), settings_for(web), ImageConfig(), decode_workers=1)
        assert web.total_hits() == 0
    assert set(states(ledger).values()) == {("fetch_failed", "blocklisted")}


def _on_move(monkeypatch: pytest.MonkeyPatch, from_state: State, action: Callable[[], None]) -> list[bool]:
    """Run `action` once, just before the stage's first ledger move out of `from_state`."""
    fired: list[bool] = []
    real = StageLease.apply

    def apply(self: StageLease, outcomes: Any, *, from_state: State, ctx: Any = None) -> dict[str, int]:
        if from_state == wanted and not fired:
            fired.append(True)
            action()
        return real(self, outcomes, from_state=from_state, ctx=ctx)

    wanted = from_state
    monkeypatch.setattr(StageLease, "apply", apply)
    return fired


@pytest.mark.parametrize("when", ["after_url_check", "before_move"])
def test_a_takedown_during_a_fetch_batch_wins(ledger: Ledger, store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               when: str, takedown_at: Callable[[int, State], int | None]) -> None:
    pairs = make_pairs(3, seed=34)
    with SyntheticWeb(pairs) as web:
        rows = [(web.url_for(p.id), f"第{i}张：雪山下的一片草原") for i, p in enumerate(pairs)]
        prepare(ledger, write_list(tmp_path / "t.csv", rows))
        target = sample_id_of(ledger, rows[1][0])
        fired: list[bool] = []
        request: list[int | None] = []
        if when == "after_url_check":
            # The batch's URLs were checked at its claim; the takedown lands as its download starts.
            real_fetch = Fetcher.fetch

            async def fetch(self: Fetcher, url: str) -> Any:
                if url == rows[1][0] and not fired:
                    fired.append(True)
                    # From the event loop's thread: the takedown's own store calls are blocking ones.
                    request.append(await asyncio.to_thread(takedown_at, target, State.TEXT_OK))
                return await real_fetch(self, url)

            monkeypatch.setattr(Fetcher, "fetch", fetch)
        else:
            # After every check the stage makes: only the guarded move and the sweep stand in the way.
            fired = _on_move(monkeypatch, State.TEXT_OK, lambda: request.append(takedown_at(target, State.TEXT_OK)))
        fetch_shard(ledger, store, settings_for(web), ImageConfig(), decode_workers=1)
        assert web.hits(rows[1][0]) == 1  # it was downloaded, and stored, before the takedown won
    assert fired and state_of(ledger, target) == State.TAKEN_DOWN.value and admitted_events(ledger, target) == []
    _still_verified(ledger, store, request[0])
    gone = key_of(pairs[1].jpeg())
    assert store.versions(gone) == [] and image_keys(store) == {key_of(pairs[0].jpeg()), key_of(pairs[2].jpeg())}
    assert {states(ledger)[u] for u, _ in (rows[0], rows[2])} == {("fetched", "ok")}


# ---------------------------------------------------------------------------- dedup
def _fetched(ledger: Ledger, store: ObjectStore, tmp_path: Path, pairs: list[Any]) -> list[int]:
    with SyntheticWeb(pairs) as web:
        rows = [(web.url_for(p.id), f"第{i}张：秋天的银杏大道") for i, p in enumerate(pairs)]
        prepare(ledger, write_list(tmp_path / "t.csv", rows))
        fetch_shard(ledger, store, settings_for(web), ImageConfig(), decode_workers=1)
    ids = [sample_id_of(ledger, u) for u, _ in rows]
    assert {state_of(ledger, i) for i in ids} == {State.FETCHED.value}
    return ids


def test_dedup_never_promotes_a_blocklisted_image(ledger: Ledger, store: ObjectStore, tmp_path: Path) -> None:
    pairs = make_pairs(3, seed=35)
    ids = _fetched(ledger, store, tmp_path, pairs)
    images = [normalise_image(p.jpeg(), ImageConfig()) for p in pairs]
    block(ledger, sha256=images[0].sha256, phash=f"{int(images[1].phash, 16) ^ 0b11:016x}")  # the second: 2 bits away
    report = dedup_shard(ledger, store, ImageConfig())
    assert report.reasons == {"blocklisted": 2, "ok": 1}
    assert [(state_of(ledger, i), ledger.events(i)[-1]["details"]) for i in ids[:2]] == [
        (State.IMAGE_REJECTED.value, {"by": "sha256"}), (State.IMAGE_REJECTED.value, {"by": "phash"})]
    assert state_of(ledger, ids[2]) == State.IMAGE_OK.value
    assert image_keys(store) == {key_of(pairs[2].jpeg())}


def test_a_takedown_during_dedup_wins(ledger: Ledger, store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = make_pairs(3, seed=36)
    ids = _fetched(ledger, store, tmp_path, pairs)
    target = ids[1]
    real_apply = ledger.apply
    fired: list[bool] = []

    def apply(outcomes: Any, *, from_state: State, **kw: Any) -> dict[str, int]:
        # Dedup decided the batch (the target as image_ok) and checked the blocklist; now the takedown.
        if from_state == State.FETCHED and not fired:
            assert any(o.sample_id == target and o.to_state == State.IMAGE_OK for o in outcomes)
            fired.append(True)
            take_down(ledger, target, State.FETCHED)
        return real_apply(outcomes, from_state=from_state, **kw)

    monkeypatch.setattr(ledger, "apply", apply)
    report = dedup_shard(ledger, store, ImageConfig())
    assert fired and report.reasons == {"ok": 2}
    assert state_of(ledger, target) == State.TAKEN_DOWN.value
    assert [s for s, _ in admitted_events(ledger, target)] == [State.FETCHED.value]  # from before the takedown only
    assert store.versions(key_of(pairs[1].jpeg())) == []
    assert image_keys(store) == {key_of(pairs[0].jpeg()), key_of(pairs[2].jpeg())}


def test_the_sweep_keeps_an_image_a_live_sample_still_uses(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "o")
    pairs = make_pairs(1, seed=37)
    with SyntheticWeb(pairs) as web:
        rows = [(web.url_for(pairs[0].id), "原网站上的图片"), (web.url_for(pairs[0].id) + "?mirror=1", "镜像网址上的同一张图片")]
        prepare(ledger, write_list(tmp_path / "t.csv", rows))
        fetch_shard(ledger, store, settings_for(web), ImageConfig(), decode_workers=1)
    first, second = (sample_id_of(ledger, normalise_url(u)) for u, _ in rows)
    key = key_of(pairs[0].jpeg())
    # Taken down by URL alone (no image hashes listed): the mirror's sample still uses the image.
    block(ledger, url=normalise_url(rows[0][0]))
    ledger.move([first], from_state=State.FETCHED, to_state=State.TAKEN_DOWN, stage=Stage.TAKEDOWN, reason="takedown")
    assert guard.sweep_after_move(ledger, store, [first, second]) == [] and store.exists(key)
    # Once the image itself is listed, no sample keeps it.
    block(ledger, sha256=normalise_image(pairs[0].jpeg(), ImageConfig()).sha256)
    assert guard.sweep_after_move(ledger, store, [first]) == [key] and not store.exists(key)


# ---------------------------------------------------------------------------- score
def _embedded_ids(store: ObjectStore) -> dict[str, list[int]]:
    out = {}
    for obj in store.list("embeddings/"):
        with np.load(io.BytesIO(store.get(obj.key))) as npz:
            assert npz["image"].shape[0] == npz["text"].shape[0] == len(npz["ids"])
            out[obj.key] = sorted(int(i) for i in npz["ids"])
    return out


def test_score_never_accepts_a_blocklisted_sample(ledger: Ledger, tmp_path: Path, scorer) -> None:
    store = LocalObjectStore(tmp_path / "o")
    pairs = make_pairs(6, seed=38, mismatch_rate=0.0, split="heldout")
    ids = seed_checked_pairs(ledger, store, pairs, size=(96, 96))
    blocked_id = ids[pairs[2].id]
    with ledger.engine.connect() as conn:
        url = conn.execute(sa.select(sample.c.url).where(sample.c.id == blocked_id)).scalar_one()
    block(ledger, url=url)
    report = score_shard(ledger, store, ScoreConfig(workers=0, rule="threshold", threshold=-1.0), scorer=scorer)
    assert report.reasons == {"ok": 5, "blocklisted": 1}
    assert state_of(ledger, blocked_id) == State.SCORE_REJECTED.value and admitted_events(ledger, blocked_id)[-1][0] == State.IMAGE_OK.value
    assert blocked_id not in {i for found in _embedded_ids(store).values() for i in found}
    assert store.versions(key_of_seeded(ledger, blocked_id)) == []


def key_of_seeded(ledger: Ledger, sample_id: int) -> str:
    with ledger.engine.connect() as conn:
        return conn.execute(sa.select(sample.c.object_key).where(sample.c.id == sample_id)).scalar_one()


def test_a_takedown_after_the_model_ran_and_before_the_move_wins(ledger: Ledger, store: ObjectStore, monkeypatch: pytest.MonkeyPatch,
                                                                 scorer, takedown_at: Callable[[int, State], int | None]) -> None:
    pairs = make_pairs(16, seed=39, mismatch_rate=0.0, split="heldout")
    ids = seed_checked_pairs(ledger, store, pairs, size=(96, 96))
    shard_of = {i: _shard(ledger, i) for i in ids.values()}
    shard = max(set(shard_of.values()), key=lambda n: (list(shard_of.values()).count(n), -n))
    members = sorted(i for i, n in shard_of.items() if n == shard)
    assert len(members) >= 2
    target = members[1]
    key = key_of_seeded(ledger, target)
    # The hook runs at the chunk's move, after the model scored it and after every check the stage makes.
    request: list[int | None] = []
    fired = _on_move(monkeypatch, State.IMAGE_OK, lambda: request.append(takedown_at(target, State.IMAGE_OK)))
    report = score_shard(ledger, store, ScoreConfig(workers=0, rule="threshold", threshold=-1.0), shard=shard, scorer=scorer)
    assert fired and state_of(ledger, target) == State.TAKEN_DOWN.value
    assert State.ACCEPTED.value not in [s for s, _ in admitted_events(ledger, target)]
    assert report.reasons == {"ok": len(members) - 1}  # threshold -1: everyone else is accepted
    embedded = _embedded_ids(store)
    assert {i for found in embedded.values() for i in found} == set(members) - {target}
    for emb in embedded:  # the rewritten file keeps no older version that still holds the vector
        assert len(store.versions(emb)) == 1
    assert store.versions(key) == []
    assert all(store.exists(key_of_seeded(ledger, i)) for i in ids.values() if i != target)
    _still_verified(ledger, store, request[0])


def _shard(ledger: Ledger, sample_id: int) -> int:
    return ledger.read(lambda conn: conn.execute(sa.select(sample_state.c.shard).where(sample_state.c.sample_id == sample_id)).scalar_one())
