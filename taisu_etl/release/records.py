"""The ledger's record of releases: `release` rows (staging -> published | failed, published ->
withdrawn), their members and their versions (`release_version`, one per published version).

Plain SQLAlchemy Core on `ledger.engine`, so it runs on SQLite and Postgres alike; members are
inserted in batches (insertmanyvalues), each batch its own short transaction.

One run at a time creates a release: `start` claims the name for a lease owner token (host, pid,
process start; taisu_etl/db/leases.py), the run renews `heartbeat_at` while it builds, and members,
publish and fail are conditional on the claim still being its own. A claim is taken over only from
a failed run, an owner provably dead on this node, or one whose heartbeat is older than a timeout.

Two locks keep a release consistent while takedowns run:
- the release row lock (`lock_for_patch`), held by a build while it re-checks takedowns and
  publishes, and by a takedown while it decides whether to patch: a takedown lands either before
  the build's check (the build refuses to publish) or after the publish (the release is patched);
- the patch lock (`patch_lock`), held for the whole of a patch or a withdrawal, so two of them never
  write the same release's files at once. It is not a transaction (a patch takes minutes, and a
  transaction that long would stop every SQLite writer): a Postgres advisory lock per release, or
  a lock file next to a SQLite ledger (one for all its releases: an embedded ledger patches rarely).
  Both go away with the process that held them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from taisu_etl.db.leases import LeaseOwner, aware_utc, db_now, iso_utc
from taisu_etl.db.schema import release, release_member, release_version, sample, sample_state
from taisu_etl.release.errors import ReleaseBusyError, ReleaseError, ReleaseExistsError, ReleaseTakenOverError
from taisu_etl.release.selection import blocked
from taisu_etl.vocab import State

log = logging.getLogger(__name__)
STAGING, PUBLISHED, FAILED, WITHDRAWN = "staging", "published", "failed", "withdrawn"
_BATCH = 500  # ids per IN (...) list
_PAGE = 5000  # rows per keyset page
# pg_advisory_lock(class, release id): the class keeps our locks apart from anyone else's.
_LOCK_CLASS = zlib.crc32(b"taisu-etl release patch") & 0x7FFFFFFF
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def get(engine: Engine, name: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(release).where(release.c.name == name)).mappings().first()
    return dict(row) if row else None


def latest_published(engine: Engine, *, exclude: str) -> dict[str, Any] | None:
    """The newest published release other than `exclude`: the default parent."""
    r = release.c
    query = (
        sa.select(release).where(r.state == PUBLISHED, r.name != exclude)
        .order_by(r.published_at.desc(), r.id.desc()).limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return dict(row) if row else None


def _now_value(conn: Connection) -> Any:
    """The time to write: Postgres's clock (every node compares heartbeats on one clock); here, UTC."""
    return sa.func.now() if conn.dialect.name == "postgresql" else datetime.now(timezone.utc)


def holder(row: Any, now: datetime | None = None) -> str:
    """Who holds a staging row, for messages: `release@host:pid (started ...) since T (last heartbeat N s ago)`.

    `row` has `owner`, `owner_since` and `heartbeat_at` (a result row or a dict from `get`).
    """
    get = row.get if isinstance(row, dict) else lambda key: getattr(row, key)
    owner = get("owner")
    who = LeaseOwner.parse(owner).describe() if owner else "a run of an older version (no owner recorded)"
    beat = aware_utc(get("heartbeat_at"))
    now = now or datetime.now(timezone.utc)
    ago = f" (last heartbeat {max(0.0, (now - beat).total_seconds()):.0f} s ago)" if beat is not None else ""
    return f"{who} since {iso_utc(aware_utc(get('owner_since')))}{ago}"


