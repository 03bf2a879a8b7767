"""A small ledger of stored, real images for the takedown tests: real sha256, real perceptual
hashes and their index bands, as the fetch stage records them."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from PIL import Image, ImageFilter

from taisu_etl.db.image_index import add_bands
from taisu_etl.db.ledger import Ledger, NewSample
from taisu_etl.db.schema import sample, sample_event, sample_state
from taisu_etl.images import ImageConfig, normalise_image
from taisu_etl.images.dedup import phash_bands
from taisu_etl.storage import ObjectStore
from taisu_etl.vocab import Stage, State

CONFIG = ImageConfig()


def photo(seed: int, size: int = 160) -> bytes:
    """A natural-looking picture (smooth shapes and noise), distinct per seed; a JPEG file as a web server would hold it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(x * rng.uniform(2, 9) + rng.uniform(0, 6)) * np.cos(y * rng.uniform(2, 9) + rng.uniform(0, 6))
                     for _ in range(3)], axis=-1)
    pixels = ((base + 1) * 110 + rng.normal(0, 6, base.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def rehosted(data: bytes) -> bytes:
    """The same picture as another site would serve it: scaled, slightly blurred, re-encoded at another quality."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB").resize((im.width * 3 // 4, im.height * 3 // 4), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(0.6))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=70)
    return buf.getvalue()


@dataclass
class Stored:
    sample_id: int
    url_id: str
    url: str
    sha256: str
    phash: str
    key: str


def add_stored(ledger: Ledger, store: ObjectStore, url: str, data: bytes, *, caption: str = "一只在草地上玩耍的小猫",
               state: State = State.ACCEPTED, taisu_id: str | None = None, duplicate_of: int | None = None) -> Stored:
    """One sample fetched from `url` with image `data`, stored and indexed, moved to `state`."""
    ledger.add_samples([NewSample(caption=caption, source="test.csv", url=url, source_pos="line 2", taisu_id=taisu_id)])
    with ledger.engine.connect() as conn:
        sid, uid = conn.execute(sa.select(sample.c.id, sample.c.url_id).where(sample.c.url == url, sample.c.caption == caption)).one()
    norm = normalise_image(data, CONFIG)
    put = store.put_image(norm.jpeg)
    updates = {"object_key": [put.key], "sha256": [norm.sha256], "phash": [norm.phash], "width": [norm.width],
               "height": [norm.height], "bytes": [put.size], "format": ["jpeg"]}
    if duplicate_of is not None:
        updates["duplicate_of"] = [duplicate_of]
    ledger.move([sid], from_state=State.INGESTED, to_state=State.FETCHED, stage=Stage.FETCH, reason="ok", updates=updates)
    add_bands(ledger, [(sid, phash_bands(norm.phash, CONFIG.phash_distance + 1))])
    if state != State.FETCHED:
        reason = "duplicate" if state == State.DUPLICATE else "ok"
        ledger.move([sid], from_state=State.FETCHED, to_state=state if state in (State.IMAGE_OK, State.DUPLICATE) else State.IMAGE_OK,
                    stage=Stage.IMAGE, reason=reason)
        if state not in (State.IMAGE_OK, State.DUPLICATE):
            ledger.move([sid], from_state=State.IMAGE_OK, to_state=state, stage=Stage.SCORE, reason="ok",
                        details={"model": "tiny-clip@test", "chunk": sid, "score": 0.3})
    return Stored(sid, uid, url, norm.sha256, norm.phash, put.key)


def state_of(ledger: Ledger, sample_id: int) -> str:
    with ledger.engine.connect() as conn:
        return conn.execute(sa.select(sample_state.c.state).where(sample_state.c.sample_id == sample_id)).scalar_one()


def events_of(ledger: Ledger, sample_id: int) -> list[tuple[str, str, str]]:
    with ledger.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(sample_event.c.stage, sample_event.c.to_state, sample_event.c.reason)
                                               .where(sample_event.c.sample_id == sample_id).order_by(sample_event.c.id))]
