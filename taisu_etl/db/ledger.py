"""Batched ledger operations: add samples, claim a shard's work, move samples between states.

Every state change writes exactly one `sample_event` row per sample, in the same transaction as
the change. On Postgres each batch is one statement (arrays unnested server-side, a CTE doing the
UPDATE and the event INSERT together), which is what keeps the ledger off the critical path of a
166M-sample run; SQLite takes the simple path under `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from taisu_etl.db.context import RunContext
from taisu_etl.db.engine import check_connection, describe_db_error, is_connection_lost, make_engine
from taisu_etl.db.overlap import BackgroundWriter
from taisu_etl.db.schema import ingest_issue, sample, sample_event, sample_state
from taisu_etl.errors import LedgerError
from taisu_etl.urls import caption_hash, normalise_caption, pair_hash, url_id
from taisu_etl.vocab import Stage, State, check_reason

# Columns a stage may set while moving a sample; the rest are the ledger's own. Wide ones live on
# `sample`, the retry bookkeeping on the narrow `sample_state`.
WIDE_UPDATABLE = frozenset(
    c.name for c in sample.columns if c.name not in {"id", "pair_hash", "url_id", "caption_hash", "created_at", "updated_at"}
)
STATE_UPDATABLE = frozenset({"attempts", "next_attempt_at"})
UPDATABLE = WIDE_UPDATABLE | STATE_UPDATABLE
_SQLITE_CHUNK = 500  # stays far below SQLite's bound-parameter limit
_RETRY_FIRST_S, _RETRY_MAX_S = 0.25, 5.0  # reconnect back-off: doubles from the first to the max

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewSample:
    """A row to add. `identity`, when given, replaces the URL as the pair's key: archived images
    have no URL, and a recheck's new candidate must not collapse into the sample it came from."""

    caption: str
    source: str
    url: str | None = None  # normalised (taisu_etl.urls.normalise_url)
    identity: str | None = None
    source_pos: str | None = None
    taisu_id: str | None = None
    fields: Mapping[str, Any] | None = None  # extra UPDATABLE columns, e.g. object_key of an archived image

    @property
    def key(self) -> str:
        """What identifies the pair: the explicit identity if any, else the URL."""
        key = self.identity if self.identity is not None else self.url
        if not key:
            raise ValueError("a sample needs a url or an identity")
        return key


@dataclass
class AddResult:
    inserted: int = 0
    duplicates: int = 0

    def __iadd__(self, other: "AddResult") -> "AddResult":
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        return self


@dataclass(frozen=True)
class Outcome:
    """One stage decision about one sample."""

    sample_id: int
    to_state: State
    reason: str
    details: Mapping[str, Any] | None = None
    updates: Mapping[str, Any] = field(default_factory=dict)


def shard_of(url_hash: str, shards: int) -> int:
    """Shard of a sample: from its URL id, so every caption of one URL lands in the same shard."""
    return int(url_hash[:8], 16) % shards