def _abandoned(row: Any, now: datetime, stale_after: float) -> str | None:
    """Why the staging row's owner may be taken over (`dead`, `stale`), or None while it may still be working.

    Provably dead (it ran on this node and its process is gone) wins at once; a live owner on this
    node is never taken over; an owner this node cannot see (another node, an older token) counts
    as gone only when its heartbeat is older than `stale_after` seconds.
    """
    liveness = LeaseOwner.parse(row.owner).liveness() if row.owner else "unknown"
    if liveness == "dead":
        return "dead"
    if liveness == "alive":
        return None
    beat = aware_utc(row.heartbeat_at)
    return "stale" if beat is None or (now - beat).total_seconds() > stale_after else None


def busy_message(name: str, row: Any, now: datetime) -> str:
    return f"release {name} is being created by {holder(row, now)}: wait for it to finish, or choose another name"


def start(engine: Engine, name: str, parent_id: int | None, recipe: dict[str, Any], owner: LeaseOwner, *,
          stale_after: float) -> int:
    """Claim the name for `owner` and return the staging row's id; one run at a time creates a release.

    A new name gets a new row. A failed run's row, or the staging row of an owner that is provably
    dead or whose heartbeat is older than `stale_after` seconds, is taken over (its members go) by
    an UPDATE conditional on the state, owner and heartbeat just read: of two runs taking over the
    same row, the one whose UPDATE matched wins. Raises ReleaseBusyError while a live run holds it,
    ReleaseExistsError for a published or withdrawn name.
    """
    r = release.c
    columns = (r.id, r.state, r.owner, r.owner_since, r.heartbeat_at)
    for _ in range(5):  # each pass ends in a claim or an error unless another run changed the row meanwhile
        try:
            with engine.begin() as conn:
                now, at = db_now(conn), _now_value(conn)
                claim = {"state": STAGING, "owner": owner.token, "owner_since": at, "heartbeat_at": at}
                row = conn.execute(sa.select(*columns).where(r.name == name)).first()
                if row is None:
                    # Two runs inserting at once: the unique name makes the second an IntegrityError (read again below).
                    return int(conn.execute(
                        sa.insert(release).values(name=name, parent_id=parent_id, recipe=recipe, **claim).returning(r.id)
                    ).scalar_one())
                if row.state == PUBLISHED:
                    raise ReleaseExistsError(f"release {name} is already published: releases are immutable, choose a new name")
                if row.state == WITHDRAWN:
                    raise ReleaseExistsError(f"release {name} was withdrawn: its name stays retired, choose a new one")
                why = "failed" if row.state == FAILED else _abandoned(row, now, stale_after)
                if why is None:
                    raise ReleaseBusyError(busy_message(name, row, now))
                same = [r.id == row.id, r.state == row.state, r.owner == row.owner if row.owner is not None else r.owner.is_(None)]
                if why == "stale":  # judged on the database: a heartbeat that arrived since keeps the owner
                    same.append(sa.or_(r.heartbeat_at.is_(None), r.heartbeat_at < now - timedelta(seconds=stale_after)))
                taken = conn.execute(
                    sa.update(release).where(*same)
                    .values(parent_id=parent_id, recipe=recipe, counts=None, manifest_key=None, published_at=None, version=1,
                            withdrawn_at=None, **claim)
                ).rowcount
                if taken != 1:
                    continue  # the row changed under us: decide again on what it is now
                if row.state == STAGING:
                    log.warning("release %s: taking over from %s, whose claim is %s", name, holder(row, now),
                                "provably dead" if why == "dead" else f"older than {stale_after:.0f} s")
                conn.execute(sa.delete(release_member).where(release_member.c.release_id == row.id))
                conn.execute(sa.delete(release_version).where(release_version.c.release_id == row.id))
                return int(row.id)
        except IntegrityError:
            continue
    with engine.connect() as conn:
        row = conn.execute(sa.select(*columns).where(r.name == name)).first()
        now = db_now(conn)
    if row is not None and row.state == STAGING:
        raise ReleaseBusyError(busy_message(name, row, now))
    raise ReleaseBusyError(f"release {name} is being claimed by other runs at the same moment: try again, or choose another name")


