"""Fixtures of the takedown tests: the object store a takedown must leave empty, local and a versioned S3 bucket."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from taisu_etl.storage import LocalObjectStore, ObjectStore

from tests.storage.conftest import make_s3_store, s3_server  # noqa: F401  (fixtures, re-exported)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """A local folder, and a versioned bucket on the S3 server, where deleting must take every version."""
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    make: Callable[..., ObjectStore] = request.getfixturevalue("make_s3_store")
    return make(versioning=True)
