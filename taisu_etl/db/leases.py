"""Leases on samples: who holds them, whether that process is provably gone, and what a stage does about it.

A stage claims samples of its input state by writing a lease owner and an expiry on them. The
owner token names the process that holds the lease: host, pid, the process's start time and a
label (stage, shard, a nonce), so that a later run on the same machine can prove the holder is
gone (the pid no longer exists, or now belongs to a process that started at another time) and
take the samples at once instead of waiting for the lease to run out.

    score.3.1f2e3d4c@worker-7:41235:9a0b1c2d.8812345
    label            host     pid   node     start (clock ticks after boot)

`node` is a short hash of the kernel's boot id and the pid namespace: a pid means something
only within one boot and one namespace, so an owner from another node (a reboot, another
container with the same host name) is never called dead; its lease simply expires. A working
stage renews its leases from a heartbeat thread, so leases can be short and a crashed owner's
samples come free within `pipeline.lease_seconds` even where its death cannot be proven.

`StageLease` is what the claiming stages (fetch, score, caption) use: claims that, when the
state looks empty, check whether samples are still leased to someone else, break the leases of
dead owners, wait for live ones up to `pipeline.claim_wait_seconds`, and otherwise fail with
`LeaseConflict` instead of reporting a shard done that was not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from taisu_etl.db.context import RunContext
from taisu_etl.db.ledger import Ledger, Outcome
from taisu_etl.db.schema import sample_state
from taisu_etl.errors import TaisuError
from taisu_etl.procfs import start_ticks, stat_fields
from taisu_etl.vocab import Stage, State

log = logging.getLogger(__name__)

_TOKEN_MAX = 128  # sample_state.lease_owner is String(128)
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_TOKEN = re.compile(r"^(?P<label>[A-Za-z0-9_.-]+)@(?P<host>[A-Za-z0-9_.-]+):(?P<pid>\d+):(?P<start>[0-9a-f]{8}\.\d+|\?)$")


class LeaseConflict(TaisuError):
    """A stage found work in its input state that another, live owner held past the stage's wait."""

    def __init__(self, message: str, *, where: str = "") -> None:
        super().__init__(message)
        self.where = where  # "score, shard 3, image_ok": which part of the work is held

    @classmethod
    def combine(cls, conflicts: Sequence["LeaseConflict"]) -> "LeaseConflict":
        """One error for a run over several shards or states that found more than one of them held."""
        if len(conflicts) == 1:
            return conflicts[0]
        more = "; ".join(c.where for c in conflicts[1:])
        return cls(f"{conflicts[0]} (samples are held in {len(conflicts) - 1} more places: {more})", where=conflicts[0].where)


# ---------------------------------------------------------------------------- this machine
def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _local_host() -> str:
    return _SAFE.sub("-", socket.gethostname()) or "localhost"


_NODE: tuple[int, str | None] | None = None  # (pid it was computed in, node)


def _local_node() -> str | None:
    """Boot id + pid namespace, hashed to 8 hex digits; None where /proc does not tell (not Linux)."""
    global _NODE
    if _NODE is None or _NODE[0] != os.getpid():
        boot = _read("/proc/sys/kernel/random/boot_id")
        try:
            pidns = os.readlink("/proc/self/ns/pid")
        except OSError:
            pidns = None
        node = hashlib.sha1(f"{boot.strip()}|{pidns}".encode()).hexdigest()[:8] if boot and pidns else None
        _NODE = (os.getpid(), node)
    return _NODE[1]


