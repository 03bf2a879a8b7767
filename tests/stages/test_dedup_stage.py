"""Near duplicates: a pHash match is confirmed on thumbnails before two samples are linked."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from taisu_etl.db.image_index import add_bands
from taisu_etl.db.ledger import Ledger, NewSample
from taisu_etl.images import ImageConfig, NormalisedImage, normalise_image
from taisu_etl.images.dedup import hamming, phash_bands
from taisu_etl.stages.dedup import dedup_shard
from taisu_etl.storage import LocalObjectStore
from taisu_etl.synthweb import Scene, render
from taisu_etl.urls import normalise_url
from taisu_etl.vocab import Stage, State

# Two different pictures whose pHashes are equal: a small orange circle on white and a small brown
# square on pink (seen in the demo, where pHash alone marked them as near duplicates).
CIRCLE = Scene(shape="圆形", colour="橙色", background="白色", size="小", position="下方", variant=2286719113)
SQUARE = Scene(shape="正方形", colour="棕色", background="粉色", size="小", position="下方", variant=2918835296)


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _store_fetched(ledger: Ledger, store: LocalObjectStore, images: list[bytes]) -> list[NormalisedImage]:
    config = ImageConfig()
    normalised = [normalise_image(data, config) for data in images]
    ledger.add_samples(NewSample(caption=f"第{i}张：测试图片的说明", source="t.csv", url=normalise_url(f"http://a.example.com/{i}.jpg"))
                       for i in range(len(images)))
    ids = list(range(1, len(images) + 1))
    keys = [store.put_image(n.jpeg).key for n in normalised]  # type: ignore[union-attr]
    ledger.move(ids, from_state=State.INGESTED, to_state=State.FETCHED, stage=Stage.FETCH, reason="ok", updates={
        "object_key": keys, "sha256": [n.sha256 for n in normalised], "phash": [n.phash for n in normalised],  # type: ignore[union-attr]
        "width": [n.width for n in normalised], "height": [n.height for n in normalised],  # type: ignore[union-attr]
    })
    add_bands(ledger, [(i, phash_bands(n.phash, config.phash_distance + 1)) for i, n in zip(ids, normalised)])  # type: ignore[union-attr]
    return normalised  # type: ignore[return-value]


def test_equal_phash_but_different_pictures_are_not_duplicates(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "o")
    circle, square = _store_fetched(ledger, store, [_jpeg(render(CIRCLE)), _jpeg(render(SQUARE))])
    assert hamming(circle.phash, square.phash) <= ImageConfig().phash_distance  # pHash alone would link them
    report = dedup_shard(ledger, store, ImageConfig())
    assert report.reasons == {"ok": 2}


def test_a_rescaled_reencoded_copy_is_a_near_duplicate(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "o")
    original = render(CIRCLE, size=(400, 400))
    copy = original.resize((300, 300), Image.Resampling.LANCZOS)
    _store_fetched(ledger, store, [_jpeg(original), _jpeg(copy, quality=60)])
    report = dedup_shard(ledger, store, ImageConfig())
    assert report.reasons == {"ok": 1, "near_duplicate": 1}
    assert ledger.events(2)[-1]["details"]["of"] == 1
