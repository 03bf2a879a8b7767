"""The schema has one source of truth: migrations match the tables, and sql/ matches migrations."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from taisu_etl.db.engine import make_engine
from taisu_etl.db.migrate import current_revision, head_revision, render_postgres_ddl, upgrade
from taisu_etl.db.schema import metadata
from taisu_etl.db.views import VIEWS, render_sql as render_views_sql

ROOT = Path(__file__).resolve().parents[2]


def test_upgrade_is_idempotent_and_matches_the_tables(ledger_url: str) -> None:
    engine = make_engine(ledger_url)
    before, after = upgrade(engine)
    assert before == after == head_revision() == current_revision(engine)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diffs == []
    engine.dispose()


def test_committed_postgres_ddl_is_the_rendered_migrations() -> None:
    committed = (ROOT / "sql" / "001_schema.sql").read_text()
    assert committed == render_postgres_ddl(), "regenerate with: taisu-etl db ddl > sql/001_schema.sql"


def test_committed_views_file_lists_every_view() -> None:
    text = (ROOT / "sql" / "002_views.sql").read_text()
    for name, select in VIEWS.items():
        assert f"CREATE VIEW {name} AS\n{select};" in text
    assert text == render_views_sql(), "regenerate with: python -m taisu_etl.db.views > sql/002_views.sql"


def test_upgrade_from_0001_keeps_the_data_and_fills_the_band_hashes(ledger_url: str) -> None:
    """A ledger made by revision 0001 (samples, bands, a published release) upgrades to head with its
    rows intact: each band row gets its image's whole pHash, and the release becomes version 1."""
    import sqlalchemy as sa
    from alembic import command

    from taisu_etl.db.migrate import alembic_config
    from taisu_etl.images.dedup import phash_bands, phash_int64

    engine = make_engine(ledger_url)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    hashes = {1: "ffffffffffffffff", 2: "0123456789abcdef"}
    with engine.begin() as conn:
        for sid, ph in hashes.items():
            conn.execute(sa.text("INSERT INTO sample (id, pair_hash, url_id, caption, caption_hash, source, phash, created_at, updated_at) "
                                 "VALUES (:i, :p, :u, 'c', 'h', 's', :ph, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                         {"i": sid, "p": f"p{sid}", "u": f"u{sid}", "ph": ph})
            for band, value in enumerate(phash_bands(ph)):
                conn.execute(sa.text("INSERT INTO image_band (sample_id, band, value) VALUES (:i, :b, :v)"), {"i": sid, "b": band, "v": value})
        conn.execute(sa.text("INSERT INTO release (id, name, state, manifest_key, created_at) VALUES (1, 'r', 'published', 'releases/r/manifest.json', CURRENT_TIMESTAMP)"))
    upgrade(engine)
    with engine.connect() as conn:
        got = dict(conn.execute(sa.text("SELECT sample_id, MIN(phash) FROM image_band GROUP BY sample_id HAVING MIN(phash) = MAX(phash)")).all())
        versions = conn.execute(sa.text("SELECT release_id, version FROM release_version")).all()
    assert got == {sid: phash_int64(ph) for sid, ph in hashes.items()}
    assert [tuple(v) for v in versions] == [(1, 1)]
    engine.dispose()
