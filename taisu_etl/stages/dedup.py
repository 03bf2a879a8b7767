"""Image stage: `fetched` samples become `image_ok`, `duplicate` or `image_rejected`.

Exact duplicates share a sha256 (of the normalised bytes). Near duplicates have perceptual hashes
within `phash_distance` bits, found through the hash bands the fetch stage recorded, and are then
confirmed on small colour thumbnails of both stored images: pHash sees only coarse grey-level
structure, so a small red circle and a small green square on flat backgrounds can share one hash. A duplicate is
linked (`duplicate_of`) to the smallest-id sample holding the image, whatever its shard, so the
result does not depend on which shard ran first. Run it after every fetch task of the run.

Samples whose bytes came from an archive (TaiSu's release) were never decoded: they are decoded,
checked and re-encoded here, exactly as fetched images are.

A blocklisted image (URL, host, sha256, or a perceptual hash within the distance) is never
promoted: it becomes `image_rejected` with reason `blocklisted`, checked before anything is stored
and again just before the ledger write, and `sweep_after_move` then deletes the stored image of
every sample of the batch that is blocklisted or was taken down meanwhile.
"""

from __future__ import annotations

import functools
import io
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from taisu_etl.db.context import RunContext
from taisu_etl.db.image_index import add_bands, band_candidates, first_with_sha256
from taisu_etl.db.ledger import Ledger, Outcome
from taisu_etl.images import DecodePool, DecodeResult, ImageConfig, ImageRejection, normalise_image
from taisu_etl.images.dedup import hamming, phash_bands
from taisu_etl.storage import ObjectStore
from taisu_etl.takedown import guard
from taisu_etl.vocab import Stage, State

_COLUMNS = ("id", "url", "sha256", "phash", "width", "object_key")


@dataclass
class DedupReport:
    shard: int | None
    seen: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> str:
        where = f"shard {self.shard}" if self.shard is not None else "all shards"
        why = ", ".join(f"{r} {n:,}" for r, n in self.reasons.most_common() if r != "ok")
        return f"image checks and dedup, {where}: {self.seen:,} images, {self.reasons.get('ok', 0):,} kept; {why or 'no duplicates'}"

    def as_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "seen": self.seen, "reasons": dict(self.reasons), "seconds": round(self.seconds, 3)}


def _normalised_archived(row: dict[str, Any], decoded: DecodeResult, store: ObjectStore) -> Outcome | dict[str, Any]:
    """An archived image's decode result as a rejection, or the row with its normalised image's fields."""
    if isinstance(decoded, ImageRejection):
        to = State.IMAGE_REJECTED if decoded.reason in ("too_small", "bad_aspect") else State.FETCH_FAILED
        return Outcome(row["id"], to, decoded.reason, {"image": decoded.detail, "archived": row["object_key"]})
    put = store.put_image(decoded.jpeg)
    fields = {"object_key": put.key, "sha256": decoded.sha256, "phash": decoded.phash, "width": decoded.width,
              "height": decoded.height, "bytes": put.size, "format": decoded.source_format}
    return {**row, **fields, "_updates": fields}


# Thumbnail check: a re-encoded or rescaled copy changes almost no thumbnail pixel by more than
# this much (0-255 per channel); a different object or colour changes a block of them.
_PIXEL_TOLERANCE = 48
_MAX_CHANGED_SHARE = 0.01
_THUMB = 32


