"""Intake of takedown requests: one selector per request, checked and normalised before it is filed.

A request is a `takedown_request` row that is never deleted; its status moves
received -> matched -> processed -> verified, or to rejected with the reason in `status_detail`.
Selectors:
- `sample`    the public sample id (`url_id`, 32 hex digits)
- `taisu_id`  TaiSu's id of the pair
- `url`       an image URL (stored normalised, as the ledger stores URLs)
- `sha256`    the hex digest of a stored image
- `image`     an image file: matched by content. It is normalised the way the fetch stage stores
              images, so `value` is the digest of what the store would hold, and its perceptual
              hash (in `details`) finds the same picture re-hosted or re-encoded.
- `domain`    a host name: every sample whose URL is on that host or one of its subdomains
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import takedown_request
from taisu_etl.images.config import ImageConfig
from taisu_etl.takedown.errors import TakedownError
from taisu_etl.urls import normalise_url

KINDS = ("sample", "taisu_id", "url", "sha256", "image", "domain")
RECEIVED, MATCHED, PROCESSED, VERIFIED, REJECTED = "received", "matched", "processed", "verified", "rejected"
OPEN_STATUSES = (RECEIVED, MATCHED, PROCESSED)
CSV_COLUMNS = ("kind", "value", "requester", "contact", "reason", "reference")

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HOST = re.compile(r"(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True)
class Selector:
    """A checked selector: `value` as the ledger stores it, `details` what matching needs besides."""

    kind: str
    value: str
    details: Mapping[str, Any] = field(default_factory=dict)


def normalise_host(text: str) -> str:
    """A bare host name, lower case, without a trailing dot; accepts a URL and takes its host."""
    raw = text.strip()
    if "://" in raw:
        try:
            raw = normalise_url(raw).split("://", 1)[1].split("/", 1)[0]
        except ValueError as exc:
            raise TakedownError(f"not a domain or URL: {text!r} ({exc})") from None
    host = raw.lower().rstrip(".")
    if ":" in host and not host.startswith("["):
        host = host.rsplit(":", 1)[0]
    if host.startswith("*."):
        host = host[2:]
    if not _HOST.fullmatch(host) and not re.fullmatch(r"\[[0-9a-f:.]+\]", host):
        raise TakedownError(f"not a domain name: {text!r} (e.g. images.example.com)")
    return host


def parse_selector(kind: str, value: str, *, image: bytes | None = None, image_config: ImageConfig | None = None) -> Selector:
    """Check and normalise one selector; every mistake is one TakedownError saying what to give instead."""
    kind = (kind or "").strip().lower()
    text = (value or "").strip()
    if kind not in KINDS:
        raise TakedownError(f"unknown selector {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "image":
        if image is None:
            raise TakedownError("an image request needs the image file's bytes")
        return _image_selector(image, text, image_config or ImageConfig())
    if not text:
        raise TakedownError(f"empty {kind}: give the value to take down")
    if kind == "sample":
        if not _HEX32.fullmatch(text.lower()):
            raise TakedownError(f"not a sample id: {text!r} (32 hex digits, the `id` of a release's records)")
        return Selector(kind, text.lower())
    if kind == "sha256":
        if not _HEX64.fullmatch(text.lower()):
            raise TakedownError(f"not a sha256 digest: {text!r} (64 hex digits)")
        return Selector(kind, text.lower())
    if kind == "url":
        try:
            url = normalise_url(text)
        except ValueError as exc:
            raise TakedownError(f"not an image URL: {text!r} ({exc})") from None
        if not url.startswith(("http://", "https://")):
            raise TakedownError(f"not an http(s) URL: {text!r}")
        return Selector(kind, url)
    if kind == "domain":
        return Selector(kind, normalise_host(text))
    return Selector(kind, text)  # taisu_id: an opaque string


def _image_selector(data: bytes, name: str, config: ImageConfig) -> Selector:
    from taisu_etl.images.decode import normalise_image
    from taisu_etl.images.results import ImageRejection

    result = normalise_image(data, config)
    if isinstance(result, ImageRejection):
        raise TakedownError(f"cannot read the image {name or '(bytes)'}: {result.reason} ({result.detail})")
    details = {"phash": result.phash, "file_sha256": hashlib.sha256(data).hexdigest(), "file": Path(name).name if name else None,
               "width": result.source_width, "height": result.source_height}
    return Selector("image", result.sha256, details)


def _row(sel: Selector, requester: str, contact: str | None, reason: str | None, reference: str | None, channel: str) -> dict[str, Any]:
    if not requester or not requester.strip():
        raise TakedownError("a request needs a requester (who asked: a name or an organisation)")
    clean = lambda v: (v.strip() or None) if isinstance(v, str) else v  # noqa: E731
    return {"kind": sel.kind, "value": sel.value, "details": dict(sel.details) or None, "requester": requester.strip(),
            "contact": clean(contact), "reason": clean(reason), "reference": clean(reference), "channel": channel,
            "status": RECEIVED}


def file_request(
    ledger: Ledger, kind: str, value: str, *, requester: str, contact: str | None = None, reason: str | None = None,
    reference: str | None = None, channel: str = "cli", image: bytes | None = None, image_config: ImageConfig | None = None,
) -> int:
    """Record one request (status `received`) and return its id. `value` is a path's name for `image`."""
    row = _row(parse_selector(kind, value, image=image, image_config=image_config), requester, contact, reason, reference, channel)
    return ledger.transaction(lambda conn: int(conn.execute(sa.insert(takedown_request).values(**row).returning(takedown_request.c.id)).scalar_one()))


