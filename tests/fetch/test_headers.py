"""X-Robots-Tag and Retry-After parsing."""

from __future__ import annotations

import email.utils

import pytest

from taisu_etl.fetch import find_noai, parse_retry_after

AGENT = "taisu-etl"


@pytest.mark.parametrize(
    "values, directive, scope",
    [
        (["noai"], "noai", None),
        (["noimageai"], "noimageai", None),
        (["NoAI"], "noai", None),
        (["noindex, noai"], "noai", None),
        (["noindex", "noimageai"], "noimageai", None),  # the header sent twice
        (["taisu-etl: noimageai"], "noimageai", AGENT),
        (["TAISU-ETL: noindex, noai"], "noai", AGENT),  # the prefix carries over the comma
        (["otherbot: noindex", "noai"], "noai", None),
        (["otherbot: noindex, taisu-etl: noai"], "noai", AGENT),
        (["*: noai"], "noai", "*"),
        (["unavailable_after: Friday, 25-Jun-2010 15:00:00 GMT, noai"], "noai", None),
    ],
)
def test_noai_directives_that_apply_to_us(values: list[str], directive: str, scope: str | None) -> None:
    found = find_noai(values, AGENT)
    assert found is not None
    assert (found.directive, found.agent) == (directive, scope)


@pytest.mark.parametrize(
    "values",
    [[], ["noindex, nofollow"], ["otherbot: noai"], ["otherbot: noindex, noai"], ["otherbot: noai, noimageai"],
     ["max-image-preview: large"], ["noimageindex"], ["noai-please"], ["taisu-etlx: noai"]],
)
def test_directives_that_do_not_opt_us_out(values: list[str]) -> None:
    assert find_noai(values, AGENT) is None


def test_retry_after_seconds_and_dates() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now=now) == pytest.approx(90.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0  # in the past
    for bad in (None, "", "soon", "-5", "nan", "inf"):
        assert parse_retry_after(bad) is None
