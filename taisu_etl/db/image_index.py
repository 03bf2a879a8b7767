"""Ledger queries of the image stages: blocklist, perceptual-hash bands, duplicate candidates."""

from __future__ import annotations

from typing import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import blocklist, image_band, sample, sample_state
from taisu_etl.images.dedup import phash_from_bands, phash_int64
from taisu_etl.vocab import State

# States of samples whose stored image is a valid "first" copy for duplicate links.
KEEPER_STATES = (State.FETCHED, State.IMAGE_OK, State.SCORE_REJECTED, State.ACCEPTED, State.CAPTIONED)


def blocklist_values(ledger: Ledger, kind: str) -> set[str]:
    """Every blocklisted value of one kind (url | sha256 | phash | host).

    For reports and tools: a stage must not load this once and keep it for a whole task (a
    takedown during the task would not count); it checks per batch with `taisu_etl.takedown.guard`.
    """
    with ledger.engine.connect() as conn:
        return set(conn.execute(sa.select(blocklist.c.value).where(blocklist.c.kind == kind)).scalars())


def add_bands(ledger: Ledger, rows: Iterable[tuple[int, Sequence[str]]]) -> None:
    """Record the bands of stored images' perceptual hashes (re-adding one is a no-op)."""
    values = [{"sample_id": sid, "band": i, "value": v, "phash": phash_int64(phash_from_bands(bands))}
              for sid, bands in rows for i, v in enumerate(bands)]
    if not values:
        return
    insert = (postgresql.insert if ledger.is_postgres else sqlite_insert)(image_band).on_conflict_do_nothing()
    with ledger.engine.begin() as conn:
        for i in range(0, len(values), 5000):
            conn.execute(insert, values[i : i + 5000])


def first_with_sha256(ledger: Ledger, hashes: Iterable[str]) -> dict[str, int]:
    """For each sha256, the smallest sample id holding it among samples that keep their image."""
    wanted = sorted(set(hashes))
    out: dict[str, int] = {}
    if not wanted:
        return out
    with ledger.engine.connect() as conn:
        for i in range(0, len(wanted), 500):
            rows = conn.execute(
                sa.select(sample.c.sha256, sa.func.min(sample.c.id))
                .join(sample_state, sample_state.c.sample_id == sample.c.id)
                .where(sample.c.sha256.in_(wanted[i : i + 500]), sample_state.c.state.in_([s.value for s in KEEPER_STATES]))
                .group_by(sample.c.sha256)
            )
            out.update({h: n for h, n in rows})
    return out


def band_candidates(ledger: Ledger, bands: Iterable[tuple[int, str]]) -> list[tuple[int, str, str]]:
    """(sample id, phash, object key) of kept images sharing any of the given (band, value) pairs."""
    pairs = sorted(set(bands))
    found: dict[int, tuple[str, str]] = {}
    with ledger.engine.connect() as conn:
        for i in range(0, len(pairs), 400):
            chunk = pairs[i : i + 400]
            cond = sa.or_(*[sa.and_(image_band.c.band == b, image_band.c.value == v) for b, v in chunk])
            rows = conn.execute(
                sa.select(sample.c.id, sample.c.phash, sample.c.object_key)
                .select_from(image_band.join(sample, sample.c.id == image_band.c.sample_id).join(sample_state, sample_state.c.sample_id == sample.c.id))
                .where(cond, sample_state.c.state.in_([s.value for s in KEEPER_STATES]))
            )
            found.update({sid: (ph, key) for sid, ph, key in rows if ph})
    return sorted((sid, ph, key) for sid, (ph, key) in found.items())
