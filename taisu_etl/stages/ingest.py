"""Ingest: URL/caption lists become `sample` rows (state `ingested`), bad rows are counted.

Reading streams and writes in batches, so memory stays flat whatever the file size. Re-ingesting
a file adds nothing: pairs collapse on their normalised URL and caption. A row whose URL or host
is on the takedown blocklist is refused like a bad row (reason `blocklisted`, with its file and
line): a taken-down image never comes back through a new list.

A row with a NUL character in a field the ledger stores is a bad row too (`nul_char`): Postgres
text cannot hold NUL, and one such row would otherwise fail its whole batch.

A file that breaks off part-way (truncated or corrupt compressed data, corrupt Parquet, a cut
archive) keeps every row read before the break; the break is recorded as a `truncated_input`
issue naming the last good line, and then the ingest fails (`IngestBrokeOff`), because it did not
do all its work. Ingesting the repaired file adds exactly the missing rows (pairs collapse), and
a file read whole clears the breaks recorded for it earlier.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import sqlalchemy as sa

from taisu_etl.db.context import RunContext
from taisu_etl.db.ledger import AddResult, Ledger, NewSample
from taisu_etl.db.schema import ingest_issue
from taisu_etl.errors import InputError
from taisu_etl.sources import BadRow, SourceRow, SourceStats, TruncatedInput, read_source, read_taisu
from taisu_etl.sources.records import nul_field, nul_row
from taisu_etl.sources.taisu import image_kind
from taisu_etl.storage import ObjectStore
from taisu_etl.takedown.guard import blocked_by_url
from taisu_etl.urls import taisu_identity, taisu_slice_id

log = logging.getLogger(__name__)

# Recorded as the model of TaiSu's shipped generated captions, so they are never confused with ours.
TAISU_GENERATED_MODEL = "taisu-release"
_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif"}
_BLOCKLIST_BATCH = 1000  # rows looked up in the blocklist per query
TRUNCATED = "truncated_input"

Record = SourceRow | BadRow


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


class IngestBrokeOff(InputError):
    """An input broke off part-way: the rows before the break are in the ledger, the break is recorded
    as a `truncated_input` issue, and `report` says what was read."""

    def __init__(self, path: str, message: str, report: IngestReport) -> None:
        self.report = report
        super().__init__(path, message)


class _IssueSink:
    """Collects bad rows and writes them to the ledger in batches (memory stays flat)."""

    def __init__(self, ledger: Ledger, ctx: RunContext | None, batch_size: int = 5000) -> None:
        self.ledger, self.ctx, self.batch_size = ledger, ctx, batch_size
        self.pending: list[tuple[str, str, str, str]] = []
        self.breaks: list[BadRow] = []

    def add(self, bad: BadRow) -> None:
        if bad.reason == TRUNCATED:
            self.breaks.append(bad)
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


def _up_to_the_break(open_records: Callable[[], Iterable[Record]]) -> Iterator[Record]:
    """The reader's records and, where its input breaks off, that break as a `truncated_input` bad row.

    The stream then ends normally instead of the reader's error passing through `add_samples`,
    which would drop the batch in hand: every good row before the break gets committed. A file
    that is not what it claims still fails at the call (InputError), before anything is read.
    """
    try:
        records = open_records()
    except TruncatedInput as exc:  # broke off within the bytes read to check the format
        return iter([exc.bad_row()])

    def guarded() -> Iterator[Record]:
        try:
            yield from records
        except TruncatedInput as exc:
            yield exc.bad_row()

    return guarded()


def _refuse_nul(records: Iterable[Record]) -> Iterator[Record]:
    """The records, each row with a NUL character in a field the ledger stores turned into a bad row.

    The readers refuse those rows already, naming the field where it was read; this keeps any
    reader that forgets from failing a whole batch on Postgres."""
    for rec in records:
        if isinstance(rec, SourceRow):
            which = nul_field({"URL": rec.url, "normalised URL": rec.normalised_url, "caption": rec.caption,
                               "generated caption": rec.generated_caption, "source id": rec.source_id, "position": rec.position})
            if which is not None:
                yield nul_row(which, rec.origin, rec.position, rec.line)
                continue
        yield rec


def _settle_breaks(ledger: Ledger, report: IngestReport, breaks: list[BadRow], read_whole: Iterable[str], *, note: str = "") -> None:
    """Clear the breaks recorded earlier for the inputs this run read whole (they were repaired: every
    row of theirs is in now); then, if this run met a break, fail saying what was kept and what to do."""
    whole = sorted(set(read_whole) - {b.origin for b in breaks})
    if whole:
        ledger.transaction(lambda conn: conn.execute(
            sa.delete(ingest_issue).where(ingest_issue.c.reason == TRUNCATED, ingest_issue.c.source.in_(whole))
        ))
    if not breaks:
        return
    first = breaks[0]
    more = f" (and {len(breaks) - 1} more inputs broke off)" if len(breaks) > 1 else ""
    kept = f"{report.added.inserted:,} new samples, {report.added.duplicates:,} already known, {report.stats.bad_total - len(breaks):,} bad rows"
    raise IngestBrokeOff(
        first.origin,
        f"{first.detail}{more}. What came before the break is in the ledger ({kept}){note}; ingest the repaired file "
        "again to add only the missing rows (`taisu-etl status` lists the incomplete inputs)",
        report,
    )


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
    """Stream one URL-list file (CSV/TSV/JSONL/Parquet) into the ledger.

    Raises IngestBrokeOff, after committing the rows before the break, when the file breaks off.
    """
    report = IngestReport(path=str(path))
    started = time.perf_counter()
    source = _up_to_the_break(lambda: read_source(path, fmt=fmt, **reader_options))
    records = report.stats.track(_refuse_blocklisted(ledger, _refuse_nul(source)))

    def with_progress(rows: Iterator[NewSample]) -> Iterator[NewSample]:
        for n, row in enumerate(rows, 1):
            if n % progress_every == 0:
                log.info("%s: %s rows read, %.0f rows/s", path, f"{report.stats.read:,}", report.stats.read / (time.perf_counter() - started))
            yield row

    issues = _IssueSink(ledger, ctx)
    report.added = ledger.add_samples(with_progress(_samples(records, str(path), issues)), ctx=ctx, batch_size=batch_size)
    issues.flush()
    report.seconds = time.perf_counter() - started
    _settle_breaks(ledger, report, issues.breaks, [str(path)])
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

    An archive that breaks off is recorded (`truncated_input`) and the next one still read; a
    caption file that breaks off stops the ingest before any image is stored. Either way, after
    committing what was read, it raises IngestBrokeOff.
    """
    report = IngestReport(path=", ".join(str(a) for a in archives))
    started = time.perf_counter()
    issues = _IssueSink(ledger, ctx)
    source = _up_to_the_break(lambda: read_taisu(list(archives), list(captions), index_dir=index_dir))
    records = report.stats.track(_refuse_blocklisted(ledger, _refuse_nul(source), batch=_BLOCKLIST_BATCH // 5))  # rows hold their images

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
                identity=taisu_identity(rec.source_id),
                source_pos=rec.position,
                taisu_id=rec.source_id,
                fields=fields,
            )

    report.added = ledger.add_samples(samples(), ctx=ctx, batch_size=batch_size)
    issues.flush()
    report.seconds = time.perf_counter() - started
    caption_files = [str(c) for c in captions]
    if any(b.origin in caption_files for b in issues.breaks):  # read_taisu stopped there: no archive was read
        _settle_breaks(ledger, report, issues.breaks, [], note="; no archive was read, as every image whose caption "
                       "comes after the break would be refused as no_caption")
    else:
        _settle_breaks(ledger, report, issues.breaks, caption_files + [str(a) for a in archives],
                       note="; captions without an image are listed once every archive reads whole")
    return report