def heartbeat(engine: Engine, release_id: int, owner: str) -> bool:
    """Renew `owner`'s claim on the staging row; False when the claim is gone (taken over, or no longer staging)."""
    with engine.begin() as conn:
        return _renew(conn, release_id, owner)


def _renew(conn: Connection, release_id: int, owner: str) -> bool:
    r = release.c
    return conn.execute(
        sa.update(release).where(r.id == release_id, r.owner == owner, r.state == STAGING).values(heartbeat_at=_now_value(conn))
    ).rowcount == 1


def lost_message(conn: Connection, name: str, release_id: int) -> str:
    """Why a run's claim on release `name` is gone, naming who holds it now."""
    r = release.c
    row = conn.execute(sa.select(r.id, r.state, r.owner, r.owner_since, r.heartbeat_at).where(r.id == release_id)).first()
    if row is None:
        return f"release {name}: its ledger row was deleted while this run was building it; nothing was published"
    if row.state != STAGING:
        return f"release {name} became {row.state} while this run was building it (another run took it over); nothing was published by this run"
    return (f"release {name} was taken over by {holder(row, db_now(conn))} while this run was building it "
            "(this run was thought dead); nothing was published by this run")


def check_owner(conn: Connection, row: dict[str, Any] | None, name: str, release_id: int, owner: str) -> None:
    """Raise ReleaseTakenOverError unless `row` (read under the row lock) is still `owner`'s staging row."""
    if row is None or row["state"] != STAGING or row["owner"] != owner:
        raise ReleaseTakenOverError(lost_message(conn, name, release_id))


def add_members(engine: Engine, release_id: int, members: Sequence[tuple[int, str]], *, owner: str, name: str) -> None:
    """Record members, only while `owner` still holds the claim (checked and renewed in the same transaction).

    A run that was taken over must not add its members to the new owner's row: the renewal's row
    lock (Postgres) or the write lock (SQLite) orders this against a takeover, which deletes the
    members of the run it replaces.
    """
    with engine.begin() as conn:
        if not _renew(conn, release_id, owner):
            raise ReleaseTakenOverError(lost_message(conn, name, release_id))
        if members:
            conn.execute(sa.insert(release_member), [{"release_id": release_id, "sample_id": s, "shard": sh} for s, sh in members])


def lock_for_patch(conn: Connection, release_id: int) -> dict[str, Any] | None:
    """The release row (state, version, ...) under its row lock, held until `conn`'s transaction ends.

    A build holds this lock from its last takedown check to its publish, a patch while it commits a
    new version: a takedown that takes it to decide sees the release either before the check or
    after the publish, never in between. Postgres: SELECT ... FOR UPDATE. SQLite has no row locks:
    a write takes the database's write lock (a transaction there begins IMMEDIATE, which already
    holds it; the no-op UPDATE makes that explicit and keeps it true under any other BEGIN).
    """
    r = release.c
    if conn.dialect.name == "sqlite":
        conn.execute(sa.update(release).where(r.id == release_id).values(state=r.state))
    row = conn.execute(sa.select(release).where(r.id == release_id).with_for_update()).mappings().first()
    return dict(row) if row else None


def withdrawn_members(conn: Connection, release_id: int) -> int:
    """Members taken down or blocklisted since they were selected (a takedown during the build)."""
    m = release_member.c
    query = (
        sa.select(sa.func.count()).select_from(release_member)
        .join(sample_state, sample_state.c.sample_id == m.sample_id).join(sample, sample.c.id == m.sample_id)
        .where(m.release_id == release_id, sa.or_(sample_state.c.state == State.TAKEN_DOWN.value, blocked()))
    )
    return int(conn.execute(query).scalar_one())


def _add_version(conn: Connection, release_id: int, version: int, manifest_key: str, manifest_sha256: str, samples: int,
                 takedown_id: int | None) -> None:
    exists = conn.execute(
        sa.select(release_version.c.version).where(release_version.c.release_id == release_id, release_version.c.version == version)
    ).first()
    if exists is None:
        conn.execute(sa.insert(release_version).values(
            release_id=release_id, version=version, manifest_key=manifest_key, manifest_sha256=manifest_sha256,
            samples=samples, takedown_id=takedown_id,
        ))


