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
