"""Put synthetic pairs straight into a ledger and store, as if they had been fetched and checked.

For tests and benchmarks of the stages after dedup (score, caption, release), which need many
stored `image_ok` samples and should not spend their time serving and fetching them.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

from taisu_etl.db.ledger import Ledger, NewSample
from taisu_etl.storage import ObjectStore
from taisu_etl.synthweb.scenes import DEFAULT_SIZE, Pair, render_jpegs
from taisu_etl.urls import normalise_url
from taisu_etl.vocab import Stage, State

_CHUNK = 2000


def seed_checked_pairs(
    ledger: Ledger, store: ObjectStore, pairs: Sequence[Pair], *, size: tuple[int, int] = DEFAULT_SIZE,
    state: State = State.IMAGE_OK, source: str = "synthweb.csv", workers: int = 1,
) -> dict[str, int]:
    """Add `pairs` as samples in `state` with their images stored; returns {pair id: sample id}.

    Every sample goes through the ledger's own moves (ingested → fetched → `state`), so its
    events look like a real run's. `state` must be one of fetched, image_ok, accepted.
    """
    if state not in (State.FETCHED, State.IMAGE_OK, State.ACCEPTED):
        raise ValueError(f"seed_checked_pairs makes fetched, image_ok or accepted samples, not {state}")
    ids: dict[str, int] = {}
    for start in range(0, len(pairs), _CHUNK):
        part = pairs[start:start + _CHUNK]
        ids.update(_seed_chunk(ledger, store, part, size, state, source, workers))
    return ids


def _url(pair: Pair) -> str:
    return normalise_url(f"http://synthweb.example.com/img/{pair.id}.jpg")


def _seed_chunk(
    ledger: Ledger, store: ObjectStore, pairs: Sequence[Pair], size: tuple[int, int], state: State, source: str, workers: int,
) -> dict[str, int]:
    jpegs = render_jpegs(pairs, size=size, workers=workers)
    ledger.add_samples(NewSample(caption=p.caption, source=source, url=_url(p), source_pos=p.id) for p in pairs)
    by_url = _ids_by_url(ledger, [_url(p) for p in pairs])
    ids = [by_url[_url(p)] for p in pairs]
    keys, shas, sizes = [], [], []
    for p in pairs:
        data = jpegs[p.id]
        put = store.put_image(data)
        keys.append(put.key)
        shas.append(hashlib.sha256(data).hexdigest())
        sizes.append(len(data))
    n = len(pairs)
    ledger.move(ids, from_state=State.INGESTED, to_state=State.FETCHED, stage=Stage.FETCH, reason="ok", updates={
        "object_key": keys, "sha256": shas, "width": [size[0]] * n, "height": [size[1]] * n, "bytes": sizes, "format": ["jpeg"] * n,
    })
    if state in (State.IMAGE_OK, State.ACCEPTED):
        ledger.move(ids, from_state=State.FETCHED, to_state=State.IMAGE_OK, stage=Stage.IMAGE, reason="ok")
    if state == State.ACCEPTED:
        ledger.move(ids, from_state=State.IMAGE_OK, to_state=State.ACCEPTED, stage=Stage.SCORE, reason="manual")
    return {p.id: i for p, i in zip(pairs, ids)}


def _ids_by_url(ledger: Ledger, urls: Iterable[str]) -> dict[str, int]:
    import sqlalchemy as sa

    from taisu_etl.db.schema import sample

    wanted = list(urls)
    out: dict[str, int] = {}
    with ledger.engine.connect() as conn:
        for i in range(0, len(wanted), 500):
            rows = conn.execute(sa.select(sample.c.url, sample.c.id).where(sample.c.url.in_(wanted[i:i + 500])))
            out.update({u: sid for u, sid in rows})
    return out
