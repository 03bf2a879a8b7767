"""Processing takedown requests: from a filed request to an image gone everywhere, provably.

For a batch of requests, in an order that makes every step safe to repeat after a crash:
1. match (matching.py) and record the matches;
2. in ONE transaction: the blocklist entries and the move of every matched sample to
   `taken_down` with one event each; from this commit on, no stage can admit the image again
   (stages re-check the blocklist and their moves are guarded by state);
3. delete every version of the samples' image objects, and cut their vectors out of the stored
   embedding files;
4. patch every published release that holds them (a new version without them), or withdraw it;
5. verify (verification.py): stat every deleted key and version, check states, releases and
   the blocklist, and record the result on the request (`verified`).
Requests are batched so a bulk import of thousands costs one transaction, one release patch per
release and one verification pass, not thousands of each.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taisu_etl.db.context import RunContext
from taisu_etl.db.ledger import Ledger
from taisu_etl.storage import ObjectStore
from taisu_etl.takedown import objects, records
from taisu_etl.takedown.errors import TakedownError
from taisu_etl.takedown.matching import Match, find_matches_many
from taisu_etl.takedown.requests import OPEN_STATUSES, PROCESSED, REJECTED, Selector, get_requests, open_requests
from taisu_etl.takedown.verification import VerificationReport, verify_requests

log = logging.getLogger(__name__)
BATCH = 1000


@dataclass
class ReleaseAction:
    """What a takedown did to one release."""

    name: str
    action: str  # patched | withdrawn | building (the build will refuse to publish)
    from_version: int
    to_version: int | None
    samples_removed: int
    shards_rewritten: int = 0

    def line(self) -> str:
        if self.action == "patched":
            return (f"release {self.name}: version {self.from_version} -> {self.to_version}, {self.samples_removed} sample(s) removed, "
                    f"{self.shards_rewritten} shard(s) rewritten")
        if self.action == "withdrawn":
            return f"release {self.name}: withdrawn (every file deleted)"
        if self.action == "would patch":
            return f"release {self.name}: would get version {self.from_version + 1} without {self.samples_removed} sample(s)"
        if self.action == "would withdraw":
            return f"release {self.name}: would be withdrawn ({self.samples_removed} sample(s) in it)"
        return f"release {self.name}: being built; its build will refuse to publish with {self.samples_removed} taken-down sample(s)"


@dataclass
class TakedownReport:
    """The outcome of one request (or, with `dry_run`, what it would do)."""

    request_id: int
    kind: str
    value: str
    dry_run: bool = False
    matches: list[Match] = field(default_factory=list)
    url_ids: list[str] = field(default_factory=list)
    taken_down: int = 0
    blocklisted: int = 0
    objects: list[objects.ObjectAction] = field(default_factory=list)
    releases: list[ReleaseAction] = field(default_factory=list)
    verification: VerificationReport | None = None
    status: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Done as far as it was asked to go: verified, or processed when verification was left to a later step."""
        return self.dry_run or (self.verification.ok if self.verification is not None else self.status == "processed")

    def summary(self) -> str:
        how = Counter(m.how for m in self.matches)
        how_text = ", ".join(f"{k} {n}" for k, n in sorted(how.items())) or "none"
        head = "would remove" if self.dry_run else "removed"
        lines = [f"takedown request {self.request_id} ({self.kind} {self.value}): {len(self.matches)} sample(s) matched ({how_text})"]
        if self.dry_run:
            images = [o for o in self.objects if o.kind == "image"]
            lines.append(f"  {head}: {len(self.matches)} sample(s), {len(images)} image object(s), "
                         f"{len([o for o in self.objects if o.kind == 'embeddings'])} embedding file(s) to edit")
            lines += [f"    sample {u}" for u in self.url_ids[:20]]
            if len(self.url_ids) > 20:
                lines.append(f"    ... {len(self.url_ids) - 20} more")
            lines += [f"    {o.key}" for o in images[:20]]
        else:
            deleted = sum(o.versions_deleted for o in self.objects if o.kind == "image")
            lines.append(f"  {self.taken_down} sample(s) moved to taken_down, {self.blocklisted} blocklist entr(ies) ensured, "
                         f"{len([o for o in self.objects if o.kind == 'image'])} image object(s) deleted ({deleted} version(s)), "
                         f"{len([o for o in self.objects if o.kind == 'embeddings'])} embedding file(s) edited")
        lines += [f"  {r.line()}" for r in self.releases]
        if self.verification is not None:
            lines.append(f"  {self.verification.summary()}")
        if not self.dry_run:
            lines.append(f"  status: {self.status} ({self.seconds:.2f} s)")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "request": self.request_id, "kind": self.kind, "value": self.value, "dry_run": self.dry_run, "status": self.status,
            "matches": [{"sample_id": m.sample_id, "how": m.how, "distance": m.distance} for m in self.matches],
            "url_ids": self.url_ids, "taken_down": self.taken_down, "blocklisted": self.blocklisted,
            "objects": [o.__dict__ for o in self.objects], "releases": [r.__dict__ for r in self.releases],
            "verification": self.verification.as_dict() if self.verification else None, "seconds": round(self.seconds, 3),
        }