def publish(conn: Connection, release_id: int, counts: dict[str, Any], manifest_key: str, manifest_sha256: str) -> None:
    """Version 1 is out: the row and its `release_version` row, in the caller's transaction."""
    conn.execute(
        sa.update(release).where(release.c.id == release_id)
        .values(state=PUBLISHED, counts=counts, manifest_key=manifest_key, published_at=datetime.now(timezone.utc), version=1)
    )
    _add_version(conn, release_id, 1, manifest_key, manifest_sha256, counts["samples"], None)


def mark_published(engine: Engine, release_id: int, manifest_key: str, manifest: dict[str, Any], manifest_sha256: str) -> None:
    """Recovery: the manifest (version 1) was written but the run died before recording it."""
    counts = manifest.get("counts") or {}
    with engine.begin() as conn:
        row = lock_for_patch(conn, release_id)
        if row is None or row["state"] == PUBLISHED:
            return
        conn.execute(
            sa.update(release).where(release.c.id == release_id)
            .values(state=PUBLISHED, manifest_key=manifest_key, published_at=datetime.now(timezone.utc), counts=counts,
                    version=int(manifest.get("version", 1)))
        )
        _add_version(conn, release_id, int(manifest.get("version", 1)), manifest_key, manifest_sha256, int(counts.get("samples", 0)), None)


def fail(engine: Engine, release_id: int, owner: str) -> None:
    """Mark the build failed, if `owner` still holds it: a run that was taken over must not fail its successor."""
    r = release.c
    with engine.begin() as conn:
        conn.execute(sa.update(release).where(r.id == release_id, r.state == STAGING, r.owner == owner).values(state=FAILED))


def all_releases(engine: Engine) -> list[dict[str, Any]]:
    parent = release.alias("parent")
    query = (
        sa.select(release, parent.c.name.label("parent_name"))
        .outerjoin(parent, parent.c.id == release.c.parent_id).order_by(release.c.id)
    )
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def member_count(engine: Engine, release_id: int) -> int:
    """Members of the current version (those no takedown patch has removed)."""
    m = release_member.c
    with engine.connect() as conn:
        return int(conn.execute(
            sa.select(sa.func.count()).select_from(release_member).where(m.release_id == release_id, m.removed_in_version.is_(None))
        ).scalar_one())


def versions(engine: Engine, release_id: int) -> list[dict[str, Any]]:
    """The `release_version` rows of a release, oldest first."""
    v = release_version.c
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(release_version).where(v.release_id == release_id).order_by(v.version)).mappings()]


# ------------------------------------------------------------------ takedown patches


def _chunks(items: Sequence[Any], size: int = _BATCH) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def current_members(engine: Engine, release_id: int, *, sample_ids: Iterable[int] = (), url_ids: Iterable[str] = ()) -> list[dict[str, Any]]:
    """(sample_id, url_id, shard) of the current members among the given samples or public ids."""
    m = release_member.c
    base = (
        sa.select(m.sample_id, sample.c.url_id, m.shard).join(sample, sample.c.id == m.sample_id)
        .where(m.release_id == release_id, m.removed_in_version.is_(None))
    )
    out: dict[int, dict[str, Any]] = {}
    with engine.connect() as conn:
        for chunk in _chunks(sorted(set(sample_ids))):
            out.update((r["sample_id"], dict(r)) for r in conn.execute(base.where(m.sample_id.in_(chunk))).mappings())
        for chunk in _chunks(sorted(set(url_ids))):
            out.update((r["sample_id"], dict(r)) for r in conn.execute(base.where(sample.c.url_id.in_(chunk))).mappings())
    return sorted(out.values(), key=lambda r: r["url_id"])