class _Thumbnails:
    """Small RGB thumbnails of stored images, decoded once per run."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.cache: dict[str, bytes] = {}

    def get(self, key: str) -> bytes:
        if key not in self.cache:
            with Image.open(io.BytesIO(self.store.get(key))) as im:
                im.draft("RGB", (_THUMB * 4, _THUMB * 4))  # decode JPEGs at reduced scale: cheap
                self.cache[key] = im.convert("RGB").resize((_THUMB, _THUMB), Image.Resampling.BILINEAR).tobytes()
        return self.cache[key]

    def same_picture(self, key_a: str, key_b: str) -> bool:
        a, b = self.get(key_a), self.get(key_b)
        pixels = len(a) // 3
        changed = sum(
            1 for i in range(0, len(a), 3)
            if max(abs(a[i] - b[i]), abs(a[i + 1] - b[i + 1]), abs(a[i + 2] - b[i + 2])) > _PIXEL_TOLERANCE
        )
        return changed <= _MAX_CHANGED_SHARE * pixels


def dedup_shard(
    ledger: Ledger, store: ObjectStore, image: ImageConfig, *, shard: int | None = None, ctx: RunContext | None = None,
    batch_size: int = 2000,
) -> DedupReport:
    report = DedupReport(shard=shard)
    started = time.perf_counter()
    thumbs = _Thumbnails(store)
    bands_n = image.phash_distance + 1
    pool: DecodePool | None = None  # started only if archived images turn up: most runs have none
    after = 0
    try:
        while rows := ledger.scan(state=State.FETCHED, shard=shard, after_id=after, limit=batch_size, columns=_COLUMNS):
            after = rows[-1]["id"]
            archived = [r for r in rows if r["width"] is None and r["object_key"]]
            if archived and pool is None:
                # The same isolated decoders as the fetch stage: archived bytes are untrusted too.
                pool = DecodePool(image, fn=functools.partial(normalise_image, apply_checks=True), timeout_s=image.decode_timeout_s)
            decoded = dict(zip((r["id"] for r in archived), pool.map([store.get(r["object_key"]) for r in archived]))) if archived else {}
            report.seen += len(rows)
            report.reasons.update(_dedup_batch(ledger, store, image, thumbs, rows, decoded, bands_n, ctx))
    finally:
        if pool is not None:
            pool.close()
    report.seconds = time.perf_counter() - started
    return report


def _blocklisted(sample_id: int, why: str) -> Outcome:
    return Outcome(sample_id, State.IMAGE_REJECTED, "blocklisted", {"by": why})


def _dedup_batch(
    ledger: Ledger, store: ObjectStore, image: ImageConfig, thumbs: _Thumbnails, rows: list[dict[str, Any]],
    decoded: dict[int, DecodeResult], bands_n: int, ctx: RunContext | None,
) -> dict[str, int]:
    distance = image.phash_distance
    outcomes: list[Outcome] = []
    ready: list[dict[str, Any]] = []
    # Archived images are checked on their normalised hashes, before their new bytes are stored.
    normalised = [{"id": sid, "sha256": d.sha256, "phash": d.phash} for sid, d in decoded.items() if not isinstance(d, ImageRejection)]
    refused = {**guard.blocked_images(ledger, normalised, max_distance=distance), **guard.blocked_samples(ledger, rows, max_distance=distance)}
    stored: dict[int, list[str]] = {}
    for row in rows:
        if row["id"] in refused:
            outcomes.append(_blocklisted(row["id"], refused[row["id"]]))
            continue
        if row["id"] in decoded:
            result = _normalised_archived(row, decoded[row["id"]], store)
            if isinstance(result, Outcome):
                outcomes.append(result)
                continue
            stored[row["id"]] = [result["object_key"]]
            add_bands(ledger, [(row["id"], phash_bands(result["phash"], bands_n))])
            row = result
        ready.append(row)
    first = first_with_sha256(ledger, (r["sha256"] for r in ready))
    wanted = {(i, v) for r in ready if r["phash"] for i, v in enumerate(phash_bands(r["phash"], bands_n))}
    candidates = band_candidates(ledger, wanted)  # sorted by id: the first confirmed one is the earliest
    for row in ready:
        updates = row.pop("_updates", {})
        earliest = first.get(row["sha256"])
        if earliest is not None and earliest < row["id"]:
            outcomes.append(Outcome(row["id"], State.DUPLICATE, "duplicate", {"of": earliest}, {**updates, "duplicate_of": earliest}))
            continue
        near = next((
            (cid, d) for cid, ph, key in candidates
            if cid < row["id"] and row["phash"] and (d := hamming(ph, row["phash"])) <= image.phash_distance
            and thumbs.same_picture(key, row["object_key"])
        ), None)
        if near is not None:
            cid, distance = near
            outcomes.append(Outcome(row["id"], State.DUPLICATE, "near_duplicate", {"of": cid, "distance": distance},
                                    {**updates, "duplicate_of": cid}))
            continue
        outcomes.append(Outcome(row["id"], State.IMAGE_OK, "ok", None, updates))
    # Once more just before the write: the blocklist may have grown while this batch was decided.
    late = guard.blocked_samples(ledger, ready, max_distance=distance)
    outcomes = [_blocklisted(o.sample_id, late[o.sample_id]) if o.sample_id in late else o for o in outcomes]
    counts = ledger.apply(outcomes, from_state=State.FETCHED, stage=Stage.IMAGE, ctx=ctx)
    guard.sweep_after_move(ledger, store, [r["id"] for r in rows], stored=stored, max_distance=distance)
    return counts