def _dumps(obj: Mapping[str, Any] | None) -> str | None:
    if obj is None:
        return None
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str, sort_keys=True)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Ledger:
    """The sample ledger on one database. Thread-safe as far as its SQLAlchemy engine is.

    On Postgres, a transaction that fails because the connection was lost (a server restart, a
    dropped connection) is run again, whole, on a new connection, with back-off, for up to
    `retry_seconds`; then it ends in one LedgerError. Re-running is safe: moves are guarded by
    the source state and the lease owner, and inserts skip rows already there.
    """

    def __init__(self, engine: Engine, *, shards: int = 16, recipe_version: str | None = None, retry_seconds: float = 60) -> None:
        self.engine = engine
        self.shards = shards
        self.recipe_version = recipe_version
        self.retry_seconds = retry_seconds
        self.is_postgres = engine.dialect.name == "postgresql"

    @classmethod
    def open(
        cls, url: str, *, shards: int = 16, recipe_version: str | None = None, require_schema: bool = True,
        retry_seconds: float = 60,
    ) -> "Ledger":
        """Connect and check the schema is current; every failure is a one-line LedgerError."""
        from taisu_etl.db.migrate import current_revision, head_revision

        engine = make_engine(url)
        check_connection(engine)
        if require_schema:
            have, want = current_revision(engine), head_revision()
            if have != want:
                safe = engine.url.render_as_string(hide_password=True)
                state = "has no schema" if have is None else f"is at schema revision {have}, this version needs {want}"
                raise LedgerError(f"the ledger at {safe} {state}: run `taisu-etl db upgrade`")
        return cls(engine, shards=shards, recipe_version=recipe_version, retry_seconds=retry_seconds)

    def dispose(self) -> None:
        self.engine.dispose()

    def event_fields(self, ctx: RunContext | None = None) -> dict[str, Any]:
        """The Airflow run, task and worker columns of an event written now (for writers outside `move`)."""
        return self._ctx(ctx)

    def _ctx(self, ctx: RunContext | None) -> dict[str, Any]:
        ctx = ctx or RunContext.from_airflow_env(recipe_version=self.recipe_version)
        fields = ctx.event_fields()
        if fields["recipe_version"] is None:
            fields["recipe_version"] = self.recipe_version
        return fields

    # ------------------------------------------------------------------ add
    def add_samples(
        self, rows: Iterable[NewSample], *, ctx: RunContext | None = None, batch_size: int = 5000,
        state: State = State.INGESTED, reason: str = "ingested",
    ) -> AddResult:
        """Insert new (URL, caption) pairs; pairs already in the ledger (or twice in `rows`) collapse.

        Each inserted row gets one `ingest` event (its source file and position are on the sample
        row itself). Returns how many were new and how many were not.
        """
        check_reason(reason)
        total = AddResult()
        ev = self._ctx(ctx)

        def count(result: AddResult) -> None:
            nonlocal total
            total += result

        with BackgroundWriter(on_result=count) as writer:
            batch: list[NewSample] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= batch_size:
                    writer.submit(self._add_batch, batch, ev, state, reason)
                    batch = []
            if batch:
                writer.submit(self._add_batch, batch, ev, state, reason)
        return total

    def _prepare(self, batch: Sequence[NewSample]) -> list[dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for r in batch:
            caption = normalise_caption(r.caption)
            ph = pair_hash(r.key, caption, caption_is_normalised=True)
            if ph in out:
                continue
            uid = url_id(r.key)
            rec = {
                "pair_hash": ph, "url_id": uid, "url": r.url, "taisu_id": r.taisu_id,
                "caption": caption, "caption_hash": caption_hash(caption, caption_is_normalised=True),
                "source": r.source, "source_pos": r.source_pos, "shard": shard_of(uid, self.shards),
            }
            if r.fields:
                bad = set(r.fields) - WIDE_UPDATABLE
                if bad:
                    raise ValueError(f"cannot set ledger-owned columns at ingest: {sorted(bad)}")
                rec.update(r.fields)
            out[ph] = rec
        return list(out.values())

    def _add_batch(self, batch: Sequence[NewSample], ev: dict[str, Any], state: State, reason: str) -> AddResult:
        recs = self._prepare(batch)
        if self.is_postgres:
            inserted = self._pg_add(recs, ev, state, reason)
        else:
            inserted = self._sqlite_add(recs, ev, state, reason)
        return AddResult(inserted=inserted, duplicates=len(batch) - inserted)

    def _pg_add(self, recs: list[dict[str, Any]], ev: dict[str, Any], state: State, reason: str) -> int:
        cols = sorted({k for r in recs for k in r} - {"shard"})
        arrays = ", ".join([f"CAST(:c_{c} AS {_pg_type(c)}[])" for c in cols] + ["CAST(:c_shard AS integer[])"])
        sql = sa.text(
            f"WITH v AS (SELECT * FROM unnest({arrays}) AS v({', '.join(cols)}, shard)), "
            f"ins AS (INSERT INTO sample ({', '.join(cols)}) SELECT {', '.join(cols)} FROM v "
            "ON CONFLICT (pair_hash) DO NOTHING RETURNING id, pair_hash), "
            "st AS (INSERT INTO sample_state (sample_id, shard, state, last_reason) "
            "SELECT ins.id, v.shard, :state, :reason FROM ins JOIN v ON v.pair_hash = ins.pair_hash) "
            "INSERT INTO sample_event (sample_id, stage, from_state, to_state, reason, details, "
            "dag_id, run_id, task_id, map_index, try_number, worker, recipe_version) "
            "SELECT id, :stage, NULL, :state, :reason, NULL, "
            ":dag_id, :run_id, :task_id, :map_index, :try_number, :worker, :recipe_version FROM ins"
        )
        params = {f"c_{c}": [r.get(c) for r in recs] for c in cols}
        params["c_shard"] = [r["shard"] for r in recs]
        params.update(ev, state=state.value, reason=reason, stage=Stage.INGEST.value)
        return self.transaction(lambda conn: conn.execute(sql, params).rowcount)

    def _sqlite_add(self, recs: list[dict[str, Any]], ev: dict[str, Any], state: State, reason: str) -> int:
        return self.transaction(lambda conn: self._sqlite_add_in(conn, recs, ev, state, reason))

    def _sqlite_add_in(self, conn: Connection, recs: list[dict[str, Any]], ev: dict[str, Any], state: State, reason: str) -> int:
        inserted = 0
        for chunk in _chunks(recs, _SQLITE_CHUNK):
            existing = set(
                conn.execute(sa.select(sample.c.pair_hash).where(sample.c.pair_hash.in_([r["pair_hash"] for r in chunk]))).scalars()
            )
            new = [r for r in chunk if r["pair_hash"] not in existing]
            # Rows differ in which optional columns they set; insert each shape separately.
            by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
            for r in new:
                by_shape[tuple(sorted(r))].append(r)
            for shape_rows in by_shape.values():
                ids = conn.execute(
                    sa.insert(sample).returning(sample.c.id, sort_by_parameter_order=True),
                    [{k: v for k, v in r.items() if k != "shard"} for r in shape_rows],
                ).scalars().all()
                conn.execute(
                    sa.insert(sample_state),
                    [{"sample_id": i, "shard": r["shard"], "state": state.value, "last_reason": reason} for i, r in zip(ids, shape_rows)],
                )
                conn.execute(
                    sa.insert(sample_event),
                    [
                        dict(ev, sample_id=i, stage=Stage.INGEST.value, from_state=None, to_state=state.value,
                             reason=reason, details=None)
                        for i, r in zip(ids, shape_rows)
                    ],
                )
                inserted += len(ids)
        return inserted

    # ------------------------------------------------------------------ claim
    def claim(
        self, *, state: State, owner: str, shard: int | None = None, limit: int = 1000,
        lease_seconds: int = 120, columns: Sequence[str] = ("id", "url", "caption"),
    ) -> list[dict[str, Any]]:
        """Lease up to `limit` samples in `state` (of `shard`, if given) to `owner`.

        Samples leased to someone else are skipped until their lease expires, so concurrent workers
        never get the same sample (`FOR UPDATE SKIP LOCKED` on Postgres; the write lock on SQLite).
        Samples whose `next_attempt_at` is in the future are not due and are skipped too.
        """
        wide = {c.name for c in sample.columns}
        narrow = {c.name for c in sample_state.columns} - {"sample_id"}
        bad = set(columns) - wide - narrow
        if bad:
            raise ValueError(f"unknown sample columns: {sorted(bad)}")
        if self.is_postgres:
            where = "state = :state AND (lease_until IS NULL OR lease_until < now()) AND (next_attempt_at IS NULL OR next_attempt_at <= now())"
            if shard is not None:
                where = "shard = :shard AND " + where
            picked = ", ".join(f"s.{c}" if c in wide else f"c.{c}" for c in columns)
            sql = sa.text(
                "WITH c AS (UPDATE sample_state st SET lease_owner = :owner, lease_until = now() + make_interval(secs => :lease) "
                f"FROM (SELECT sample_id FROM sample_state WHERE {where} ORDER BY sample_id LIMIT :limit FOR UPDATE SKIP LOCKED) f "
                "WHERE st.sample_id = f.sample_id RETURNING st.*) "
                f"SELECT {picked} FROM sample s JOIN c ON s.id = c.sample_id ORDER BY s.id"
            )
            params = {"state": state.value, "shard": shard, "owner": owner, "lease": lease_seconds, "limit": limit}
            return self.transaction(lambda conn: [dict(r) for r in conn.execute(sql, params).mappings().all()])
        st = sample_state.c

        def run(conn: Connection) -> list[dict[str, Any]]:
            now = _now()
            cond = [
                st.state == state.value,
                sa.or_(st.lease_until.is_(None), st.lease_until < now),
                sa.or_(st.next_attempt_at.is_(None), st.next_attempt_at <= now),
            ]
            if shard is not None:
                cond.insert(0, st.shard == shard)
            ids = list(conn.execute(sa.select(st.sample_id).where(*cond).order_by(st.sample_id).limit(limit)).scalars())
            rows: list[dict[str, Any]] = []
            for chunk in _chunks(ids, _SQLITE_CHUNK):
                conn.execute(
                    sa.update(sample_state).where(st.sample_id.in_(chunk)).values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds))
                )
                picked = [sample.c[c] if c in wide else sample_state.c[c] for c in columns]
                query = sa.select(*picked).join(sample_state, st.sample_id == sample.c.id).where(sample.c.id.in_(chunk)).order_by(sample.c.id)
                rows.extend(dict(r) for r in conn.execute(query).mappings())
            return rows

        return self.transaction(run)

    def renew_leases(self, owner: str, ids: Sequence[int], lease_seconds: int, *, retry: bool = True) -> int:
        """Extend `owner`'s leases on `ids` to `lease_seconds` from now; returns how many it still held.

        Samples being moved at that moment are skipped rather than waited for (their lease ends
        with the move anyway), so a heartbeat never deadlocks with its own stage's writes.
        """
        if not ids:
            return 0
        if self.is_postgres:
            sql = sa.text(
                "UPDATE sample_state st SET lease_until = now() + make_interval(secs => :lease) "
                "FROM (SELECT sample_id FROM sample_state WHERE sample_id = ANY(CAST(:ids AS bigint[])) "
                "AND lease_owner = :owner FOR UPDATE SKIP LOCKED) f WHERE st.sample_id = f.sample_id"
            )
            params = {"ids": list(ids), "owner": owner, "lease": lease_seconds}
            return self.transaction(lambda conn: conn.execute(sql, params).rowcount, retry=retry)
        st = sample_state.c

        def run(conn: Connection) -> int:
            until = _now() + timedelta(seconds=lease_seconds)
            return sum(
                conn.execute(sa.update(sample_state).where(st.sample_id.in_(chunk), st.lease_owner == owner).values(lease_until=until)).rowcount
                for chunk in _chunks(list(ids), _SQLITE_CHUNK)
            )

        return self.transaction(run, retry=retry)

    def release_claims(self, owner: str, ids: Sequence[int] | None = None, *, retry: bool = True) -> int:
        """Give back the leases `owner` still holds: on `ids`, or everywhere (a worker that stops early).

        Without `ids` this looks at every sample (lease owners are not indexed): pass the ids when
        they are known.
        """
        st = sample_state.c

        def run(conn: Connection) -> int:
            free = sa.update(sample_state).values(lease_owner=None, lease_until=None)
            if ids is None:
                return conn.execute(free.where(st.lease_owner == owner)).rowcount
            return sum(
                conn.execute(free.where(st.sample_id.in_(chunk), st.lease_owner == owner)).rowcount
                for chunk in _chunks(list(ids), _SQLITE_CHUNK if not self.is_postgres else 10_000)
            )

        return self.transaction(run, retry=retry)

    def scan(
        self, *, state: State, shard: int | None = None, after_id: int = 0, limit: int = 5000,
        columns: Sequence[str] = ("id", "url", "caption"),
    ) -> list[dict[str, Any]]:
        """Read up to `limit` samples in `state` with id > `after_id`, in id order, without leasing.

        For cheap, deterministic stages (the text filter): two workers that scan the same shard
        compute the same decisions, and `move` applies each one once because it guards on the
        source state. Stages with side effects (fetch) use `claim` instead.
        """
        bad = set(columns) - {c.name for c in sample.columns}
        if bad:
            raise ValueError(f"unknown sample columns: {sorted(bad)}")
        st = sample_state.c
        cond = [st.state == state.value, st.sample_id > after_id]
        if shard is not None:
            cond.insert(0, st.shard == shard)
        query = (
            sa.select(*[sample.c[c] for c in columns])
            .join(sample_state, st.sample_id == sample.c.id)
            .where(*cond)
            .order_by(st.sample_id)
            .limit(limit)
        )
        return self.read(lambda conn: [dict(r) for r in conn.execute(query).mappings()])

    def caption_frequencies(self, hashes: Iterable[str]) -> dict[str, int]:
        """How many samples in the whole ledger share each caption hash (for over-frequent captions)."""
        wanted = sorted(set(hashes))

        def run(conn: Connection) -> dict[str, int]:
            counts: dict[str, int] = {}
            for chunk in _chunks(wanted, _SQLITE_CHUNK if not self.is_postgres else 10_000):
                rows = conn.execute(
                    sa.select(sample.c.caption_hash, sa.func.count()).where(sample.c.caption_hash.in_(chunk)).group_by(sample.c.caption_hash)
                )
                counts.update({h: n for h, n in rows})
            return counts

        return self.read(run)

    def record_issues(self, issues: Iterable[tuple[str, str, str, str]], *, ctx: RunContext | None = None, batch_size: int = 5000) -> int:
        """Store bad source rows as (source, position, reason, detail); re-recording one is a no-op."""
        run_id = self._ctx(ctx)["run_id"]
        insert = (postgresql.insert if self.is_postgres else sqlite_insert)(ingest_issue).on_conflict_do_nothing()
        stored = 0
        batch: list[dict[str, Any]] = []

        def flush() -> int:
            return self.transaction(lambda conn: conn.execute(insert, batch).rowcount or 0)

        for source, position, reason, detail in issues:
            check_reason(reason)
            batch.append({"source": source, "position": position, "reason": reason, "detail": detail[:2000], "run_id": run_id})
            if len(batch) >= batch_size:
                stored += flush()
                batch = []
        if batch:
            stored += flush()
        return stored

    def issue_counts(self) -> list[tuple[str, str, int]]:
        """(source, reason, rows lost) for every source file with bad rows."""
        rows = self.read(lambda conn: conn.execute(
            sa.select(ingest_issue.c.source, ingest_issue.c.reason, sa.func.count()).group_by(ingest_issue.c.source, ingest_issue.c.reason)
        ).all())
        return sorted((tuple(r) for r in rows), key=lambda t: (t[0], -t[2]))  # type: ignore[misc]

    # ------------------------------------------------------------------ move
    def move(
        self, ids: Sequence[int], *, from_state: State, to_state: State, stage: Stage, reason: str,
        details: Sequence[Mapping[str, Any] | None] | Mapping[str, Any] | None = None,
        updates: Mapping[str, Sequence[Any]] | None = None, owner: str | None = None,
        ctx: RunContext | None = None,
    ) -> int:
        """Move samples from `from_state` to `to_state`, one `reason`-coded event each.

        Samples no longer in `from_state` (or, with `owner`, no longer leased to it) are left alone
        and get no event, so a late or duplicate worker cannot apply a decision twice. `details`
        is one mapping for all or one per sample; `updates` maps column names to one value per
        sample. Leases on moved samples end. A move to the same state (an observation such as a
        recheck) records its event but keeps the sample's `last_reason`. Returns how many moved.
        """
        check_reason(reason)
        n = len(ids)
        if n == 0:
            return 0
        if details is None or isinstance(details, Mapping):
            det = [_dumps(details)] * n  # type: ignore[arg-type]
        else:
            if len(details) != n:
                raise ValueError("details must have one entry per sample")
            det = [_dumps(d) for d in details]
        upd = dict(updates or {})
        bad = set(upd) - UPDATABLE
        if bad:
            raise ValueError(f"cannot update ledger-owned or unknown columns: {sorted(bad)}")
        for col, vals in upd.items():
            if len(vals) != n:
                raise ValueError(f"updates[{col!r}] must have one value per sample")
        ev = self._ctx(ctx)
        if self.is_postgres:
            return self._pg_move(list(ids), det, upd, from_state, to_state, stage, reason, owner, ev)
        return self._sqlite_move(list(ids), det, upd, from_state, to_state, stage, reason, owner, ev)

    def _pg_move(self, ids, det, upd, from_state, to_state, stage, reason, owner, ev) -> int:  # type: ignore[no-untyped-def]
        cols = list(upd)
        arrays = ["CAST(:ids AS bigint[])", "CAST(:details AS jsonb[])"] + [f"CAST(:u_{c} AS {_pg_type(c)}[])" for c in cols]
        names = ["id", "details"] + [f"u_{c}" for c in cols]
        narrow = "".join(f", {c} = v.u_{c}" for c in cols if c in STATE_UPDATABLE)
        wide = [c for c in cols if c not in STATE_UPDATABLE]
        guard = " AND st.lease_owner = :owner" if owner is not None else ""
        reason_set = "" if to_state == from_state else "last_reason = :reason, "
        returning = "".join(f", v.u_{c}" for c in wide)
        wide_cte = ""
        if wide:
            sets = ", ".join(f"{c} = m.u_{c}" for c in wide)
            wide_cte = f"w AS (UPDATE sample s SET {sets}, updated_at = now() FROM moved m WHERE s.id = m.id), "
        sql = sa.text(
            f"WITH v AS (SELECT * FROM unnest({', '.join(arrays)}) AS v({', '.join(names)})), "
            f"moved AS (UPDATE sample_state st SET state = :to_state, {reason_set}updated_at = now(), "
            f"lease_owner = NULL, lease_until = NULL{narrow} FROM v "
            f"WHERE st.sample_id = v.id AND st.state = :from_state{guard} RETURNING st.sample_id AS id, v.details{returning}), "
            f"{wide_cte}"
            "ev AS (INSERT INTO sample_event (sample_id, stage, from_state, to_state, reason, details, "
            "dag_id, run_id, task_id, map_index, try_number, worker, recipe_version) "
            "SELECT id, :stage, :from_state, :to_state, :reason, details, "
            ":dag_id, :run_id, :task_id, :map_index, :try_number, :worker, :recipe_version FROM moved RETURNING 1) "
            "SELECT count(*) FROM ev"
        )
        params: dict[str, Any] = {"ids": ids, "details": det, **{f"u_{c}": list(v) for c, v in upd.items()}}
        params.update(ev, to_state=to_state.value, from_state=from_state.value, reason=reason, stage=stage.value, owner=owner)
        return self.transaction(lambda conn: int(conn.execute(sql, params).scalar_one()))

    def _sqlite_move(self, ids, det, upd, from_state, to_state, stage, reason, owner, ev) -> int:  # type: ignore[no-untyped-def]
        pos = {i: k for k, i in enumerate(ids)}
        st = sample_state.c
        narrow = [c for c in upd if c in STATE_UPDATABLE]
        wide = [c for c in upd if c not in STATE_UPDATABLE]

        def run(conn: Connection) -> int:
            moved = 0
            for chunk in _chunks(ids, _SQLITE_CHUNK):
                cond = [st.sample_id.in_(chunk), st.state == from_state.value]
                if owner is not None:
                    cond.append(st.lease_owner == owner)
                eligible = list(conn.execute(sa.select(st.sample_id).where(*cond)).scalars())
                if not eligible:
                    continue
                conn.execute(
                    sa.update(sample_state)
                    .where(st.sample_id == sa.bindparam("b_id"))
                    .values(
                        state=to_state.value, updated_at=sa.func.now(), lease_owner=None, lease_until=None,
                        **({} if to_state == from_state else {"last_reason": reason}),
                        **{c: sa.bindparam(f"b_{c}") for c in narrow},
                    ),
                    [{"b_id": i, **{f"b_{c}": upd[c][pos[i]] for c in narrow}} for i in eligible],
                )
                if wide:
                    conn.execute(
                        sa.update(sample)
                        .where(sample.c.id == sa.bindparam("b_id"))
                        .values(updated_at=sa.func.now(), **{c: sa.bindparam(f"b_{c}") for c in wide}),
                        [{"b_id": i, **{f"b_{c}": upd[c][pos[i]] for c in wide}} for i in eligible],
                    )
                conn.execute(
                    sa.insert(sample_event),
                    [
                        dict(ev, sample_id=i, stage=stage.value, from_state=from_state.value, to_state=to_state.value,
                             reason=reason, details=json.loads(det[pos[i]]) if det[pos[i]] is not None else None)
                        for i in eligible
                    ],
                )
                moved += len(eligible)
            return moved

        return self.transaction(run)

    def apply(
        self, outcomes: Sequence[Outcome], *, from_state: State, stage: Stage, owner: str | None = None,
        ctx: RunContext | None = None,
    ) -> dict[str, int]:
        """Write a batch of mixed decisions (grouped into one `move` per target state and reason).

        Returns how many samples moved per reason code.
        """
        groups: dict[tuple[State, str, tuple[str, ...]], list[Outcome]] = defaultdict(list)
        for o in outcomes:
            groups[(o.to_state, o.reason, tuple(sorted(o.updates)))].append(o)
        counts: dict[str, int] = defaultdict(int)
        for (to_state, reason, cols), group in groups.items():
            counts[reason] += self.move(
                [o.sample_id for o in group], from_state=from_state, to_state=to_state, stage=stage, reason=reason,
                details=[o.details for o in group], updates={c: [o.updates[c] for o in group] for c in cols},
                owner=owner, ctx=ctx,
            )
        return dict(counts)

    # ------------------------------------------------------------------ read
    def funnel(self) -> dict[str, int]:
        """Samples per state."""
        rows = self.read(lambda conn: conn.execute(sa.select(sample_state.c.state, sa.func.count()).group_by(sample_state.c.state)).all())
        return {s: n for s, n in rows}

    def reason_counts(self) -> list[tuple[str, str | None, int]]:
        """(state, last reason, samples), largest first: why the samples are where they are."""
        rows = self.read(lambda conn: conn.execute(
            sa.select(sample_state.c.state, sample_state.c.last_reason, sa.func.count()).group_by(sample_state.c.state, sample_state.c.last_reason)
        ).all())
        return sorted(((s, r, n) for s, r, n in rows), key=lambda t: (-t[2], t[0], t[1] or ""))

    def iter_captions(self, *, generated: bool = True, batch_size: int = 5000) -> Iterator[str]:
        """Every caption that passed the text filter (cleaned form), then the generated ones: streamed."""
        st = sample_state.c
        dropped = [State.INGESTED.value, State.TEXT_REJECTED.value]
        web = sa.select(sa.func.coalesce(sample.c.caption_clean, sample.c.caption)).join(
            sample_state, st.sample_id == sample.c.id).where(st.state.not_in(dropped))
        queries = [web]
        if generated:
            queries.append(sa.select(sample.c.gen_caption).where(sample.c.gen_caption.is_not(None)))
        with self.engine.connect() as conn:
            for query in queries:
                for text in conn.execution_options(stream_results=True, yield_per=batch_size).execute(query).scalars():
                    yield text

    def events(self, sample_id: int) -> list[dict[str, Any]]:
        """The lineage of one sample, oldest first."""
        query = sa.select(sample_event).where(sample_event.c.sample_id == sample_id).order_by(sample_event.c.id)
        return self.read(lambda conn: [dict(r) for r in conn.execute(query).mappings()])

    def shards_with(self, state: State) -> list[int]:
        """Shards that hold at least one sample in `state` (what a mapped stage task should cover)."""
        st = sample_state.c
        query = sa.select(st.shard).where(st.state == state.value).distinct().order_by(st.shard)
        return self.read(lambda conn: list(conn.execute(query).scalars()))

    # ------------------------------------------------------------------ plumbing
    def transaction(self, fn: Callable[[Connection], T], *, retry: bool = True) -> T:
        """Run `fn(conn)` in one transaction and commit; while the connection is lost, run it again.

        The whole function is re-run on a new connection (the error usually comes from an execute
        or the commit, not from BEGIN), so `fn` must be safe to run twice: guarded moves and
        conflict-skipping inserts are. `retry=False` gives up at the first lost connection.
        """
        return self._retrying(fn, write=True, retry=retry)

    def read(self, fn: Callable[[Connection], T], *, retry: bool = True) -> T:
        """Run `fn(conn)` on a connection without a write transaction (no write lock on SQLite); retried like `transaction`."""
        return self._retrying(fn, write=False, retry=retry)

    def _retrying(self, fn: Callable[[Connection], T], *, write: bool, retry: bool) -> T:
        deadline: float | None = None
        delay = _RETRY_FIRST_S
        while True:
            started = False
            try:
                with (self.engine.begin() if write else self.engine.connect()) as conn:
                    started = True
                    result = fn(conn)
                if deadline is not None:
                    log.warning("ledger %s reachable again", self._safe_url())
                return result
            except DBAPIError as exc:
                # SQLite has no connection to lose: its errors (a lock timeout) are never retried.
                lost = self.is_postgres and is_connection_lost(exc)
                if not (retry and lost):
                    if lost or (not started and isinstance(exc, OperationalError)):
                        raise LedgerError(f"lost the ledger at {self._safe_url()}: {describe_db_error(exc)}") from None
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.retry_seconds
                    log.warning("lost the ledger at %s (%s); reconnecting for up to %g s", self._safe_url(), describe_db_error(exc),
                                self.retry_seconds)
                if now >= deadline:
                    raise LedgerError(
                        f"lost the ledger at {self._safe_url()} and could not reconnect within {self.retry_seconds:g} s "
                        f"(pipeline.db_retry_seconds): {describe_db_error(exc)}; check that the database server is running"
                    ) from None
                time.sleep(min(delay, deadline - now))
                delay = min(delay * 2, _RETRY_MAX_S)

    def _safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)


def _pg_type(column: str) -> str:
    table = sample_state if column in STATE_UPDATABLE else sample
    return table.c[column].type.compile(dialect=postgresql.dialect())


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
