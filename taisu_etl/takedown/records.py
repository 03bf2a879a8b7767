"""The ledger's side of a takedown: matches, blocklist entries, the move to `taken_down`, and the
audit rows (objects deleted, releases patched, status). Every write is idempotent, so a request
that crashed half-way is completed by running it again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from taisu_etl.db.context import RunContext
from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import (
    blocklist, release, release_member, sample, sample_event, sample_state, takedown_match, takedown_object,
    takedown_release, takedown_request,
)
from taisu_etl.takedown.matching import Match
from taisu_etl.vocab import Stage, State

_CHUNK = 400
_IMAGE_KEY = re.compile(r"^images/[0-9a-f]{2}/[0-9a-f]{2}/(?P<sha>[0-9a-f]{64})\.[a-z0-9]+$")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _insert(ledger: Ledger, table: sa.Table) -> Any:
    return (postgresql.insert if ledger.is_postgres else sqlite.insert)(table)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sample_rows(ledger: Ledger, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """What a takedown needs to know of each sample: id, url_id, url, sha256, phash, object key, shard, state."""
    s, st = sample.c, sample_state.c
    cols = [s.id, s.url_id, s.url, s.sha256, s.phash, s.object_key, st.shard, st.state]

    def run(conn: sa.Connection) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(list(ids)):
            for row in conn.execute(sa.select(*cols).join(sample_state, st.sample_id == s.id).where(s.id.in_(chunk))).mappings():
                out[row["id"]] = dict(row)
        return out

    return ledger.read(run)


def record_matches(ledger: Ledger, matches: Mapping[int, Sequence[Match]]) -> None:
    """Store each request's matches and move it to `matched` (a processed one keeps its status)."""
    now = _now()
    rows = [{"takedown_id": rid, "sample_id": m.sample_id, "how": m.how, "distance": m.distance, "matched_at": now}
            for rid, ms in matches.items() for m in ms]

    def run(conn: sa.Connection) -> None:
        for chunk in _chunks(rows, 1000):
            conn.execute(_insert(ledger, takedown_match).on_conflict_do_nothing(), list(chunk))
        tr = takedown_request.c
        for chunk in _chunks(list(matches)):
            conn.execute(sa.update(takedown_request).where(tr.id.in_(chunk), tr.status == "received")
                         .values(status="matched", matched_at=now))

    ledger.transaction(run)


