"""Configurations shared by the image tests."""

from __future__ import annotations

import pytest

from taisu_etl.images import ImageConfig


@pytest.fixture(scope="session")
def config() -> ImageConfig:
    return ImageConfig()


@pytest.fixture(scope="session")
def lenient() -> ImageConfig:
    """Size checks out of the way, for tests about decoding of small inputs."""
    return ImageConfig(min_side=1, max_aspect=100.0)
