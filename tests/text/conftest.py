import pytest

from taisu_etl.text import TextFilter, TextFilterConfig


@pytest.fixture(scope="session")
def default_filter() -> TextFilter:
    return TextFilter(TextFilterConfig())


@pytest.fixture(scope="session")
def mask_filter() -> TextFilter:
    return TextFilter(TextFilterConfig(pii_action="mask"))
