"""Fixtures for the release tests: a seeded ledger (SQLite and Postgres) and object stores (local and S3)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from taisu_etl.db.ledger import Ledger
from taisu_etl.storage import LocalObjectStore, ObjectStore

from tests.storage.conftest import make_s3_store, s3_server  # noqa: F401  (fixtures, re-exported)

from .support import Seeded, seed


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    make: Callable[..., ObjectStore] = request.getfixturevalue("make_s3_store")
    return make()


@pytest.fixture
def local_store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


@pytest.fixture
def seeded(ledger: Ledger, local_store: LocalObjectStore) -> Seeded:
    return seed(ledger, local_store)


@pytest.fixture
def sqlite_ledger(tmp_path: Path):
    """A SQLite ledger only, for the tests whose subject is not the database."""
    from taisu_etl.db.engine import make_engine
    from taisu_etl.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'ledger-sqlite.db'}"
    upgrade(make_engine(url))
    led = Ledger.open(url, shards=4, recipe_version="test")
    yield led
    led.dispose()
