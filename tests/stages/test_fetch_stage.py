"""The fetch stage against the synthetic web: every hostile case ends in its reason, nothing stored.

All traffic stays on 127.0.0.1: the synthetic web binds there, and the fetcher may use loopback
only for the host:port each test allowlists.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import blocklist, domain_state, sample_state
from taisu_etl.fetch.settings import FetchSettings
from taisu_etl.images import ImageConfig
from taisu_etl.stages.dedup import dedup_shard
from taisu_etl.stages.fetch import fetch_shard
from taisu_etl.stages.ingest import ingest_file
from taisu_etl.stages.text_filter import filter_shard
from taisu_etl.storage import LocalObjectStore
from taisu_etl.synthweb import SyntheticWeb, make_pairs
from taisu_etl.text import TextFilter

# case -> (state, reason) the stage must end in; the rest of HOSTILE_CASES throttle the whole host
# (429/503/5xx/timeouts pause it) and are tested on hosts of their own below.
EXPECTED = {
    "404": ("expired", "http_404"), "410": ("expired", "http_410"), "403": ("fetch_failed", "http_403"),
    "endless": ("fetch_failed", "too_large"), "huge": ("fetch_failed", "too_large"), "huge-declared": ("fetch_failed", "too_large"),
    "gzip-bomb": ("fetch_failed", "not_image"), "bomb.png": ("fetch_failed", "too_many_pixels"),
    "empty": ("fetch_failed", "not_image"), "html": ("fetch_failed", "not_image"), "page.html": ("fetch_failed", "not_image"),
    "not-image": ("fetch_failed", "not_image"), "svg": ("fetch_failed", "not_image"), "bmp": ("fetch_failed", "not_image"),
    "truncated.jpg": ("fetch_failed", "decode_error"), "tiny.jpg": ("image_rejected", "too_small"), "wide.jpg": ("image_rejected", "bad_aspect"),
    "redirect-loop": ("fetch_failed", "too_many_redirects"), "redirect-chain-6": ("fetch_failed", "too_many_redirects"),
    "redirect-private-10": ("fetch_failed", "blocked_address"), "redirect-private-172": ("fetch_failed", "blocked_address"),
    "redirect-private-192": ("fetch_failed", "blocked_address"), "redirect-private-metadata": ("fetch_failed", "blocked_address"),
    "redirect-private-mapped-v6": ("fetch_failed", "blocked_address"), "redirect-private-decimal": ("fetch_failed", "blocked_address"),
    "redirect-private-localhost": ("fetch_failed", "blocked_address"), "redirect-private-loopback-other-port": ("fetch_failed", "blocked_address"),
    "redirect-private-file": ("fetch_failed", "bad_url"), "redirect-private-ftp": ("fetch_failed", "bad_url"),
    "noai": ("fetch_failed", "noai_header"), "noimageai": ("fetch_failed", "noai_header"), "noai-list": ("fetch_failed", "noai_header"),
    "private": ("fetch_failed", "robots_disallow"),
    "sample.jpg": ("fetched", "ok"), "png": ("fetched", "ok"), "webp": ("fetched", "ok"), "gif-animated.gif": ("fetched", "ok"),
    "exif-rotated.jpg": ("fetched", "ok"), "appended-payload.jpg": ("fetched", "ok"), "wrong-type": ("fetched", "ok"),
    "redirect-chain-3": ("fetched", "ok"), "cmyk.jpg": ("fetched", "ok"),
}


def settings_for(*webs: SyntheticWeb, **extra: object) -> FetchSettings:
    base = dict(allow_loopback=tuple(w.netloc for w in webs), per_host_rate=None, per_host_concurrency=16, deadline_s=3.0,
                max_bytes=4 << 20, retry_base_s=0.0, concurrency=32)
    base.update(extra)
    return FetchSettings(**base)  # type: ignore[arg-type]


def write_list(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["url", "caption"])
        w.writerows(rows)
    return path


def prepare(ledger: Ledger, path: Path) -> None:
    ingest_file(ledger, path)
    filter_shard(ledger, TextFilter())


def states(ledger: Ledger) -> dict[str, tuple[str, str]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT s.url, st.state, st.last_reason FROM sample s JOIN sample_state st ON st.sample_id = s.id")).all()
    return {r.url: (r.state, r.last_reason) for r in rows}


def test_every_hostile_case_ends_in_its_reason_with_nothing_stored(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    with SyntheticWeb(make_pairs(1, seed=3), stall_seconds=5) as web:
        urls = {case: web.hostile_url(case) for case in EXPECTED}
        prepare(ledger, write_list(tmp_path / "hostile.csv", [(u, f"第{n}张图：湖边的一棵老柳树") for n, u in enumerate(urls.values())]))
        report = fetch_shard(ledger, store, settings_for(web), ImageConfig(), decode_workers=1)
        assert web.hits("/private/hostile-sample.jpg") == 0  # robots.txt disallows it: never requested
    got = states(ledger)
    wrong = {case: got[u] for case, u in urls.items() if got[u] != EXPECTED[case]}
    assert wrong == {}, wrong
    stored = [o for o in store.list("images/")]
    fetched = sum(1 for s, _ in EXPECTED.values() if s == "fetched")
    assert len(stored) == len({o.key for o in stored}) <= fetched  # only successes stored (equal images share a key)
    assert report.claimed == len(EXPECTED)
    with ledger.engine.connect() as conn:
        details = conn.execute(sa.text("SELECT details FROM sample_event WHERE reason = 'noai_header'")).scalars().first()
    assert "noai" in str(details)  # the evidence of the opt-out is recorded


def test_429_retry_after_is_honoured_and_persisted(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    with SyntheticWeb(make_pairs(1, seed=5), retry_after=120) as busy:
        url = busy.hostile_url("429")
        prepare(ledger, write_list(tmp_path / "t.csv", [(url, "一辆红色的自行车停在路边")]))
        fetch_shard(ledger, store, settings_for(busy), ImageConfig(), decode_workers=1)
        assert states(ledger)[url] == ("fetch_retry", "http_429")
        with ledger.engine.connect() as conn:
            due = conn.execute(sa.select(sample_state.c.next_attempt_at)).scalar_one()
            backoff = conn.execute(sa.select(domain_state.c.backoff_until)).scalar_one()
        due = due if due.tzinfo else due.replace(tzinfo=timezone.utc)
        assert (due - datetime.now(timezone.utc)).total_seconds() > 100  # Retry-After: 120 honoured
        assert backoff is not None  # the host's back-off outlives this task
        # A re-run touches only what is due: nothing here.
        assert fetch_shard(ledger, store, settings_for(busy), ImageConfig(), decode_workers=1).claimed == 0
        assert busy.hits(url) == 1


def test_transient_failure_is_retried_in_a_later_attempt(ledger: Ledger, tmp_path: Path) -> None:
    pairs = make_pairs(1, seed=7)
    store = LocalObjectStore(tmp_path / "objects")
    with SyntheticWeb(pairs, retry_after=0) as flaky:
        url = flaky.flaky_url(pairs[0].id, fail=1, status=503, retry_after=0)
        prepare(ledger, write_list(tmp_path / "t.csv", [(url, "一座古老的石桥横跨小河")]))
        first = fetch_shard(ledger, store, settings_for(flaky), ImageConfig(), decode_workers=1)
        assert first.reasons == {"http_5xx": 1}
        assert fetch_shard(ledger, store, settings_for(flaky), ImageConfig(), decode_workers=1).claimed == 1
    assert states(ledger)[url] == ("fetched", "ok")
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT attempts FROM sample_state")).scalar_one() == 2


def test_transient_failures_stop_at_the_attempt_limit(ledger: Ledger, tmp_path: Path) -> None:
    with SyntheticWeb(make_pairs(1, seed=6)) as web:
        prepare(ledger, write_list(tmp_path / "t.csv", [(web.hostile_url("500"), "雨后的城市街道倒映着霓虹灯")]))
        fetch_shard(ledger, LocalObjectStore(tmp_path / "o"), settings_for(web, max_attempts=1), ImageConfig(), decode_workers=1)
    assert list(states(ledger).values()) == [("fetch_failed", "retries_exhausted")]


def test_blocklist_is_checked_by_url_before_and_by_hash_after(ledger: Ledger, tmp_path: Path) -> None:
    pairs = make_pairs(3, seed=8)
    with SyntheticWeb(pairs) as web:
        rows = [(web.url_for(p.id), f"第{i}张：一只白色的小猫") for i, p in enumerate(pairs)]
        prepare(ledger, write_list(tmp_path / "t.csv", rows))
        from taisu_etl.images import normalise_image
        blocked = normalise_image(pairs[1].jpeg(), ImageConfig())
        with ledger.engine.begin() as conn:
            conn.execute(sa.insert(blocklist), [{"kind": "url", "value": rows[0][0]}, {"kind": "sha256", "value": blocked.sha256}])
        fetch_shard(ledger, LocalObjectStore(tmp_path / "o"), settings_for(web), ImageConfig(), decode_workers=1)
        assert web.hits(rows[0][0]) == 0  # blocked by URL: never requested
    got = states(ledger)
    assert got[rows[0][0]] == ("fetch_failed", "blocklisted") and got[rows[1][0]] == ("fetch_failed", "blocklisted")
    assert got[rows[2][0]] == ("fetched", "ok")


def test_dedup_links_duplicates_to_the_first_sample(ledger: Ledger, tmp_path: Path) -> None:
    pairs = make_pairs(4, seed=9)
    store = LocalObjectStore(tmp_path / "o")
    with SyntheticWeb(pairs) as web:
        same = web.url_for(pairs[0].id)
        rows = [(same, "清晨的海边，一艘小船"), (same + "?copy=1", "另一个网站转载的同一张照片"), (web.url_for(pairs[1].id), "黄昏时分的城市天际线")]
        prepare(ledger, write_list(tmp_path / "t.csv", rows))
        fetch_shard(ledger, store, settings_for(web), ImageConfig(), decode_workers=1)
    report = dedup_shard(ledger, store, ImageConfig())
    assert report.reasons["duplicate"] == 1
    with ledger.engine.connect() as conn:
        dup = conn.execute(sa.text(
            "SELECT s.id, s.duplicate_of FROM sample s JOIN sample_state st ON st.sample_id = s.id WHERE st.state = 'duplicate'")).one()
    assert dup.duplicate_of < dup.id and states(ledger)[same] == ("image_ok", "ok")


class _BrokenStore(LocalObjectStore):
    def put(self, key, data, content_type=None):  # type: ignore[no-untyped-def]
        raise OSError("disk full")


def test_a_failing_store_leaves_samples_due_for_retry_not_stranded(ledger: Ledger, tmp_path: Path) -> None:
    pairs = make_pairs(2, seed=13)
    with SyntheticWeb(pairs) as web:
        rows = [(web.url_for(p.id), f"第{i}张：山谷里的一条小溪") for i, p in enumerate(pairs)]
        prepare(ledger, write_list(tmp_path / "t.csv", rows))
        report = fetch_shard(ledger, _BrokenStore(tmp_path / "o"), settings_for(web, retry_base_s=60), ImageConfig(), decode_workers=1)
    assert report.reasons == {"stage_error": 2}
    assert set(states(ledger).values()) == {("fetch_retry", "stage_error")}
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM sample_state WHERE lease_owner IS NOT NULL")).scalar_one() == 0


def test_bands_are_written_in_one_statement_with_add_bands_rows(ledger: Ledger) -> None:
    # The stage's own band writer (one unnest INSERT on Postgres) must leave exactly the rows
    # image_index.add_bands leaves, and re-adding must stay a no-op.
    from taisu_etl.db.image_index import add_bands
    from taisu_etl.db.schema import image_band
    from taisu_etl.images.dedup import phash_bands
    from taisu_etl.stages.fetch import _add_bands

    rows = [(i, phash_bands(f"{(i * 0x9E3779B97F4A7C15) & (2**64 - 1):016x}", 5)) for i in range(1, 41)]

    def table() -> set[tuple[int, int, str]]:
        with ledger.engine.connect() as conn:
            return {tuple(r) for r in conn.execute(sa.select(image_band.c.sample_id, image_band.c.band, image_band.c.value))}  # type: ignore[misc]

    add_bands(ledger, rows[:20])
    expected = table()
    _add_bands(ledger, rows[20:])
    _add_bands(ledger, rows)  # half already there: no error, no duplicates
    got = table()
    assert len(got) == 40 * 5
    assert expected <= got
    add_bands(ledger, rows[20:])  # the reference writer agrees with what the stage wrote
    assert table() == got
    _add_bands(ledger, [])


def test_every_stored_image_gets_its_bands(ledger: Ledger, tmp_path: Path) -> None:
    pairs = make_pairs(30, seed=21)
    with SyntheticWeb(pairs) as web:
        rows = [(web.url_for(p.id), f"第{i}张：湖边的一棵老树和远处的山") for i, p in enumerate(pairs)]
        prepare(ledger, write_list(tmp_path / "t.csv", rows))
        report = fetch_shard(ledger, LocalObjectStore(tmp_path / "o"), settings_for(web), ImageConfig(), decode_workers=1)
    assert report.states["fetched"] == 30
    with ledger.engine.connect() as conn:
        per_sample = dict(conn.execute(sa.text(
            "SELECT st.sample_id, COUNT(b.band) FROM sample_state st LEFT JOIN image_band b ON b.sample_id = st.sample_id "
            "WHERE st.state = 'fetched' GROUP BY st.sample_id")).all())
        events = conn.execute(sa.text("SELECT COUNT(*) FROM sample_event WHERE stage = 'fetch'")).scalar_one()
    assert len(per_sample) == 30 and set(per_sample.values()) == {ImageConfig().phash_distance + 1}
    assert events == 30  # one reason-coded event per sample
