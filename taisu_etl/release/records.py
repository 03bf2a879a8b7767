"""The ledger's record of releases: `release` rows (staging -> published | failed, published ->
withdrawn), their members and their versions (`release_version`, one per published version).

Plain SQLAlchemy Core on `ledger.engine`, so it runs on SQLite and Postgres alike; members are
inserted in batches (insertmanyvalues), each batch its own short transaction.

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
import os
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from taisu_etl.db.schema import release, release_member, release_version, sample, sample_state
from taisu_etl.release.errors import ReleaseError
from taisu_etl.release.selection import blocked
from taisu_etl.vocab import State

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


def start(engine: Engine, name: str, parent_id: int | None, recipe: dict[str, Any]) -> int:
    """Create the staging row, or take over the row a crashed or failed run left (its members go)."""
    try:
        with engine.begin() as conn:
            row = conn.execute(sa.select(release.c.id, release.c.state).where(release.c.name == name)).first()
            if row is None:
                return int(conn.execute(
                    sa.insert(release).values(name=name, state=STAGING, parent_id=parent_id, recipe=recipe).returning(release.c.id)
                ).scalar_one())
            if row.state == PUBLISHED:
                raise ReleaseError(f"release {name} is already published: choose a new name")
            if row.state == WITHDRAWN:
                raise ReleaseError(f"release {name} was withdrawn: its name stays retired, choose a new one")
            conn.execute(sa.delete(release_member).where(release_member.c.release_id == row.id))
            conn.execute(sa.delete(release_version).where(release_version.c.release_id == row.id))
            conn.execute(
                sa.update(release).where(release.c.id == row.id)
                .values(state=STAGING, parent_id=parent_id, recipe=recipe, counts=None, manifest_key=None, published_at=None,
                        version=1, withdrawn_at=None)
            )
            return int(row.id)
    except IntegrityError:
        raise ReleaseError(f"another run is creating release {name} right now: wait for it or choose a new name") from None


def add_members(engine: Engine, release_id: int, members: Sequence[tuple[int, str]]) -> None:
    if members:
        with engine.begin() as conn:
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


def fail(engine: Engine, release_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.update(release).where(release.c.id == release_id, release.c.state == STAGING).values(state=FAILED))


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
