"""The ledger's record of releases: `release` rows (staging -> published | failed) and their members.

Plain SQLAlchemy Core on `ledger.engine`, so it runs on SQLite and Postgres alike; members are
inserted in batches (insertmanyvalues), each batch its own short transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from taisu_etl.db.schema import release, release_member, sample, sample_state
from taisu_etl.release.errors import ReleaseError
from taisu_etl.release.selection import blocked
from taisu_etl.vocab import State

STAGING, PUBLISHED, FAILED = "staging", "published", "failed"


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
            conn.execute(sa.delete(release_member).where(release_member.c.release_id == row.id))
            conn.execute(
                sa.update(release).where(release.c.id == row.id)
                .values(state=STAGING, parent_id=parent_id, recipe=recipe, counts=None, manifest_key=None, published_at=None)
            )
            return int(row.id)
    except IntegrityError:
        raise ReleaseError(f"another run is creating release {name} right now: wait for it or choose a new name") from None


def add_members(engine: Engine, release_id: int, members: Sequence[tuple[int, str]]) -> None:
    if members:
        with engine.begin() as conn:
            conn.execute(sa.insert(release_member), [{"release_id": release_id, "sample_id": s, "shard": sh} for s, sh in members])


def withdrawn_members(engine: Engine, release_id: int) -> int:
    """Members taken down or blocklisted since they were selected (a takedown during the build)."""
    m = release_member.c
    query = (
        sa.select(sa.func.count()).select_from(release_member)
        .join(sample_state, sample_state.c.sample_id == m.sample_id).join(sample, sample.c.id == m.sample_id)
        .where(m.release_id == release_id, sa.or_(sample_state.c.state == State.TAKEN_DOWN.value, blocked()))
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def publish(engine: Engine, release_id: int, counts: dict[str, Any], manifest_key: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(release).where(release.c.id == release_id)
            .values(state=PUBLISHED, counts=counts, manifest_key=manifest_key, published_at=datetime.now(timezone.utc))
        )


def mark_published(engine: Engine, release_id: int, manifest_key: str) -> None:
    """Recovery: the manifest was written but the run died before recording it."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(release).where(release.c.id == release_id, release.c.state != PUBLISHED)
            .values(state=PUBLISHED, manifest_key=manifest_key, published_at=datetime.now(timezone.utc))
        )


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
    with engine.connect() as conn:
        return int(conn.execute(
            sa.select(sa.func.count()).select_from(release_member).where(release_member.c.release_id == release_id)
        ).scalar_one())
