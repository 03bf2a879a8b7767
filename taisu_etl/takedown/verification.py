"""Is it really gone? The check that ends a takedown, answered from the store and recorded in the ledger.

For each request: every matched sample is `taken_down`; every object the request deleted has no
version and no delete marker left, and every object it rewrote has exactly one (the new bytes);
each matched sample's image key is empty; no published release still holds a matched sample;
the blocklist holds each matched image's sha256. The per-object result goes to
`takedown_object.verified_at/versions_left`; a request with no problem becomes `verified`, any
other stays `processed` with the problems in `status_detail` (the next scheduled run checks again).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import blocklist
from taisu_etl.storage import ObjectStore
from taisu_etl.takedown import records
from taisu_etl.vocab import State

STAT_WORKERS = 16


@dataclass
class VerificationReport:
    request_id: int
    samples: int = 0
    objects_checked: int = 0
    versions_checked: int = 0
    problems: list[str] = field(default_factory=list)
    status: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (f"verification: {self.samples} sample(s) checked, {self.objects_checked} object(s) stat'ed "
                f"({self.versions_checked} version(s) left; a rewritten file keeps exactly its current one)")
        if self.ok:
            return head + ": everything is gone"
        shown = self.problems[:10]
        more = f"\n    ... {len(self.problems) - 10} more" if len(self.problems) > 10 else ""
        return head + f": {len(self.problems)} problem(s)\n" + "\n".join(f"    {p}" for p in shown) + more

    def as_dict(self) -> dict[str, Any]:
        return {"request": self.request_id, "ok": self.ok, "samples": self.samples, "objects_checked": self.objects_checked,
                "problems": self.problems, "status": self.status}


def _versions(store: ObjectStore, keys: Sequence[str]) -> dict[str, int]:
    if not keys:
        return {}
    with ThreadPoolExecutor(max_workers=min(STAT_WORKERS, len(keys)), thread_name_prefix="takedown-verify") as pool:
        return dict(zip(keys, pool.map(lambda k: len(store.versions(k)), keys)))


def verify_requests(
    ledger: Ledger, store: ObjectStore, request_ids: Sequence[int], *, progress: Callable[[str], None] | None = None,
) -> dict[int, VerificationReport]:
    """Verify each request; record the result on it; returns the reports by request id."""
    reports: dict[int, VerificationReport] = {}
    matched = records.matched_samples(ledger, request_ids)
    all_ids = sorted({s for ids in matched.values() for s in ids})
    rows = records.sample_rows(ledger, all_ids)
    audit = records.objects_for(ledger, request_ids)
    keys = sorted({o["object_key"] for objs in audit.values() for o in objs}
                  | {r["object_key"] for r in rows.values() if r["object_key"]})
    left = _versions(store, keys)
    held = records.releases_holding(ledger, all_ids)
    hashes = sorted({r["sha256"] for r in rows.values() if r["sha256"]})
    listed: set[str] = set()
    for start in range(0, len(hashes), 400):
        chunk = hashes[start : start + 400]
        listed |= set(ledger.read(lambda conn: list(conn.execute(
            sa.select(blocklist.c.value).where(blocklist.c.kind == "sha256", blocklist.c.value.in_(chunk))).scalars())))
    found: dict[int, dict[str, int]] = {}
    for rid in request_ids:
        report = VerificationReport(rid, samples=len(matched[rid]))
        mine = set(matched[rid])
        for sid in sorted(mine):
            row = rows.get(sid)
            if row is None:
                continue
            if row["state"] != State.TAKEN_DOWN.value:
                report.problems.append(f"sample {row['url_id']} is {row['state']}, not taken_down")
            if row["object_key"] and left.get(row["object_key"], 0):
                report.problems.append(f"sample {row['url_id']}: {left[row['object_key']]} version(s) of {row['object_key']} remain")
            if row["sha256"] and row["sha256"] not in listed:
                report.problems.append(f"sample {row['url_id']}: its sha256 is not on the blocklist")
        found[rid] = {}
        for obj in audit[rid]:
            n = left.get(obj["object_key"], 0)
            found[rid][obj["object_key"]] = n
            report.objects_checked += 1
            report.versions_checked += n
            want = 0 if obj["action"] == "deleted" else 1
            if n != want:
                report.problems.append(f"{obj['object_key']}: {n} version(s) left, {want} expected ({obj['kind']} {obj['action']})")
        for rel in held:
            n = len(mine.intersection(rel["samples"]))
            if not n:
                continue
            if rel["state"] == "published":
                report.problems.append(f"release {rel['name']} (version {rel['version']}) still holds {n} matched sample(s)")
            else:
                report.problems.append(f"release {rel['name']} is being built with {n} matched sample(s): its build must fail; verify again after it")
        report.status = "verified" if report.ok else "processed"
        reports[rid] = report
    records.mark_verified_objects(ledger, found)
    records.set_status(ledger, [rid for rid, r in reports.items() if r.ok], "verified")
    for rid, report in reports.items():
        if not report.ok:
            more = f"; ... {len(report.problems) - 5} more" if len(report.problems) > 5 else ""
            records.set_status(ledger, [rid], "processed", detail="; ".join(report.problems[:5]) + more)
    if progress:
        bad = sum(1 for r in reports.values() if not r.ok)
        progress(f"takedown: verified {len(reports) - bad} of {len(reports)} request(s)" + (f"; {bad} with problems" if bad else ""))
    return reports