@dataclass
class ImportReport:
    """What `import_requests` filed, and the rows it refused (line, message)."""

    file: str
    filed: list[int] = field(default_factory=list)
    already: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)

    def summary(self) -> str:
        head = f"{self.file}: {len(self.filed):,} requests filed, {self.already:,} already filed by an earlier import"
        if not self.bad:
            return head
        lines = [head + f", {len(self.bad):,} bad rows (nothing from this file was filed):"]
        lines += [f"  {self.file}:{line}: {msg}" for line, msg in self.bad[:50]]
        if len(self.bad) > 50:
            lines.append(f"  ... {len(self.bad) - 50:,} more")
        return "\n".join(lines)


def _csv_rows(path: Path) -> Iterable[tuple[int, dict[str, str]]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise TakedownError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise TakedownError(f"{path}:{line}: not UTF-8 ({exc.reason}): save the file as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in ("kind", "value", "requester") if c not in header]
    if missing:
        raise TakedownError(
            f"{path}:1: the header must name the columns {', '.join(CSV_COLUMNS)} (missing: {', '.join(missing)})"
        )
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        raise TakedownError(f"{path}:1: unknown column(s) {', '.join(unknown)}: use {', '.join(CSV_COLUMNS)}")
    reader.fieldnames = header
    for record in reader:
        extra = record.get(None)  # type: ignore[call-overload]
        if extra:
            yield reader.line_num, {"__error__": f"{len(extra)} more field(s) than the header has"}
            continue
        yield reader.line_num, {k: (v or "") for k, v in record.items() if k is not None}


def import_requests(
    ledger: Ledger, path: str | Path, *, image_config: ImageConfig | None = None, dry_run: bool = False,
) -> ImportReport:
    """File every row of a CSV of requests (columns: kind,value,requester[,contact,reason,reference]).

    All or nothing: every row is checked first, and if any is bad none is filed; the report names
    each bad row by line. An `image` row's value is a file path, relative to the CSV's folder.
    Re-importing the same file files nothing twice (a row is known by file name, line and selector).
    """
    path = Path(path)
    report = ImportReport(str(path))
    rows: list[dict[str, Any]] = []
    for line, record in _csv_rows(path):
        if "__error__" in record:
            report.bad.append((line, record["__error__"]))
            continue
        try:
            image = None
            if record.get("kind", "").strip().lower() == "image":
                image_path = (path.parent / record.get("value", "").strip())
                try:
                    image = image_path.read_bytes()
                except OSError as exc:
                    raise TakedownError(f"cannot read the image file {image_path} ({exc.strerror or exc})") from None
            sel = parse_selector(record.get("kind", ""), record.get("value", ""), image=image, image_config=image_config)
            rows.append(_row(sel, record.get("requester", ""), record.get("contact"), record.get("reason"),
                             record.get("reference"), f"import:{path.name}:{line}"))
        except TakedownError as exc:
            report.bad.append((line, str(exc)))
    if report.bad or dry_run or not rows:
        return report
    tr = takedown_request.c

    def run(conn: sa.Connection) -> None:
        known = set(conn.execute(
            sa.select(tr.channel, tr.kind, tr.value).where(tr.channel.like(f"import:{path.name}:%"))
        ).tuples())
        new = [r for r in rows if (r["channel"], r["kind"], r["value"]) not in known]
        report.already = len(rows) - len(new)
        report.filed = []
        for start in range(0, len(new), 1000):
            chunk = new[start : start + 1000]
            report.filed += [int(i) for i in conn.execute(sa.insert(takedown_request).returning(takedown_request.c.id), chunk).scalars()]

    ledger.transaction(run)
    return report


def get_request(ledger: Ledger, request_id: int) -> dict[str, Any]:
    row = ledger.read(lambda conn: conn.execute(sa.select(takedown_request).where(takedown_request.c.id == request_id)).mappings().first())
    if row is None:
        raise TakedownError(f"no takedown request {request_id}: `taisu-etl takedown list` shows them")
    return dict(row)


def get_requests(ledger: Ledger, request_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The requests, in the order asked; an unknown id is one TakedownError naming it."""
    tr = takedown_request.c
    wanted = list(dict.fromkeys(request_ids))

    def run(conn: sa.Connection) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for start in range(0, len(wanted), 500):
            out.update({r["id"]: dict(r) for r in conn.execute(
                sa.select(takedown_request).where(tr.id.in_(wanted[start : start + 500]))).mappings()})
        return out

    found = ledger.read(run)
    missing = [i for i in wanted if i not in found]
    if missing:
        raise TakedownError(f"no takedown request {missing[0]}: `taisu-etl takedown list` shows them")
    return [found[i] for i in wanted]


def open_requests(ledger: Ledger, limit: int | None = None) -> list[dict[str, Any]]:
    """Requests not yet verified or rejected, oldest first: what a scheduled run processes."""
    tr = takedown_request.c
    query = sa.select(takedown_request).where(tr.status.in_(OPEN_STATUSES)).order_by(tr.id)
    if limit:
        query = query.limit(limit)
    return ledger.read(lambda conn: [dict(r) for r in conn.execute(query).mappings()])


def reject(ledger: Ledger, request_id: int, why: str) -> None:
    """Close a request without acting on it (e.g. not a rights holder); the row stays, with why."""
    if not why.strip():
        raise TakedownError("say why the request is rejected")
    tr = takedown_request.c

    def run(conn: sa.Connection) -> int:
        return conn.execute(
            sa.update(takedown_request).where(tr.id == request_id, tr.status.in_((RECEIVED, MATCHED)))
            .values(status=REJECTED, status_detail=why.strip(), processed_at=datetime.now(timezone.utc))
        ).rowcount

    if not ledger.transaction(run):
        status = get_request(ledger, request_id)["status"]
        raise TakedownError(f"request {request_id} is {status}: only a received or matched request can be rejected")
