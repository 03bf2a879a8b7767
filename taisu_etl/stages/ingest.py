"""Ingest: URL/caption lists become `sample` rows (state `ingested`), bad rows are counted.

Reading streams and writes in batches, so memory stays flat whatever the file size. Re-ingesting
a file adds nothing: pairs collapse on their normalised URL and caption.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from taisu_etl.db.context import RunContext
from taisu_etl.db.ledger import AddResult, Ledger, NewSample
from taisu_etl.sources import BadRow, SourceRow, SourceStats, read_source
from taisu_etl.urls import taisu_slice_id

log = logging.getLogger(__name__)


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


def _samples(records: Iterator[SourceRow | BadRow], source: str) -> Iterator[NewSample]:
    for rec in records:
        if isinstance(rec, BadRow) or rec.normalised_url is None:
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
    records = report.stats.track(read_source(path, fmt=fmt, **reader_options))

    def with_progress(rows: Iterator[NewSample]) -> Iterator[NewSample]:
        for n, row in enumerate(rows, 1):
            if n % progress_every == 0:
                log.info("%s: %s rows read, %.0f rows/s", path, f"{report.stats.read:,}", report.stats.read / (time.perf_counter() - started))
            yield row

    report.added = ledger.add_samples(with_progress(_samples(records, str(path))), ctx=ctx, batch_size=batch_size)
    report.seconds = time.perf_counter() - started
    return report
