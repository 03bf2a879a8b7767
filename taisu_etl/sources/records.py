"""What the readers yield: a usable row, or a bad row with its reason, both saying where they came from.

Every record carries `origin` (the input path, as given) and `position` so that any sample in the
ledger can be traced back to the byte range it was read from. Positions follow one scheme:

    "line 17"                 text files (CSV, TSV, JSON lines, TaiSu TXT captions); 1-based
                              physical line where the record starts, so an editor's "go to line"
                              lands on it. `line` holds the same number.
    "row 17"                  Parquet; 1-based data row across the whole file. `line` is None.
    "entry 17"                TaiSu's single JSON object; 1-based entry in the object. `line` is None.
    "member 123.jpg"          an archive member, named as stored in the archive. `line` is None.
    "after member 123.jpg"    a fault between members (truncated archive, unreadable header).
    "after line 17"           where a file breaks off (`truncated_input`): everything up to and
                              including line / row / entry 17 was read whole, nothing after it;
                              "before the first line" when nothing could be read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from taisu_etl.vocab import INGEST_ALSO, REASONS, Stage

INGEST_REASONS = frozenset(code for code, (stage, _) in REASONS.items() if stage is Stage.INGEST and code != "ingested") | INGEST_ALSO


def _where(origin: str, position: str, line: int | None) -> str:
    return f"{origin}:{line}" if line is not None else f"{origin} ({position})"


def without_nul(text: str) -> str:
    """`text` with each NUL character written as the escape `\\x00` (for messages and positions)."""
    return text.replace("\x00", "\\x00")


def nul_field(values: Mapping[str, Any]) -> str | None:
    """The name of the first text value in `values` that holds a NUL character, else None.

    Postgres text cannot hold NUL (SQLite can): such a row is refused on every database alike, so
    a ledger does not depend on where it was built.
    """
    for name, value in values.items():
        if isinstance(value, str) and "\x00" in value:
            return name
    return None


def nul_row(name: str, origin: str, position: str, line: int | None) -> "BadRow":
    """The bad row for a record whose `name` field holds a NUL character."""
    return BadRow(origin, position, "nul_char", f"the {name} holds a NUL character (\\x00), which the ledger cannot store", line)


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One usable sample from a source file.

    For URL lists `url` is the URL as written (stripped; TaiSu's slice id is computed from the raw
    spelling) and `normalised_url` its canonical form. For TaiSu archives `url` is None unless the
    caption record carried one, and `image` holds the member's bytes.
    """

    url: str | None
    caption: str | None
    origin: str
    position: str
    generated_caption: str | None = None
    image: bytes | None = field(default=None, repr=False)  # a repr must never dump an image
    image_name: str | None = None
    source_id: str | None = None
    extra: dict[str, Any] | None = None
    line: int | None = None
    normalised_url: str | None = None

    @property
    def where(self) -> str:
        """`path:line` for text files, `path (position)` otherwise: for messages."""
        return _where(self.origin, self.position, self.line)


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that could not become a sample, with an ingest reason code from `taisu_etl.vocab`."""

    origin: str
    position: str
    reason: str
    detail: str
    line: int | None = None

    def __post_init__(self) -> None:
        # The ledger refuses unknown codes; failing here points at the reader that made the typo.
        if self.reason not in INGEST_REASONS:
            raise ValueError(f"{self.reason!r} is not an ingest reason code (one of {sorted(INGEST_REASONS)})")
        # Details quote the offending value and positions name archive members: both are stored as
        # an ingest issue, and one NUL there would fail the whole batch of issues on Postgres.
        for name in ("position", "detail"):
            value = getattr(self, name)
            if "\x00" in value:
                object.__setattr__(self, name, without_nul(value))

    @property
    def where(self) -> str:
        return _where(self.origin, self.position, self.line)


@dataclass
class SourceStats:
    """Counts of what a reader produced: rows read, good, bad per reason, with a few examples each.

    Use `stats.track(reader)` to count while passing records through, or `stats.add(record)`.
    """

    examples_per_reason: int = 5
    read: int = 0
    good: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    bad_by_origin: dict[str, Counter[str]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def bad_total(self) -> int:
        return sum(self.bad.values())

    def add(self, record: SourceRow | BadRow) -> None:
        self.read += 1
        if isinstance(record, SourceRow):
            self.good += 1
            return
        self.bad[record.reason] += 1
        self.bad_by_origin.setdefault(record.origin, Counter())[record.reason] += 1
        shown = self.examples.setdefault(record.reason, [])
        if len(shown) < self.examples_per_reason:
            shown.append(f"{record.where}: {record.detail}")

    def track(self, records: Iterable[SourceRow | BadRow]) -> Iterator[SourceRow | BadRow]:
        for record in records:
            self.add(record)
            yield record

    def summary(self) -> str:
        """A few lines for a log or the CLI: totals, then per reason with its first examples."""
        head = f"{self.read} rows read: {self.good} good, {self.bad_total} bad"
        if not self.bad:
            return head
        counts = ", ".join(f"{reason} {n}" for reason, n in sorted(self.bad.items()))
        lines = [f"{head} ({counts})"]
        for reason in sorted(self.bad):
            lines.append(f"  {reason}: {self.bad[reason]}")
            more = self.bad[reason] - len(self.examples.get(reason, []))
            lines.extend(f"    {example}" for example in self.examples.get(reason, []))
            if more > 0:
                lines.append(f"    ... and {more} more")
        return "\n".join(lines)
