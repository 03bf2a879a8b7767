"""Orphan images: objects under `images/` that no ledger row points to, and their removal.

Every stored image is named by the sha256 of its bytes and recorded in `sample.object_key` by the
stage that stored it. An object no sample names is an orphan: a fetch or ingest that stored the
image and then died before its ledger write, or a TaiSu archive image that the image stage
replaced by its normalised copy. Orphans cost storage and nothing else, so the sweep is careful:

- Only objects older than `min_age` are candidates. The fetch stage PUTs an image before the
  ledger write that records it lands (it writes in batches), so a younger object may be about to
  be referenced. The grace period must exceed that window by far: hours, not seconds.
- An object is an orphan only when no `sample.object_key` equals its key. Rows are found by the
  sha256 index first (one cheap lookup per listed page); whatever that does not explain is checked
  against `object_key` itself before anything is called an orphan.
- Right before deleting, each orphan is checked once more: a ledger row that landed since (an
  ingest that found the old object already stored) or a newer write of the object spares it.
- Every version of an orphan is removed (`delete_all_versions`), so a versioned bucket gives the
  space back too.
- `releases/` and `embeddings/` are never touched: a release is kept by its manifest, not by a
  sample row, and embeddings are keyed by model and id range, so no row points to them at all and
  "no row points to it" proves nothing there.

The store must belong to this ledger alone: images another ledger records look like orphans here.
A ledger that records no stored image at all while the store holds old images is taken for the
wrong ledger, and nothing is deleted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from taisu_etl.db.schema import sample
from taisu_etl.errors import TaisuError
from taisu_etl.storage import ObjectStore
from taisu_etl.storage.base import ObjectInfo

if TYPE_CHECKING:
    from taisu_etl.db.ledger import Ledger

IMAGES_PREFIX = "images/"
LIST_PAGE = 1000      # listed objects looked up in the ledger at once
EXACT_CHECK = 5000    # candidate keys per `object_key IN (...)` query (SQLite allows 32766 variables)
KEYS_KEPT = 1000      # orphan keys a report lists, for people to look at
_IMAGE_KEY = re.compile(r"images/[0-9a-f]{2}/[0-9a-f]{2}/([0-9a-f]{64})\.[a-z0-9]{1,16}")


class WrongLedgerError(TaisuError):
    """The ledger records no stored image while the store holds some: deleting would empty the store."""


@dataclass
class OrphanReport:
    """What a sweep of `images/` found and, unless `dry_run`, removed."""

    store: str
    dry_run: bool
    min_age_s: float
    cutoff: str                 # ISO time: objects last written after it were not examined
    listed: int = 0             # objects under images/
    listed_bytes: int = 0
    recent: int = 0             # younger than the grace period: not examined
    referenced: int = 0         # named by a sample's object_key
    orphans: int = 0            # old enough and named by no sample
    orphan_bytes: int = 0
    removed: int = 0            # orphans deleted (0 in a dry run)
    removed_bytes: int = 0
    versions_removed: int = 0   # object versions and delete markers deleted with them
    spared: int = 0             # orphans found referenced or rewritten when re-checked before deletion
    keys: list[str] = field(default_factory=list)  # the first KEYS_KEPT orphan keys
    seconds: float = 0.0

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        done = self.orphans if self.dry_run else self.removed
        done_bytes = self.orphan_bytes if self.dry_run else self.removed_bytes
        spared = f", {self.spared:,} spared on re-check" if self.spared else ""
        return (
            f"orphan images in {self.store}: {self.listed:,} objects under {IMAGES_PREFIX} "
            f"({self.listed_bytes / 1e6:,.1f} MB), {self.referenced:,} referenced, {self.recent:,} younger than "
            f"{self.min_age_s / 3600:g} h (not examined), {self.orphans:,} orphans ({self.orphan_bytes / 1e6:,.1f} MB); "
            f"{verb} {done:,} ({done_bytes / 1e6:,.1f} MB){spared}"
            f"{'' if self.dry_run else f', {self.versions_removed:,} object versions'} in {self.seconds:.1f} s"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_orphan_objects(
    ledger: Ledger, store: ObjectStore, *, min_age: timedelta, now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> OrphanReport:
    """The orphan images of `store` older than `min_age` (first KEYS_KEPT keys in `.keys`); deletes nothing."""
    return remove_orphan_objects(ledger, store, min_age=min_age, dry_run=True, now=now, progress=progress)


def remove_orphan_objects(
    ledger: Ledger, store: ObjectStore, *, min_age: timedelta, dry_run: bool = False, now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> OrphanReport:
    """Delete (every version of) each image no sample names that was last written before now - min_age.

    Raises WrongLedgerError, having deleted nothing, when the ledger records no stored image at all
    while old images are in the store.
    """
    if min_age < timedelta(0):
        raise ValueError(f"the grace period cannot be negative, got {min_age}")
    started = time.perf_counter()
    cutoff = (now or datetime.now(UTC)) - min_age
    report = OrphanReport(store=store.describe(), dry_run=dry_run, min_age_s=min_age.total_seconds(), cutoff=cutoff.isoformat())
    say = progress or (lambda line: None)
    engine = ledger.engine
    records_images = _records_any_image(engine)
    candidates: list[ObjectInfo] = []

    def settle() -> None:
        orphans = _unreferenced(engine, candidates, report)
        candidates.clear()
        if not orphans:
            return
        if not dry_run and not records_images:
            raise WrongLedgerError(
                f"the ledger at {engine.url.render_as_string(hide_password=True)} records no stored image, yet "
                f"{store.describe()} holds images older than {min_age}: is this the ledger of this store? "
                "Nothing was deleted; run with dry_run to list them"
            )
        for info in orphans:
            report.orphans += 1
            report.orphan_bytes += info.size
            if len(report.keys) < KEYS_KEPT:
                report.keys.append(info.key)
        if not dry_run:
            _delete(engine, store, orphans, cutoff, report)

    for page in _pages(store.list(IMAGES_PREFIX), LIST_PAGE):
        report.listed += len(page)
        report.listed_bytes += sum(i.size for i in page)
        old = [i for i in page if i.last_modified <= cutoff]
        report.recent += len(page) - len(old)
        named = _referenced_by_sha256(engine, [i.key for i in old])
        report.referenced += sum(1 for i in old if i.key in named)
        candidates.extend(i for i in old if i.key not in named)
        if len(candidates) >= EXACT_CHECK:
            settle()
        if report.listed % (LIST_PAGE * 100) == 0:
            say(f"orphan sweep: {report.listed:,} objects listed, {report.orphans:,} orphans so far")
    settle()
    report.seconds = time.perf_counter() - started
    return report


def _pages(items: Iterable[ObjectInfo], size: int) -> Iterator[list[ObjectInfo]]:
    page: list[ObjectInfo] = []
    for item in items:
        page.append(item)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page


def _records_any_image(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.select(sample.c.id).where(sample.c.object_key.is_not(None)).limit(1)).first() is not None


def _referenced_by_sha256(engine: sa.Engine, keys: Sequence[str]) -> set[str]:
    """Those of `keys` a sample names, found through the sha256 index (content-addressed keys only)."""
    digests = {m.group(1) for k in keys if (m := _IMAGE_KEY.fullmatch(k))}
    if not digests:
        return set()
    wanted = set(keys)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sample.c.object_key).where(sample.c.sha256.in_(sorted(digests))))
        return {key for (key,) in rows if key in wanted}


def _referenced_exactly(engine: sa.Engine, keys: Sequence[str]) -> set[str]:
    """Those of `keys` some sample's object_key equals (no index on object_key: used on few keys)."""
    found: set[str] = set()
    with engine.connect() as conn:
        for start in range(0, len(keys), EXACT_CHECK):
            chunk = list(keys[start:start + EXACT_CHECK])
            found.update(key for (key,) in conn.execute(sa.select(sample.c.object_key).where(sample.c.object_key.in_(chunk))))
    return found


def _unreferenced(engine: sa.Engine, candidates: Sequence[ObjectInfo], report: OrphanReport) -> list[ObjectInfo]:
    if not candidates:
        return []
    named = _referenced_exactly(engine, [i.key for i in candidates])
    report.referenced += len(named)
    return [i for i in candidates if i.key not in named]


def _delete(engine: sa.Engine, store: ObjectStore, orphans: Sequence[ObjectInfo], cutoff: datetime, report: OrphanReport) -> None:
    for start in range(0, len(orphans), LIST_PAGE):
        chunk = orphans[start:start + LIST_PAGE]
        # A row may have landed since the listing: an ingest that found the object already stored
        # records it without writing it again (so its time stays old). Its sha256 names it.
        named = _referenced_by_sha256(engine, [i.key for i in chunk])
        for info in chunk:
            now_info = store.stat(info.key)
            if info.key in named or now_info is None or now_info.last_modified > cutoff:
                # Referenced now, written again (a fetch re-stored it: it is about to be recorded),
                # or already gone: leave it.
                report.spared += 1
                continue
            report.versions_removed += store.delete_all_versions(info.key)
            report.removed += 1
            report.removed_bytes += now_info.size
