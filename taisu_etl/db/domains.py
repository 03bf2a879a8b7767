"""Per-host fetch state (back-off, failures, robots evidence) kept across tasks in `domain_state`."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import domain_state
from taisu_etl.fetch import HostState


def load_host_states(ledger: Ledger) -> list[HostState]:
    now = datetime.now(timezone.utc)
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(domain_state)).mappings().all()
    states = []
    for r in rows:
        until = r["backoff_until"]
        if until is not None and until.tzinfo is None:  # SQLite hands back naive UTC
            until = until.replace(tzinfo=timezone.utc)
        details = r["details"] or {}
        states.append(HostState(
            host=r["host"],
            backoff_until=until.timestamp() if until is not None and until > now else None,
            failures=r["failures"],
            crawl_delay_s=details.get("crawl_delay_s"),
        ))
    return states


def save_host_states(ledger: Ledger, states: Iterable[HostState]) -> int:
    """Upsert what the fetcher learnt about each host, so the next task keeps backing off."""
    rows: list[dict[str, Any]] = []
    for st in states:
        robots = st.robots or {}
        rows.append({
            "host": st.host[:255],
            "backoff_until": datetime.fromtimestamp(st.backoff_until, timezone.utc) if st.backoff_until else None,
            "failures": st.failures,
            "robots_status": robots.get("status"),
            "robots_fetched_at": datetime.now(timezone.utc) if robots else None,
            "details": {"crawl_delay_s": st.crawl_delay_s, "robots": robots or None},
        })
    if not rows:
        return 0
    insert = (postgresql.insert if ledger.is_postgres else sqlite_insert)(domain_state)
    upsert = insert.on_conflict_do_update(
        index_elements=[domain_state.c.host],
        set_={c: insert.excluded[c] for c in ("backoff_until", "failures", "robots_status", "robots_fetched_at", "details")},
    )
    with ledger.engine.begin() as conn:
        conn.execute(upsert, rows)
    return len(rows)
