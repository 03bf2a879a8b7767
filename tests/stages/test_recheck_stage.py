"""Recheck of stored samples' URLs: alive, expired, changed (a new candidate, the stored image kept)."""

from __future__ import annotations

import sqlalchemy as sa

from taisu_etl.db.ledger import Ledger, NewSample
from taisu_etl.fetch.settings import FetchSettings
from taisu_etl.images import ImageConfig, normalise_image
from taisu_etl.synthweb import SyntheticWeb, make_pairs
from taisu_etl.urls import normalise_url
from taisu_etl.vocab import Stage, State


def test_recheck_tells_alive_expired_and_changed_apart(ledger: Ledger) -> None:
    from taisu_etl.stages.recheck import recheck

    pairs = make_pairs(2, seed=12)
    with SyntheticWeb(pairs) as web:
        alive, changed, gone = web.url_for(pairs[0].id), web.url_for(pairs[1].id), web.url("/img/no-longer-here.jpg")
        stored = normalise_image(pairs[0].jpeg(), ImageConfig()).sha256
        ledger.add_samples([NewSample(caption=f"第{i}张：雪山下的湖泊", source="s.csv", url=normalise_url(u)) for i, u in enumerate((alive, changed, gone))])
        ledger.move([1, 2, 3], from_state=State.INGESTED, to_state=State.IMAGE_OK, stage=Stage.IMAGE, reason="ok",
                    updates={"sha256": [stored, "0" * 64, "1" * 64], "object_key": ["k1", "k2", "k3"]})
        settings = FetchSettings(allow_loopback=(web.netloc,), per_host_rate=None)
        report = recheck(ledger, settings, ImageConfig(), limit=10, rate=100)
    assert report.reasons == {"url_alive": 1, "url_changed": 1, "http_404": 1} and report.new_candidates == 1
    # States and stored images are untouched; the reason that put each sample there is kept.
    assert ledger.funnel() == {"image_ok": 3, "ingested": 1}
    assert {(s, r) for s, r, _ in ledger.reason_counts()} == {("image_ok", "ok"), ("ingested", "ingested")}
    with ledger.engine.connect() as conn:
        new = conn.execute(sa.text("SELECT url, source, source_pos FROM sample WHERE id = 4")).one()
        keys = conn.execute(sa.text("SELECT object_key FROM sample WHERE id <= 3 ORDER BY id")).scalars().all()
    assert (new.url, new.source, new.source_pos) == (normalise_url(changed), "recheck", "sample 2")
    assert keys == ["k1", "k2", "k3"]
    gone_event = ledger.events(3)[-1]
    assert (gone_event["stage"], gone_event["reason"], gone_event["details"]["expired"]) == ("recheck", "http_404", True)