def _lock_release(ledger: Ledger, release_id: int) -> tuple[str, int]:
    """The release's state and version, read under the row lock its build holds while it commits.

    A build checks for taken-down members and publishes in one transaction holding this lock; the
    samples were taken down before this is called, so either the build saw them (and refuses to
    publish) or it has published (and the release is patched here). Nothing slips between.
    """
    from taisu_etl.release.records import lock_for_patch

    row = ledger.transaction(lambda conn: lock_for_patch(conn, release_id))
    assert row is not None, f"release {release_id} vanished"  # release rows are never deleted
    return str(row["state"]), int(row["version"])


def process_requests(
    ledger: Ledger, store: ObjectStore, request_ids: Sequence[int], *, max_distance: int, dry_run: bool = False,
    withdraw: bool = False, verify: bool = True, ctx: RunContext | None = None, progress: Callable[[str], None] | None = None,
    workdir: str | Path | None = None,
) -> list[TakedownReport]:
    """Process the given requests together (see the module docstring); returns one report each.

    `verify=False` stops before the verification (a separate Airflow task runs it).

    A rejected request is refused. A processed or verified one is processed again: every step is
    idempotent, so this completes one that crashed and re-checks one that finished.
    """
    requests = get_requests(ledger, request_ids)
    for req in requests:
        if req["status"] == REJECTED:
            raise TakedownError(f"request {req['id']} was rejected ({req['status_detail']}): file a new one to act on it")
    return _process(ledger, store, requests, max_distance=max_distance, dry_run=dry_run, withdraw=withdraw, verify=verify,
                    ctx=ctx, progress=progress, workdir=workdir)


def preview_request(
    ledger: Ledger, store: ObjectStore, selector: Selector, *, max_distance: int, withdraw: bool = False,
    progress: Callable[[str], None] | None = None,
) -> TakedownReport:
    """What a request with this selector would remove (samples, objects, releases), without filing it."""
    request = {"id": 0, "kind": selector.kind, "value": selector.value, "details": dict(selector.details), "status": "received"}
    return _process(ledger, store, [request], max_distance=max_distance, dry_run=True, withdraw=withdraw, verify=False,
                    ctx=None, progress=progress, workdir=None)[0]