def iter_current(engine: Engine, release_id: int, columns: Sequence[str] = ("url_id",)) -> Iterator[dict[str, Any]]:
    """The current members' sample columns in `url_id` order, page by page (no long transaction)."""
    m = release_member.c
    cols = [sample.c.id, sample.c.url_id, *[sample.c[c] for c in columns if c not in ("id", "url_id")]]
    base = (
        sa.select(*cols).join(release_member, m.sample_id == sample.c.id)
        .where(m.release_id == release_id, m.removed_in_version.is_(None))
    )
    after_uid, after_id = "", 0
    while True:
        keyset = sa.and_(sample.c.url_id >= after_uid, sa.or_(sample.c.url_id > after_uid, sample.c.id > after_id))
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(base.where(keyset).order_by(sample.c.url_id, sample.c.id).limit(_PAGE)).mappings()]
        yield from rows
        if len(rows) < _PAGE:
            return
        after_uid, after_id = rows[-1]["url_id"], rows[-1]["id"]


def commit_patch(
    conn: Connection, release_id: int, *, from_version: int, removed: Sequence[int], counts: dict[str, Any], manifest_key: str,
    manifest_sha256: str, takedown_id: int | None,
) -> None:
    """Record version from_version + 1 (whose manifest is written): members removed, row, version row.

    Run under `lock_for_patch` in the caller's transaction; refuses when the row has moved on, which
    the patch lock should make impossible.
    """
    row = lock_for_patch(conn, release_id)
    if row is None or row["state"] != PUBLISHED or int(row["version"]) != from_version:
        state = "gone" if row is None else f"{row['state']} at version {row['version']}"
        raise ReleaseError(f"release id {release_id} changed while it was being patched from version {from_version} ({state}): run the patch again")
    to_version = from_version + 1
    m = release_member.c
    for chunk in _chunks(sorted(set(removed))):
        conn.execute(
            sa.update(release_member).where(m.release_id == release_id, m.sample_id.in_(chunk), m.removed_in_version.is_(None))
            .values(removed_in_version=to_version)
        )
    conn.execute(sa.update(release).where(release.c.id == release_id).values(version=to_version, counts=counts, manifest_key=manifest_key))
    _add_version(conn, release_id, to_version, manifest_key, manifest_sha256, int(counts["samples"]), takedown_id)


def mark_withdrawn(engine: Engine, release_id: int) -> None:
    with engine.begin() as conn:
        row = lock_for_patch(conn, release_id)
        if row is not None and row["state"] != WITHDRAWN:
            conn.execute(sa.update(release).where(release.c.id == release_id)
                         .values(state=WITHDRAWN, withdrawn_at=datetime.now(timezone.utc)))


@contextlib.contextmanager
def patch_lock(engine: Engine, release_id: int, *, on_wait: Any = None) -> Iterator[None]:
    """Hold the release's patch lock (see the module docstring); `on_wait()` is called once if another holds it."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            args = {"c": _LOCK_CLASS, "r": int(release_id) & 0x7FFFFFFF}
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:c, :r)"), args).scalar_one()
            if not got:
                if on_wait is not None:
                    on_wait()
                conn.execute(sa.text("SELECT pg_advisory_lock(:c, :r)"), args)
            conn.commit()  # a session lock: outlives the transaction, which must not stay open
            try:
                yield
            finally:
                try:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:c, :r)"), args)
                    conn.commit()
                except DBAPIError:  # a lost connection has dropped the lock with its session
                    pass
        return
    database = engine.url.database
    if not database or database == ":memory:":
        with _THREAD_LOCKS_GUARD:
            lock = _THREAD_LOCKS.setdefault(f"{id(engine)}:{release_id}", threading.Lock())
        if not lock.acquire(blocking=False):
            if on_wait is not None:
                on_wait()
            lock.acquire()
        try:
            yield
        finally:
            lock.release()
        return
    # flock (not fcntl record locks) so that two threads of one process exclude each other too.
    fd = os.open(f"{database}.release-patch.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock
