"""One small SyntheticWeb for the whole synthweb suite, tuned so the slow routes stay quick:
the drip delivers a whole image in about a quarter of a second, the huge body is 3 MiB."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from taisu_etl.synthweb import Pair, SyntheticWeb, make_pairs

HUGE = 3 << 20
GZIP_BOMB = 8 << 20
STALL = 20.0  # slow-headers: far longer than any client timeout the tests use


@pytest.fixture(scope="session")
def pairs() -> list[Pair]:
    return make_pairs(30, seed=3, mismatch_rate=0.2)


@pytest.fixture(scope="session")
def web(pairs: list[Pair]) -> Iterator[SyntheticWeb]:
    with SyntheticWeb(
        pairs,
        drip_interval=0.02,
        drip_bytes=256,
        stall_seconds=STALL,
        huge_bytes=HUGE,
        gzip_bomb_bytes=GZIP_BOMB,
        retry_after=7,
    ) as server:
        yield server