def _process(
    ledger: Ledger, store: ObjectStore, requests: list[dict[str, Any]], *, max_distance: int, dry_run: bool, withdraw: bool,
    verify: bool, ctx: RunContext | None, progress: Callable[[str], None] | None, workdir: str | Path | None,
) -> list[TakedownReport]:
    say = progress or (lambda line: log.info("%s", line))
    started = time.perf_counter()
    reports = {r["id"]: TakedownReport(r["id"], r["kind"], r["value"], dry_run=dry_run, status=r["status"]) for r in requests}
    matches = find_matches_many(ledger, requests, max_distance=max_distance)
    for rid, found in matches.items():
        reports[rid].matches = found
    owners: dict[int, list[tuple[int, str, int | None]]] = defaultdict(list)
    for rid, ms in matches.items():
        for m in ms:
            owners[m.sample_id].append((rid, m.how, m.distance))
    rows = records.sample_rows(ledger, sorted(owners))
    for rid, ms in matches.items():
        reports[rid].url_ids = sorted({rows[m.sample_id]["url_id"] for m in ms if m.sample_id in rows})
    say(f"takedown: {len(requests)} request(s) matched {len(owners)} sample(s)")

    image_keys = sorted({row["object_key"] for row in rows.values() if row["object_key"]}
                        | records.archived_keys(ledger, sorted(owners)))
    held = records.releases_holding(ledger, sorted(owners))
    if dry_run:
        chunks = records.score_chunks(ledger, sorted(owners))
        for rid, ms in matches.items():
            mine = {m.sample_id for m in ms}
            reports[rid].objects = [objects.ObjectAction(k, "image", "deleted", 0)
                                    for k in sorted({rows[s]["object_key"] for s in mine if s in rows and rows[s]["object_key"]})]
            reports[rid].objects += [objects.ObjectAction(objects.chunk_prefix(*c), "embeddings", "rewritten", 0) for c in chunks
                                     if any(rows.get(s, {}).get("shard") == c[1] for s in mine)]
            for rel in held:
                n = len(mine.intersection(rel["samples"]))
                if n:
                    reports[rid].releases.append(ReleaseAction(rel["name"], "would withdraw" if withdraw else "would patch",
                                                               rel["version"], None, n))
        return [reports[r["id"]] for r in requests]

    records.record_matches(ledger, matches)
    entries = [e for req in requests for e in records.blocklist_entries(req, [rows[m.sample_id] for m in matches[req["id"]] if m.sample_id in rows])]
    added, moved = records.take_down(ledger, entries, owners, ctx=ctx)
    say(f"takedown: {len(moved)} sample(s) moved to taken_down, {added} blocklist entr(ies) added")
    moved_by = Counter(owners[sid][0][0] for sid in moved)
    entry_keys: dict[int, set[tuple[str, str]]] = defaultdict(set)
    for e in entries:
        entry_keys[e["takedown_id"]].add((e["kind"], e["value"]))
    for rid in reports:
        reports[rid].taken_down = moved_by.get(rid, 0)
        reports[rid].blocklisted = len(entry_keys[rid])

    in_use = records.keys_in_use(ledger, image_keys)
    if in_use:
        say(f"takedown: {len(in_use)} image object(s) kept: samples that were not taken down still use them")
    doomed = [k for k in image_keys if k not in in_use]
    deleted = {a.key: a for a in objects.delete_images(store, doomed)}
    say(f"takedown: {len(deleted)} image object(s) deleted ({sum(a.versions_deleted for a in deleted.values())} version(s))")
    stripped = objects.strip_embeddings(ledger, store, records.score_chunks(ledger, sorted(owners)), set(owners),
                                        max_distance=max_distance, say=say)
    audit: list[dict[str, Any]] = []
    for rid, ms in matches.items():
        mine = {m.sample_id for m in ms}
        keys = {rows[s]["object_key"] for s in mine if s in rows and rows[s]["object_key"]}
        acts = [deleted[k] for k in sorted(keys) if k in deleted] + stripped
        reports[rid].objects = acts
        audit += [{"takedown_id": rid, "object_key": a.key, "kind": a.kind, "action": a.action, "versions_deleted": a.versions_deleted}
                  for a in acts]
    records.record_objects(ledger, audit)

    _releases(ledger, store, held, matches, reports, withdraw=withdraw, say=say, workdir=workdir)
    records.set_status(ledger, [r["id"] for r in requests], PROCESSED, detail=None)
    verifications = verify_requests(ledger, store, [r["id"] for r in requests], progress=say) if verify else {}
    elapsed = time.perf_counter() - started
    for rid, report in reports.items():
        report.verification = verifications.get(rid)
        report.status = verifications[rid].status if rid in verifications else PROCESSED
        report.seconds = elapsed
    return [reports[r["id"]] for r in requests]