def _pid_gone(pid: int) -> bool:
    """True only when no process has this pid (a process we may not see, e.g. under hidepid, still exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _boot_time() -> float | None:
    stat = _read("/proc/stat")
    for line in (stat or "").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return None


# ---------------------------------------------------------------------------- owners
@dataclass(frozen=True)
class LeaseOwner:
    """The process holding a lease. `start` is "<node>.<ticks>", or None when it cannot be known."""

    host: str | None
    pid: int | None
    start: str | None
    label: str
    raw: str | None = None  # the stored token, when it is not in this format (ledgers from older versions)

    @classmethod
    def current(cls, label: str, *, pid: int | None = None) -> "LeaseOwner":
        """This process (or the running process `pid` of this machine), under `label` (e.g. "score.3.1f2e3d4c")."""
        pid = os.getpid() if pid is None else pid
        node, ticks = _local_node(), start_ticks(pid)
        start = f"{node}.{ticks}" if node is not None and ticks is not None else None
        return cls(host=_local_host(), pid=pid, start=start, label=_SAFE.sub("-", label) or "lease")

    @classmethod
    def parse(cls, token: str) -> "LeaseOwner":
        """Read a stored token; one in another format becomes an owner whose liveness is unknown."""
        m = _TOKEN.match(token)
        if m is None:
            return cls(host=None, pid=None, start=None, label=token, raw=token)
        start = m["start"] if m["start"] != "?" else None
        return cls(host=m["host"], pid=int(m["pid"]), start=start, label=m["label"], raw=None)

    @property
    def token(self) -> str:
        """What is stored in sample_state.lease_owner (at most 128 characters)."""
        if self.raw is not None:
            return self.raw
        tail = f":{self.pid}:{self.start or '?'}"
        label = self.label[:40]
        room = _TOKEN_MAX - len(label) - 1 - len(tail)
        return f"{label}@{(self.host or 'unknown')[:room]}{tail}"

    @property
    def stage(self) -> str:
        return self.label.split(".", 1)[0] if self.raw is None else "?"

    def started_at(self) -> datetime | None:
        """When the owning process started, where this machine can tell (same node)."""
        if self.start is None:
            return None
        node, ticks = self.start.split(".")
        boot = _boot_time()
        if node != _local_node() or boot is None:
            return None
        return datetime.fromtimestamp(boot + int(ticks) / os.sysconf("SC_CLK_TCK"), tz=timezone.utc)

    def describe(self) -> str:
        """The owner for messages, e.g. `score@host:1234 (started 2026-12-03T11:58:01Z)`."""
        if self.raw is not None:
            return f"{self.raw!r} (an older lease format: liveness unknown)"
        started = self.started_at()
        when = f" (started {iso_utc(started)})" if started else ""
        return f"{self.stage}@{self.host}:{self.pid}{when}"

    def is_dead(self) -> bool:
        """True only when provably dead: same host and node, and the pid is gone or belongs to a newer process."""
        return self.liveness() == "dead"

    def liveness(self) -> str:
        """Whether the owner runs: `dead` or `alive` where this machine can tell (it ran here), else `unknown`."""
        if self.raw is not None or self.start is None or self.pid is None or self.host is None:
            return "unknown"
        local = _local_host()
        # A long host name may have been cut to fit the token; the node check below is the precise one.
        if not (self.host == local or (len(self.token) >= _TOKEN_MAX and local.startswith(self.host))):
            return "unknown"
        node, ticks = self.start.split(".")
        if node != _local_node():
            return "unknown"
        fields = stat_fields(self.pid)
        if fields is None:  # no readable /proc entry: gone, or hidden from us (hidepid) but alive
            return "dead" if _pid_gone(self.pid) else "unknown"
        # A zombie renews nothing; a process with another start time is another process.
        return "dead" if fields[0] in ("Z", "X") or int(fields[19]) != int(ticks) else "alive"


def iso_utc(when: datetime | None) -> str:
    """`2026-12-03T18:36:05Z`, for messages about leases and claims."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if when is not None else "an unknown time"