def blocklist_entries(request: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The blocklist rows a request adds: its own selector where it names an image or a host, and
    every matched sample's URL, sha256 and perceptual hash."""
    rid = request["id"]
    out: list[dict[str, Any]] = []
    kind, value = request["kind"], request["value"]
    if kind == "url":
        out.append({"kind": "url", "value": value, "takedown_id": rid, "sample_id": None})
    elif kind in ("sha256", "image"):
        out.append({"kind": "sha256", "value": value, "takedown_id": rid, "sample_id": None})
        phash = (request.get("details") or {}).get("phash")
        if kind == "image" and phash:
            out.append({"kind": "phash", "value": phash, "takedown_id": rid, "sample_id": None})
    elif kind == "domain":
        out.append({"kind": "host", "value": value, "takedown_id": rid, "sample_id": None})
    for row in rows:
        for k in ("url", "sha256", "phash"):
            if row.get(k):
                out.append({"kind": k, "value": row[k], "takedown_id": rid, "sample_id": row["id"]})
    return out


def take_down(
    ledger: Ledger, entries: Sequence[Mapping[str, Any]], owners: Mapping[int, Sequence[tuple[int, str, int | None]]],
    *, ctx: RunContext | None = None,
) -> tuple[int, list[int]]:
    """In one transaction: add the blocklist entries and move every sample in `owners` to `taken_down`.

    `owners` maps a sample id to the (request id, how, distance) that matched it; the event names
    the first request. Samples already taken down are left alone. Leases end: a stage that holds
    one can no longer move the sample (its move is guarded by state), so the takedown wins.
    Returns (new blocklist entries, ids of the samples moved).
    """
    ev = ledger.event_fields(ctx)
    st = sample_state.c

    def run(conn: sa.Connection) -> tuple[int, list[int]]:
        added = 0
        for chunk in _chunks(list(entries), 1000):
            result = conn.execute(_insert(ledger, blocklist).on_conflict_do_nothing(index_elements=["kind", "value"]), list(chunk))
            added += max(result.rowcount, 0)
        moved: list[int] = []
        for chunk in _chunks(sorted(owners)):
            query = sa.select(st.sample_id, st.state).where(st.sample_id.in_(chunk), st.state != State.TAKEN_DOWN.value)
            if ledger.is_postgres:
                query = query.with_for_update()
            before = dict(conn.execute(query).tuples().all())
            if not before:
                continue
            conn.execute(
                sa.update(sample_state).where(st.sample_id.in_(list(before)), st.state != State.TAKEN_DOWN.value)
                .values(state=State.TAKEN_DOWN.value, last_reason="takedown", lease_owner=None, lease_until=None,
                        next_attempt_at=None, updated_at=sa.func.now())
            )
            events = []
            for sid, old in before.items():
                reqs = owners[sid]
                rid, how, distance = reqs[0]
                details: dict[str, Any] = {"request": rid, "how": how}
                if distance is not None:
                    details["distance"] = distance
                if len(reqs) > 1:
                    details["requests"] = sorted({r for r, _, _ in reqs})
                events.append(dict(ev, sample_id=sid, stage=Stage.TAKEDOWN.value, from_state=old, to_state=State.TAKEN_DOWN.value,
                                   reason="takedown", details=details if not ledger.is_postgres else json.dumps(details, ensure_ascii=False)))
            if ledger.is_postgres:
                # One statement for the chunk (executemany would be a round trip per event).
                conn.execute(sa.text(
                    "INSERT INTO sample_event (sample_id, stage, from_state, to_state, reason, details, dag_id, run_id, task_id, "
                    "map_index, try_number, worker, recipe_version) SELECT v.id, :stage, v.from_state, :to_state, :reason, v.details, "
                    ":dag_id, :run_id, :task_id, :map_index, :try_number, :worker, :recipe_version "
                    "FROM unnest(CAST(:ids AS bigint[]), CAST(:froms AS varchar[]), CAST(:details AS jsonb[])) AS v(id, from_state, details)"
                ), {**ev, "stage": Stage.TAKEDOWN.value, "to_state": State.TAKEN_DOWN.value, "reason": "takedown",
                    "ids": [e["sample_id"] for e in events], "froms": [e["from_state"] for e in events],
                    "details": [e["details"] for e in events]})
            else:
                conn.execute(sa.insert(sample_event), events)
            moved += list(before)
        return added, moved

    return ledger.transaction(run)


def record_objects(ledger: Ledger, rows: Sequence[Mapping[str, Any]]) -> None:
    """Audit rows of deleted or rewritten objects: (takedown_id, object_key, kind, action, versions_deleted).

    A re-run adds the versions it deleted to the count already recorded for the same key.
    """
    if not rows:
        return
    t = takedown_object

    def run(conn: sa.Connection) -> None:
        for chunk in _chunks(list(rows), 1000):
            stmt = _insert(ledger, t)
            stmt = stmt.on_conflict_do_update(
                index_elements=["takedown_id", "object_key"],
                set_={"versions_deleted": t.c.versions_deleted + stmt.excluded.versions_deleted, "deleted_at": stmt.excluded.deleted_at,
                      "action": stmt.excluded.action, "verified_at": None, "versions_left": None},
            )
            conn.execute(stmt, [dict(r, deleted_at=_now()) for r in chunk])

    ledger.transaction(run)


def record_release(ledger: Ledger, rows: Sequence[Mapping[str, Any]]) -> None:
    """Audit rows of releases patched or withdrawn, one per (request, release)."""
    if not rows:
        return

    def run(conn: sa.Connection) -> None:
        stmt = _insert(ledger, takedown_release)
        stmt = stmt.on_conflict_do_update(
            index_elements=["takedown_id", "release_id"],
            set_={"action": stmt.excluded.action, "to_version": stmt.excluded.to_version,
                  "samples_removed": stmt.excluded.samples_removed, "shards_rewritten": stmt.excluded.shards_rewritten},
        )
        conn.execute(stmt, [dict(r) for r in rows])

    ledger.transaction(run)


def releases_holding(ledger: Ledger, sample_ids: Sequence[int]) -> list[dict[str, Any]]:
    """(release id, name, state, version, sample ids) of every release that still holds some of `sample_ids`."""
    m, r = release_member.c, release.c

    def run(conn: sa.Connection) -> list[dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(list(sample_ids)):
            rows = conn.execute(
                sa.select(r.id, r.name, r.state, r.version, m.sample_id).join(release, r.id == m.release_id)
                .where(m.sample_id.in_(chunk), m.removed_in_version.is_(None), r.state.in_(("published", "staging")))
            )
            for rid, name, state, version, sid in rows:
                found.setdefault(rid, {"id": rid, "name": name, "state": state, "version": version, "samples": []})["samples"].append(sid)
        return [found[k] for k in sorted(found)]

    return ledger.read(run)


def score_chunks(ledger: Ledger, sample_ids: Sequence[int]) -> list[tuple[str, int, int]]:
    """(model id, shard, first id of the chunk) of every score decision about the samples: where their vectors are."""
    e = sample_event.c

    def run(conn: sa.Connection) -> set[tuple[str, int, int]]:
        out: set[tuple[str, int, int]] = set()
        for chunk in _chunks(list(sample_ids)):
            rows = conn.execute(
                sa.select(e.details, sample_state.c.shard).join(sample_state, sample_state.c.sample_id == e.sample_id)
                .where(e.sample_id.in_(chunk), e.stage == Stage.SCORE.value)
            )
            for details, shard in rows:
                if isinstance(details, str):
                    details = json.loads(details)
                if isinstance(details, dict) and details.get("model") and details.get("chunk") is not None:
                    out.add((str(details["model"]), int(shard), int(details["chunk"])))
        return out

    return sorted(ledger.read(run))


def archived_keys(ledger: Ledger, sample_ids: Sequence[int]) -> set[str]:
    """Keys of archived originals the image stage replaced with a normalised copy (in its event details)."""
    e = sample_event.c

    def run(conn: sa.Connection) -> set[str]:
        keys: set[str] = set()
        for chunk in _chunks(list(sample_ids)):
            for details in conn.execute(sa.select(e.details).where(e.sample_id.in_(chunk), e.stage == Stage.IMAGE.value)).scalars():
                if isinstance(details, str):
                    details = json.loads(details)
                if isinstance(details, dict) and isinstance(details.get("archived"), str):
                    keys.add(details["archived"])
        return keys

    return ledger.read(run)


def keys_in_use(ledger: Ledger, keys: Sequence[str]) -> set[str]:
    """Which of `keys` a sample that is not taken down still points to (never deleted by a takedown).

    Image keys are content-addressed, so the lookup goes through the sha256 index; a key of any
    other shape is looked up by itself.
    """
    s, st = sample.c, sample_state.c
    by_sha = {m.group("sha"): k for k in keys if (m := _IMAGE_KEY.match(k))}
    others = [k for k in keys if _IMAGE_KEY.match(k) is None]

    def run(conn: sa.Connection) -> set[str]:
        used: set[str] = set()
        live = st.state != State.TAKEN_DOWN.value
        for chunk in _chunks(sorted(by_sha)):
            used.update(k for k in conn.execute(
                sa.select(s.object_key).join(sample_state, st.sample_id == s.id).where(s.sha256.in_(chunk), live)
            ).scalars() if k in keys)
        for chunk in _chunks(others):
            used.update(conn.execute(
                sa.select(s.object_key).join(sample_state, st.sample_id == s.id).where(s.object_key.in_(chunk), live)
            ).scalars())
        return used

    return ledger.read(run)


def set_status(ledger: Ledger, request_ids: Sequence[int], status: str, *, detail: str | None = None) -> None:
    """Move requests to `status` (processed or verified), stamping the matching time column."""
    now = _now()
    tr = takedown_request.c
    values: dict[str, Any] = {"status": status, "status_detail": detail}
    if status == "processed":
        values["processed_at"] = now
    if status == "verified":
        values["verified_at"] = now

    def run(conn: sa.Connection) -> None:
        for chunk in _chunks(list(request_ids)):
            conn.execute(sa.update(takedown_request).where(tr.id.in_(chunk), tr.status != "rejected").values(**values))

    ledger.transaction(run)


def objects_for(ledger: Ledger, request_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """The audit rows of the objects each request deleted or rewrote."""
    t = takedown_object.c

    def run(conn: sa.Connection) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {rid: [] for rid in request_ids}
        for chunk in _chunks(list(request_ids)):
            for row in conn.execute(sa.select(takedown_object).where(t.takedown_id.in_(chunk)).order_by(t.object_key)).mappings():
                out[row["takedown_id"]].append(dict(row))
        return out

    return ledger.read(run)


def matched_samples(ledger: Ledger, request_ids: Sequence[int]) -> dict[int, list[int]]:
    """The sample ids each request matched."""
    m = takedown_match.c

    def run(conn: sa.Connection) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {rid: [] for rid in request_ids}
        for chunk in _chunks(list(request_ids)):
            for rid, sid in conn.execute(sa.select(m.takedown_id, m.sample_id).where(m.takedown_id.in_(chunk)).order_by(m.sample_id)):
                out[rid].append(sid)
        return out

    return ledger.read(run)


def mark_verified_objects(ledger: Ledger, left: Mapping[int, Mapping[str, int]]) -> None:
    """Record what the verification found at each (request, key): versions left, and when it looked."""
    t = takedown_object.c
    now = _now()
    rows = [{"rid": rid, "key": key, "n": n} for rid, keys in left.items() for key, n in keys.items()]
    if not rows:
        return
    if ledger.is_postgres:
        # One statement (executemany would be a round trip per object).
        stmt = sa.text(
            "UPDATE takedown_object t SET verified_at = :now, versions_left = v.n FROM unnest(CAST(:rids AS bigint[]), "
            "CAST(:keys AS text[]), CAST(:ns AS integer[])) AS v(rid, key, n) WHERE t.takedown_id = v.rid AND t.object_key = v.key"
        )
        params = {"now": now, "rids": [r["rid"] for r in rows], "keys": [r["key"] for r in rows], "ns": [r["n"] for r in rows]}
        ledger.transaction(lambda conn: conn.execute(stmt, params))
        return
    stmt = (sa.update(takedown_object).where(t.takedown_id == sa.bindparam("rid"), t.object_key == sa.bindparam("key"))
            .values(verified_at=now, versions_left=sa.bindparam("n")))
    ledger.transaction(lambda conn: conn.execute(stmt, rows))