def _releases(
    ledger: Ledger, store: ObjectStore, held: list[dict[str, Any]], matches: Mapping[int, list[Match]],
    reports: Mapping[int, TakedownReport], *, withdraw: bool, say: Callable[[str], None], workdir: str | Path | None,
) -> None:
    if not held:
        return
    from taisu_etl.release.patch import patch_release, withdraw_release

    for rel in held:
        state, version = _lock_release(ledger, rel["id"])
        ids = sorted(rel["samples"])
        owners = {rid: len({m.sample_id for m in ms}.intersection(ids)) for rid, ms in matches.items()}
        owners = {rid: n for rid, n in owners.items() if n}
        first = min(owners) if owners else None
        if state == "staging":
            for rid, n in owners.items():
                reports[rid].releases.append(ReleaseAction(rel["name"], "building", version, None, n))
            say(f"takedown: release {rel['name']} is being built; its build refuses to publish taken-down samples")
            continue
        if state != "published":
            continue
        audit_objects: list[dict[str, Any]] = []
        if withdraw:
            result = withdraw_release(ledger, store, rel["name"], takedown_id=first, progress=say)
            rows = [{"takedown_id": rid, "release_id": rel["id"], "action": "withdrawn", "from_version": version, "to_version": None,
                     "samples_removed": n, "shards_rewritten": 0} for rid, n in owners.items()]
            for rid in owners:
                reports[rid].releases.append(ReleaseAction(rel["name"], "withdrawn", version, None, owners[rid]))
                audit_objects += [{"takedown_id": rid, "object_key": key, "kind": "release_file", "action": "deleted", "versions_deleted": n}
                                  for key, n in result.deleted]
        else:
            result = patch_release(ledger, store, rel["name"], ids, takedown_id=first, progress=say, workdir=workdir)
            rows = [{"takedown_id": rid, "release_id": rel["id"], "action": "patched", "from_version": result.from_version,
                     "to_version": result.to_version, "samples_removed": n, "shards_rewritten": len(result.shards_rewritten)}
                    for rid, n in owners.items()]
            for rid in owners:
                reports[rid].releases.append(ReleaseAction(rel["name"], "patched", result.from_version, result.to_version, owners[rid],
                                                           len(result.shards_rewritten)))
                audit_objects += [{"takedown_id": rid, "object_key": key, "kind": "release_file", "action": "rewritten", "versions_deleted": n}
                                  for key, n in result.files_rewritten]
        records.record_release(ledger, rows)
        records.record_objects(ledger, audit_objects)


def process_request(
    ledger: Ledger, store: ObjectStore, request_id: int, *, max_distance: int, dry_run: bool = False, withdraw: bool = False,
    verify: bool = True, ctx: RunContext | None = None, progress: Callable[[str], None] | None = None,
    workdir: str | Path | None = None,
) -> TakedownReport:
    """Process one request; see `process_requests`."""
    return process_requests(ledger, store, [request_id], max_distance=max_distance, dry_run=dry_run, withdraw=withdraw,
                            verify=verify, ctx=ctx, progress=progress, workdir=workdir)[0]


def process_open(
    ledger: Ledger, store: ObjectStore, *, max_distance: int, batch: int = BATCH, withdraw: bool = False,
    verify: bool = True, ctx: RunContext | None = None, progress: Callable[[str], None] | None = None,
    workdir: str | Path | None = None,
) -> list[TakedownReport]:
    """Process every open request (received, matched, or processed but not verified), oldest first, in batches."""
    say = progress or (lambda line: log.info("%s", line))
    out: list[TakedownReport] = []
    seen: set[int] = set()
    while True:
        todo = [r["id"] for r in open_requests(ledger) if r["id"] not in seen and r["status"] in OPEN_STATUSES][:batch]
        if not todo:
            return out
        seen.update(todo)
        say(f"takedown: processing requests {todo[0]}..{todo[-1]} ({len(todo)})")
        out += process_requests(ledger, store, todo, max_distance=max_distance, withdraw=withdraw, verify=verify, ctx=ctx,
                                progress=say, workdir=workdir)