def aware_utc(when: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without a zone; the ledger writes them in UTC."""
    if when is not None and when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    return when


def _now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------------------- holdings
@dataclass(frozen=True)
class LeaseHolding:
    """Samples of one state and shard leased to one owner."""

    owner: str
    state: str
    shard: int
    samples: int
    until: datetime  # the latest expiry among them
    dead: bool  # the owner is provably dead
    expired: bool  # every one of these leases has run out
    expired_samples: int = 0  # how many of them have run out

    @property
    def lease_owner(self) -> LeaseOwner:
        return LeaseOwner.parse(self.owner)

    def describe(self) -> str:
        return (f"{self.samples:,} samples in {self.state} (shard {self.shard}) leased by {self.lease_owner.describe()} "
                f"until {iso_utc(self.until)}")

    def as_dict(self) -> dict[str, Any]:
        return {"owner": self.owner, "holder": self.lease_owner.describe(), "state": self.state, "shard": self.shard,
                "samples": self.samples, "until": iso_utc(self.until), "dead": self.dead, "expired": self.expired,
                "expired_samples": self.expired_samples, "liveness": "dead" if self.dead else self.lease_owner.liveness()}


def db_now(conn: Connection) -> datetime:
    """Now on the clock the ledger's times are written with: Postgres's own (every node compares
    expiries and heartbeats on one clock); on SQLite, this one machine's, in UTC."""
    if conn.dialect.name == "postgresql":
        return conn.execute(sa.text("SELECT now()")).scalar_one()
    return _now()


def lease_holders(ledger: Ledger) -> list[LeaseHolding]:
    """Every lease in the ledger, grouped by owner, state and shard (expired ones included, counted)."""
    st = sample_state.c

    def run(conn: Connection) -> tuple[datetime, list[Any]]:
        now = db_now(conn)
        query = (
            sa.select(st.lease_owner, st.state, st.shard, sa.func.count(), sa.func.max(st.lease_until),
                      sa.func.sum(sa.case((st.lease_until < now, 1), else_=0)))
            .where(st.lease_owner.is_not(None))
            .group_by(st.lease_owner, st.state, st.shard)
        )
        return now, conn.execute(query).all()

    now, rows = ledger.read(run)
    out = []
    for owner, state, shard, n, until, n_expired in rows:
        until = aware_utc(until) or now
        out.append(LeaseHolding(owner=owner, state=state, shard=shard, samples=n, until=until,
                                dead=LeaseOwner.parse(owner).is_dead(), expired=until < now, expired_samples=int(n_expired or 0)))
    return sorted(out, key=lambda h: (h.state, h.shard, h.owner))


def _free(conn: Connection, owner: str, state: str, shard: int | None, *, expired_only: bool, now: datetime) -> int:
    st = sample_state.c
    cond = [st.lease_owner == owner, st.state == state]
    if shard is not None:
        cond.append(st.shard == shard)
    if expired_only:
        cond.append(st.lease_until < now)
    return conn.execute(sa.update(sample_state).where(*cond).values(lease_owner=None, lease_until=None)).rowcount


def release_dead_leases(ledger: Ledger, *, dry_run: bool = False) -> list[LeaseHolding]:
    """Free the leases of provably dead owners, and leases already expired; returns what was (or would be) freed.

    Each update is guarded by the owner it read, so a sample re-claimed in the meantime by a live
    worker keeps its new lease. Of a live owner only the leases that have run out are freed.
    """
    wanted = [h if h.dead else replace(h, samples=h.expired_samples)
              for h in lease_holders(ledger) if h.dead or h.expired_samples]
    if dry_run or not wanted:
        return wanted

    def run(conn: Connection) -> list[LeaseHolding]:
        now = db_now(conn)
        freed = []
        for h in wanted:
            n = _free(conn, h.owner, h.state, h.shard, expired_only=not h.dead, now=now)
            if n:
                freed.append(replace(h, samples=n))
        return freed

    return ledger.transaction(run)


def release_owner(ledger: Ledger, owner: str, *, dry_run: bool = False) -> list[LeaseHolding]:
    """Free every lease of one owner token, alive or not (an operator who knows that machine is gone)."""
    wanted = [h for h in lease_holders(ledger) if h.owner == owner]
    if dry_run or not wanted:
        return wanted

    def run(conn: Connection) -> list[LeaseHolding]:
        now = db_now(conn)
        return [replace(h, samples=n) for h in wanted if (n := _free(conn, h.owner, h.state, h.shard, expired_only=False, now=now))]

    return ledger.transaction(run)


# ---------------------------------------------------------------------------- a stage's leases
@dataclass(frozen=True)
class _Blocker:
    owner: str
    samples: int
    until: datetime


def _blockers(ledger: Ledger, state: State, shard: int | None) -> list[_Blocker]:
    """Who holds unexpired leases on due samples of `state` (and `shard`): the work a claim could not get."""
    st = sample_state.c

    def run(conn: Connection) -> list[_Blocker]:
        now = db_now(conn)
        cond = [st.state == state.value, st.lease_until >= now, sa.or_(st.next_attempt_at.is_(None), st.next_attempt_at <= now)]
        if shard is not None:
            cond.insert(0, st.shard == shard)
        rows = conn.execute(
            sa.select(st.lease_owner, sa.func.count(), sa.func.max(st.lease_until)).where(*cond).group_by(st.lease_owner)
        ).all()
        return [_Blocker(o, n, aware_utc(u) or now) for o, n, u in rows if o is not None]

    return ledger.read(run)


def _leased_ids(ledger: Ledger, state: State, shard: int | None, owner: str) -> set[int]:
    st = sample_state.c
    cond = [st.state == state.value, st.lease_owner == owner]
    if shard is not None:
        cond.insert(0, st.shard == shard)
    return ledger.read(lambda conn: set(conn.execute(sa.select(st.sample_id).where(*cond)).scalars()))


class StageLease:
    """One stage run's leases on one shard (or all shards): claim, renew while working, decide, give back.

    Use as a context manager around the stage's work. `claim` returns an empty list only when
    nothing of the shard is left in the state for anyone to claim; `apply` writes decisions
    guarded by this owner. On exit the heartbeat stops and undecided samples are released.
    """

    def __init__(
        self, ledger: Ledger, *, stage: Stage, shard: int | None, lease_seconds: int,
        claim_wait_seconds: float | None = None, owner: str | None = None,
    ) -> None:
        self.ledger = ledger
        self.stage = stage
        self.shard = shard
        self.lease_seconds = lease_seconds
        self.claim_wait_seconds = lease_seconds + 30 if claim_wait_seconds is None else claim_wait_seconds
        label = f"{stage.value}.{'all' if shard is None else shard}.{uuid.uuid4().hex[:8]}"
        self.token = owner or LeaseOwner.current(label).token
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> "StageLease":
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name=f"lease-heartbeat-{self.stage.value}", daemon=True)
        self._heartbeat.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        with self._lock:
            left = sorted(self._held)
            self._held.clear()
        if not left:
            return
        try:
            # After a failure (the ledger itself may be gone) one attempt: the leases expire anyway.
            self.ledger.release_claims(self.token, left, retry=exc_type is None)
        except Exception as err:  # noqa: BLE001 - never hide the stage's own error behind this one
            log.warning("%s: could not give back the leases of %d undecided samples (%s); they expire in %d s",
                        self._where(), len(left), err, self.lease_seconds)

    def _beat(self) -> None:
        """Renew the held leases every third of the lease; a ledger that does not answer is logged and tried again."""
        interval = max(self.lease_seconds / 3, 0.5)
        wait = interval
        while not self._stop.wait(wait):
            with self._lock:
                ids = sorted(self._held)
            try:
                if ids:
                    self.ledger.renew_leases(self.token, ids, self.lease_seconds, retry=False)
                wait = interval
            except Exception as err:  # noqa: BLE001 - a heartbeat must keep going; the stage's own writes report failures
                wait = min(interval, 5.0)
                log.warning("%s: could not renew the leases of %d samples (%s); trying again in %.0f s; if they run out, "
                            "another worker may take them and this one's decisions on them are refused",
                            self._where(), len(ids), err, wait)

    # -------------------------------------------------------------- work
    def claim(self, state: State, *, limit: int, columns: Sequence[str]) -> list[dict[str, Any]]:
        """Lease up to `limit` due samples of `state`; [] only once no one holds any of them any more.

        When none is free but some are leased: leases of provably dead owners are broken at once;
        for others this waits up to `claim_wait_seconds` for them to be decided, released or to
        expire, and then raises LeaseConflict naming the owner, how many samples and until when.
        """
        waiting_since: float | None = None
        while True:
            rows = self.ledger.claim(state=state, owner=self.token, shard=self.shard, limit=limit,
                                     lease_seconds=self.lease_seconds, columns=columns)
            if rows:
                with self._lock:
                    self._held.update(r["id"] for r in rows)
                return rows
            blockers = _blockers(self.ledger, state, self.shard)
            if any(b.owner == self.token for b in blockers) and self._free_orphans(state):
                continue
            others = [b for b in blockers if b.owner != self.token]
            if not others:
                return []
            dead = [b for b in others if LeaseOwner.parse(b.owner).is_dead()]
            if dead:
                for b in dead:
                    self._break(b, state)
                continue
            now = time.monotonic()
            if waiting_since is None:
                waiting_since = now
                log.warning("%s: %s; waiting up to %g s for them", self._where(), self._held_by(others, state), self.claim_wait_seconds)
            if now - waiting_since >= self.claim_wait_seconds:
                raise LeaseConflict(
                    f"{self._where()}: {self._held_by(others, state)} (waited {self.claim_wait_seconds:g} s); wait for it, "
                    "or run `taisu-etl leases release --dead` if that process is gone",
                    where=f"{self._where()}, {state.value}",
                )
            time.sleep(min(self._poll_seconds(), self.claim_wait_seconds - (now - waiting_since)))

    def apply(self, outcomes: Sequence[Outcome], *, from_state: State, ctx: RunContext | None = None) -> dict[str, int]:
        """Write decisions on samples this run holds; decisions on samples whose lease was taken over are refused."""
        counts = self.ledger.apply(outcomes, from_state=from_state, stage=self.stage, owner=self.token, ctx=ctx)
        with self._lock:
            self._held.difference_update(o.sample_id for o in outcomes)
        refused = len(outcomes) - sum(counts.values())
        if refused:
            log.warning("%s: %d decisions refused: those samples are no longer leased to this run (its lease ran out "
                        "and another worker took them)", self._where(), refused)
        return counts

    def held(self) -> int:
        """Samples claimed and not yet decided."""
        with self._lock:
            return len(self._held)

    # -------------------------------------------------------------- helpers
    def _free_orphans(self, state: State) -> bool:
        """Release samples leased to this run that it does not know it holds: a claim whose commit
        succeeded but whose answer was lost with the connection, then claimed again elsewhere."""
        with self._lock:
            held = set(self._held)
        orphans = sorted(_leased_ids(self.ledger, state, self.shard, self.token) - held)
        if orphans:
            log.warning("%s: %d samples were leased to this run by a claim whose answer was lost; claiming them again",
                        self._where(), len(orphans))
            self.ledger.release_claims(self.token, orphans)
        return bool(orphans)

    def _break(self, blocker: _Blocker, state: State) -> None:
        owner = LeaseOwner.parse(blocker.owner)
        freed = self.ledger.transaction(
            lambda conn: _free(conn, blocker.owner, state.value, self.shard, expired_only=False, now=_now())
        )
        log.warning("%s: broke the leases of %d samples in %s held by %s: that process is gone",
                    self._where(), freed, state.value, owner.describe())

    def _held_by(self, blockers: Sequence[_Blocker], state: State) -> str:
        ordered = sorted(blockers, key=lambda b: -b.samples)
        first, rest = ordered[0], ordered[1:]
        text = f"{first.samples:,} samples in {state.value} are leased by {LeaseOwner.parse(first.owner).describe()} until {iso_utc(first.until)}"
        for b in rest:
            text += f", {b.samples:,} by {LeaseOwner.parse(b.owner).describe()} until {iso_utc(b.until)}"
        return text

    def _poll_seconds(self) -> float:
        return min(2.0, max(0.2, self.claim_wait_seconds / 10))

    def _where(self) -> str:
        return f"{self.stage.value}, {'all shards' if self.shard is None else f'shard {self.shard}'}"

