"""Ingest: URL/caption lists become `sample` rows (state `ingested`), bad rows are counted.

Reading streams and writes in batches, so memory stays flat whatever the file size. Re-ingesting
a file adds nothing: pairs collapse on their normalised URL and caption. A row whose URL or host
is on the takedown blocklist is refused like a bad row (reason `blocklisted`, with its file and
line): a taken-down image never comes back through a new list.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from taisu_etl.db.context import RunContext
from taisu_etl.db.ledger import AddResult, Ledger, NewSample
from taisu_etl.sources import BadRow, SourceRow, SourceStats, read_source, read_taisu
from taisu_etl.sources.taisu import image_kind
from taisu_etl.storage import ObjectStore
from taisu_etl.takedown.guard import blocked_by_url
from taisu_etl.urls import taisu_slice_id

log = logging.getLogger(__name__)

# Recorded as the model of TaiSu's shipped generated captions, so they are never confused with ours.
TAISU_GENERATED_MODEL = "taisu-release"
_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif"}
_BLOCKLIST_BATCH = 1000  # rows looked up in the blocklist per query


@dataclass
class IngestReport:
    path: str
    stats: SourceStats = field(default_factory=SourceStats)
    added: AddResult = field(default_factory=AddResult)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.path}: {self.added.inserted:,} new samples, {self.added.duplicates:,} already known, "
            f"{self.stats.bad_total:,} bad rows ({self.seconds:.1f} s)\n{self.stats.summary()}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "read": self.stats.read, "new": self.added.inserted, "duplicates": self.added.duplicates,
            "bad": dict(self.stats.bad), "seconds": round(self.seconds, 3),
        }


class _IssueSink:
    """Collects bad rows and writes them to the ledger in batches (memory stays flat)."""

    def __init__(self, ledger: Ledger, ctx: RunContext | None, batch_size: int = 5000) -> None:
        self.ledger, self.ctx, self.batch_size = ledger, ctx, batch_size
        self.pending: list[tuple[str, str, str, str]] = []

    def add(self, bad: BadRow) -> None:
        self.pending.append((bad.origin, bad.position, bad.reason, bad.detail))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.ledger.record_issues(self.pending, ctx=self.ctx)
            self.pending = []


def _refuse_blocklisted(ledger: Ledger, records: Iterable[SourceRow | BadRow], batch: int = _BLOCKLIST_BATCH) -> Iterator[SourceRow | BadRow]:
    """The records in order, each row whose URL or host is blocklisted turned into a bad row; one query per batch."""

    def checked(pending: list[SourceRow | BadRow]) -> Iterator[SourceRow | BadRow]:
        rows = [{"id": i, "url": r.normalised_url} for i, r in enumerate(pending) if isinstance(r, SourceRow) and r.normalised_url]
        refused = blocked_by_url(ledger, rows) if rows else {}
        for i, rec in enumerate(pending):
            if i in refused:
                assert isinstance(rec, SourceRow)
                yield BadRow(rec.origin, rec.position, "blocklisted", f"{refused[i]} on the takedown blocklist: {rec.normalised_url}", rec.line)
            else:
                yield rec

    pending: list[SourceRow | BadRow] = []
    for rec in records:
        pending.append(rec)
        if len(pending) >= batch:
            yield from checked(pending)
            pending = []
    yield from checked(pending)


def _samples(records: Iterator[SourceRow | BadRow], source: str, issues: _IssueSink) -> Iterator[NewSample]:
    for rec in records:
        if isinstance(rec, BadRow):
            issues.add(rec)
            continue
        if rec.normalised_url is None:
            continue
        yield NewSample(
            caption=rec.caption or "",
            source=source,
            url=rec.normalised_url,
            source_pos=rec.position,
            taisu_id=taisu_slice_id(rec.url or rec.normalised_url),
        )


def ingest_file(
    ledger: Ledger, path: str | Path, *, fmt: str | None = None, ctx: RunContext | None = None,
    batch_size: int = 5000, progress_every: int = 500_000, **reader_options: Any,
) -> IngestReport:
    """Stream one URL-list file (CSV/TSV/JSONL/Parquet) into the ledger."""
    report = IngestReport(path=str(path))
    started = time.perf_counter()
    records = report.stats.track(_refuse_blocklisted(ledger, read_source(path, fmt=fmt, **reader_options)))

    def with_progress(rows: Iterator[NewSample]) -> Iterator[NewSample]:
        for n, row in enumerate(rows, 1):
            if n % progress_every == 0:
                log.info("%s: %s rows read, %.0f rows/s", path, f"{report.stats.read:,}", report.stats.read / (time.perf_counter() - started))
            yield row

    issues = _IssueSink(ledger, ctx)
    report.added = ledger.add_samples(with_progress(_samples(records, str(path), issues)), ctx=ctx, batch_size=batch_size)
    issues.flush()
    report.seconds = time.perf_counter() - started
    return report


def ingest_taisu(
    ledger: Ledger, store: ObjectStore, archives: Sequence[str | Path], captions: Sequence[str | Path], *,
    ctx: RunContext | None = None, batch_size: int = 2000, index_dir: str | Path | None = None,
) -> IngestReport:
    """Ingest TaiSu's released archives: images go to the object store, captions to the ledger.

    Each image is stored under its sha256 as shipped; its sample carries the object key, so the
    text filter moves it straight to `fetched` (no download). TaiSu's generated caption `g` is
    kept as the sample's generated caption. Images without captions, captions without images and
    damaged members are recorded as ingest issues with their archive and member.
    """
    report = IngestReport(path=", ".join(str(a) for a in archives))
    started = time.perf_counter()
    issues = _IssueSink(ledger, ctx)
    records = report.stats.track(_refuse_blocklisted(ledger, read_taisu(list(archives), list(captions), index_dir=index_dir),
                                                        batch=_BLOCKLIST_BATCH // 5))  # rows hold their images

    def samples() -> Iterator[NewSample]:
        for rec in records:
            if isinstance(rec, BadRow):
                issues.add(rec)
                continue
            assert rec.image is not None and rec.source_id is not None
            ext = _EXT.get(image_kind(rec.image) or "", "jpg")
            put = store.put_image(rec.image, ext=ext)
            fields: dict[str, Any] = {"object_key": put.key, "sha256": put.sha256, "bytes": put.size, "format": ext}
            if rec.generated_caption:
                fields.update(gen_caption=rec.generated_caption, gen_caption_model=TAISU_GENERATED_MODEL)
            yield NewSample(
                caption=rec.caption or "",
                source=rec.origin,
                url=rec.normalised_url,
                identity=f"taisu:{rec.source_id}",
                source_pos=rec.position,
                taisu_id=rec.source_id,
                fields=fields,
            )

    report.added = ledger.add_samples(samples(), ctx=ctx, batch_size=batch_size)
    issues.flush()
    report.seconds = time.perf_counter() - started
    return report
