"""The shared per-host budget in the ledger: the `BudgetStore` of `taisu_etl.fetch.host_budget`.

Every fetch process of a deployment shares the ledger, on SQLite and Postgres alike, so the
budget needs no new service. One exchange is one short transaction for all the hosts a process
needs at that moment; its cost is per batch of hosts, not per request.

Times are Unix seconds on the database's clock (`now()` on Postgres, the one machine's clock on
SQLite), read once per transaction, so skew between the workers' clocks does not matter. The
host rows are locked in host order (an upsert that touches every asked host, sorted), so two
exchanges over the same hosts queue up instead of deadlocking; on SQLite `BEGIN IMMEDIATE`
serialises exchanges outright.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from taisu_etl.db.leases import LeaseOwner
from taisu_etl.db.ledger import Ledger
from taisu_etl.db.schema import host_budget, host_grant
from taisu_etl.fetch.host_budget import BudgetAnswer, BudgetAsk, BudgetGrant

_NOW = {
    "postgresql": "SELECT CAST(extract(epoch FROM now()) AS double precision)",
    "sqlite": "SELECT (julianday('now') - 2440587.5) * 86400.0",
}


class LedgerHostBudget:
    """Rate slots and concurrency grants per host, in the ledger's `host_budget` and `host_grant`."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._insert = postgresql.insert if ledger.is_postgres else sqlite_insert
        self._now = _NOW["postgresql" if ledger.is_postgres else "sqlite"]

    def exchange(self, owner: str, asks: Sequence[BudgetAsk], ttl_s: float) -> BudgetAnswer:
        # Not retried on a lost connection: the caller asks again on its own schedule, and its
        # waiting requests give up after shared_wait_s rather than hang on the ledger.
        return self.ledger.transaction(lambda conn: self._exchange(conn, owner, asks, ttl_s), retry=False)

    def release_all(self, owner: str) -> None:
        self.ledger.transaction(lambda conn: conn.execute(sa.delete(host_grant).where(host_grant.c.owner == owner)), retry=False)

    def _exchange(self, conn: Connection, owner: str, asks: Sequence[BudgetAsk], ttl_s: float) -> BudgetAnswer:
        g, b = host_grant.c, host_budget.c
        now = float(conn.exec_driver_sql(self._now).scalar_one())
        expires = now + ttl_s
        conn.execute(sa.update(host_grant).where(g.owner == owner).values(expires_at=expires))
        if not asks:
            return BudgetAnswer(now=now, grants=())
        hosts = sorted({a.host for a in asks})
        # Lock every asked host's row, creating missing ones, in host order.
        lock = self._insert(host_budget)
        lock = lock.on_conflict_do_update(index_elements=[b.host], set_={"next_slot": host_budget.c.next_slot})
        next_slot: dict[str, float] = dict(
            conn.execute(lock.returning(b.host, b.next_slot), [{"host": h, "next_slot": now} for h in hosts]).tuples().all()
        )
        conn.execute(sa.delete(host_grant).where(g.host.in_(hosts), g.expires_at <= now))  # crashed owners' grants
        # A killed worker on this machine is provably gone: its units come free now, not at expiry
        # (a retried fetch task would otherwise wait up to a minute for its own predecessor).
        others = {o for (o,) in conn.execute(sa.select(g.owner).distinct().where(g.host.in_(hosts), g.owner != owner))}
        dead = sorted(o for o in others if LeaseOwner.parse(o).liveness() == "dead")
        if dead:
            conn.execute(sa.delete(host_grant).where(g.owner.in_(dead)))
        others_held: dict[str, int] = defaultdict(int)
        others_wanting: dict[str, int] = defaultdict(int)
        for host, units, wanted in conn.execute(
            sa.select(g.host, g.units, g.wanted).where(g.host.in_(hosts), g.owner != owner)
        ).tuples():
            others_held[host] += units
            others_wanting[host] += 1 if wanted > 0 else 0

        grants: list[BudgetGrant] = []
        keep: list[dict[str, Any]] = []
        drop: list[str] = []
        slots: list[dict[str, Any]] = []
        for a in asks:
            if a.want <= 0 and a.floor <= 0:
                drop.append(a.host)
                grants.append(BudgetGrant(host=a.host, allowed=0, units=0, slots=0, slot_start=None))
                continue
            # A fair share while others want the host too, never more than the limit leaves free,
            # and never less than what is already in flight (those units are not given back yet).
            fair = max(1, a.limit // (1 + others_wanting[a.host]))
            allowed = max(0, min(a.want, fair, a.limit - others_held[a.host]))
            units = max(a.floor, allowed)
            keep.append({"host": a.host, "owner": owner, "units": units, "wanted": a.want, "expires_at": expires})
            start = None
            reserved = 0
            if a.slots > 0 and a.interval > 0 and allowed > 0:
                start = max(next_slot[a.host], now)
                reserved = a.slots
                next_slot[a.host] = start + reserved * a.interval
                slots.append({"host": a.host, "next_slot": next_slot[a.host]})
            grants.append(BudgetGrant(host=a.host, allowed=allowed, units=units, slots=reserved, slot_start=start))

        if drop:
            conn.execute(sa.delete(host_grant).where(g.owner == owner, g.host.in_(drop)))
        if keep:
            up = self._insert(host_grant)
            conn.execute(up.on_conflict_do_update(
                index_elements=[g.host, g.owner],
                set_={"units": up.excluded.units, "wanted": up.excluded.wanted, "expires_at": up.excluded.expires_at},
            ), keep)
        if slots:
            up = self._insert(host_budget)
            conn.execute(up.on_conflict_do_update(index_elements=[b.host], set_={"next_slot": up.excluded.next_slot}), slots)
        return BudgetAnswer(now=now, grants=tuple(grants))


__all__ = ["LedgerHostBudget"]
