"""Fixtures shared by the whole suite: ledgers on SQLite and on the real Postgres.

Postgres: the suite creates its own database (`taisu_test_<pid>`) through the server named by
`TAISU_TEST_PG_ADMIN_URL` (default postgresql://postgres@127.0.0.1:5432/postgres) and drops it at
the end. A missing server is an error that says so, not a skip: these tests must run in CI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from taisu_etl.db.engine import make_engine  # noqa: E402
from taisu_etl.db.ledger import Ledger  # noqa: E402
from taisu_etl.db.migrate import upgrade  # noqa: E402
from taisu_etl.db.schema import metadata  # noqa: E402

PG_ADMIN_URL = os.environ.get("TAISU_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    admin_url = sa.engine.make_url(PG_ADMIN_URL)
    if admin_url.drivername == "postgresql":  # SQLAlchemy 2.1 would pick psycopg 3, which is not installed
        admin_url = admin_url.set(drivername="postgresql+psycopg2")
    name = f"taisu_test_{os.getpid()}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"the Postgres tests need a server at {admin_url.render_as_string(hide_password=True)} "
            f"({str(exc.orig).strip().splitlines()[0]}); start it (pg_ctlcluster --skip-systemctl-redirect "
            "$(ls /etc/postgresql) main start) or set TAISU_TEST_PG_ADMIN_URL",
            pytrace=False,
        )
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    upgrade(make_engine(url))
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def _empty_postgres(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        names = ", ".join(t.name for t in metadata.sorted_tables)
        conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    engine.dispose()


def migrated_ledger_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A freshly migrated, empty ledger of `kind` ("sqlite" or "postgres")."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        upgrade(make_engine(url))
        return url
    url = request.getfixturevalue("pg_url")
    _empty_postgres(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A freshly migrated, empty ledger on each database the product supports."""
    return migrated_ledger_url(request.param, request, tmp_path)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    led = Ledger.open(ledger_url, shards=4, recipe_version="test")
    yield led
    led.dispose()
