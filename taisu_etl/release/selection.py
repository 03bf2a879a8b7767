"""Which samples a release holds, streamed from the ledger in public-id order.

Eligible: state `accepted` or `captioned` (so `taken_down` is out by construction), with no URL,
host, sha256 or perceptual hash on the blocklist, then the release's own filters. Rows come in pages by
keyset on `url_id` (one short query each, never a long transaction: on SQLite a held transaction
would lock the writers out), so memory stays flat however large the ledger is.

One member per public id: two eligible samples of one URL (two captions of the same image) would
collide in every format keyed by id, so the lowest sample id wins and the rest are counted.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from taisu_etl.db.schema import blocklist, sample, sample_state
from taisu_etl.release.options import ReleaseOptions
from taisu_etl.takedown.guard import host_blocked_sql
from taisu_etl.vocab import State

ELIGIBLE_STATES = (State.ACCEPTED.value, State.CAPTIONED.value)
COLUMNS = (
    "id", "url_id", "taisu_id", "url", "caption", "caption_clean", "source", "source_pos", "object_key", "sha256",
    "phash", "width", "height", "bytes", "score", "score_model", "gen_caption", "gen_caption_model",
)
PAGE = 2000


@dataclass
class SelectionStats:
    """Rows the query returned that did not become members, by why."""

    duplicate_id: int = 0
    source_filtered: int = 0


def blocked(s: sa.Table = sample) -> sa.ColumnElement[bool]:
    """True for a sample whose URL, sha256 or perceptual hash is on the takedown blocklist, or whose
    URL's host (or a domain above it) is: the first three are unique-index probes, the host test
    looks at the few `host` entries only (see `taisu_etl.takedown.guard.host_blocked_sql`)."""
    b = blocklist.c
    return sa.or_(
        *[
            sa.exists().where(b.kind == kind, b.value == column)
            for kind, column in (("url", s.c.url), ("sha256", s.c.sha256), ("phash", s.c.phash))
        ],
        host_blocked_sql(s.c.url),
    )


def _like(pattern: str) -> str:
    """A LIKE pattern at least as wide as the glob: SQL narrows, fnmatch then decides exactly."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append("[")
            else:
                out.append("_")
                i = end
        elif c in "%_\\":
            out.append("\\" + c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _conditions(options: ReleaseOptions) -> list[sa.ColumnElement[bool]]:
    cond: list[sa.ColumnElement[bool]] = [sample_state.c.state.in_(ELIGIBLE_STATES), sa.not_(blocked())]
    if options.min_score is not None:
        cond.append(sample.c.score >= options.min_score)
    if options.sources:
        # LIKE is case-insensitive on SQLite, and a bracket class becomes "_": a superset, refined below.
        cond.append(sa.or_(*[sample.c.source.like(_like(p), escape="\\") for p in options.sources]))
    return cond


def iter_members(engine: Engine, options: ReleaseOptions, stats: SelectionStats, *, page: int = PAGE) -> Iterator[dict[str, Any]]:
    """Eligible samples as dicts of COLUMNS, in strictly increasing `url_id` order."""
    cond = _conditions(options)
    base = sa.select(*[sample.c[c] for c in COLUMNS]).join(sample_state, sample_state.c.sample_id == sample.c.id)
    after_uid, after_id = "", 0  # keyset cursor: the last row read
    taken = ""  # id of the last member yielded
    while True:
        # `url_id >= u` is the index range; the OR continues a run of one url_id split across pages.
        keyset = sa.and_(sample.c.url_id >= after_uid, sa.or_(sample.c.url_id > after_uid, sample.c.id > after_id))
        query = base.where(*cond, keyset).order_by(sample.c.url_id, sample.c.id).limit(page)
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        for row in rows:
            uid = row["url_id"]
            if uid < after_uid:
                # The diff against the parent merges sorted id lists; a collation that sorts ids
                # differently from Python would silently break it, so refuse loudly instead.
                raise RuntimeError(f"the ledger returned ids out of order ({uid} after {after_uid}): check the database collation")
            after_uid, after_id = uid, row["id"]
            if uid == taken:
                stats.duplicate_id += 1
                continue
            if options.sources and not any(fnmatch.fnmatchcase(row["source"], p) for p in options.sources):
                stats.source_filtered += 1
                continue
            taken = uid
            yield row
        if len(rows) < page:
            return


def count_members(engine: Engine, options: ReleaseOptions, *, limit: int) -> int:
    """How many members `iter_members` yields, counting no further than `limit` (a database-only pass:
    images that turn out missing or damaged while the release is built are not known here)."""
    seen = 0
    for _ in iter_members(engine, options, SelectionStats()):
        seen += 1
        if seen >= limit:
            break
    return seen
