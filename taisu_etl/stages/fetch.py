"""Fetch stage: `text_ok` (and due `fetch_retry`) samples become stored images or reason-coded failures.

Per shard, streaming: a claimer leases batches of samples, `concurrency` workers fetch them through
the guarded `Fetcher`, images are decoded and re-encoded in a process pool (size checks run on the
header, before decoding), checked against the blocklist, stored under their sha256, and every
outcome is written to the ledger in batches, one event per sample.

The blocklist is read again for every claimed batch (URL and host before any request; sha256
and perceptual hash after decoding, before the upload) and once more just before each ledger
write; after the write, `sweep_after_move` deletes an image stored for a sample that a takedown
reached meanwhile, so a takedown that lands mid-flight wins (see `taisu_etl.takedown.guard`).


- `fetched`       stored (object key, sha256, perceptual hash, sizes, HTTP details)
- `expired`       404 / 410 / NXDOMAIN: the URL is gone
- `fetch_retry`   a transient failure; due again after exponential back-off (Retry-After honoured)
- `fetch_failed`  a permanent failure, an opt-out (robots.txt, X-Robots-Tag: noai), the blocklist,
                  not an image, a decoder failure, or transient failures past `max_attempts`
- `image_rejected` too small or too elongated (nothing stored)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from taisu_etl.db.context import RunContext
from taisu_etl.db.domains import load_host_states, save_host_states
from taisu_etl.db.host_budget import LedgerHostBudget
from taisu_etl.db.image_index import add_bands
from taisu_etl.db.leases import LeaseConflict, StageLease
from taisu_etl.db.ledger import Ledger, Outcome
from taisu_etl.fetch import Fetcher, FetchResult
from taisu_etl.fetch.settings import FetchSettings
from taisu_etl.images import DecodePool, ImageConfig, ImageRejection, NormalisedImage, normalise_image
from taisu_etl.images.dedup import phash_bands, phash_from_bands, phash_int64
from taisu_etl.storage import ObjectStore
from taisu_etl.takedown import guard
from taisu_etl.urls import normalise_url
from taisu_etl.vocab import Stage, State

log = logging.getLogger(__name__)

_COLUMNS = ("id", "url", "attempts")
_WRITE_BATCH = 500  # outcomes written to the ledger at once
_IMAGE_CHECK_REASONS = {"too_small", "bad_aspect"}


@dataclass
class FetchReport:
    shard: int | None
    claimed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    states: Counter[str] = field(default_factory=Counter)
    bytes_stored: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        where = f"shard {self.shard}" if self.shard is not None else "all shards"
        rate = self.claimed / self.seconds if self.seconds else 0.0
        why = ", ".join(f"{r} {n:,}" for r, n in self.reasons.most_common() if r != "ok")
        return (f"fetch, {where}: {self.claimed:,} samples in {self.seconds:.1f} s ({rate:,.0f}/s): "
                f"{self.states.get('fetched', 0):,} stored ({self.bytes_stored / 1e6:.1f} MB); {why or 'no failures'}")

    def as_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "claimed": self.claimed, "reasons": dict(self.reasons), "states": dict(self.states),
                "bytes_stored": self.bytes_stored, "seconds": round(self.seconds, 3)}


_PG_ADD_BANDS = sa.text(
    "INSERT INTO image_band (sample_id, band, value, phash) "
    "SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:bands AS smallint[]), CAST(:vals AS varchar[]), CAST(:phashes AS bigint[])) "
    "ON CONFLICT DO NOTHING"
)


def _add_bands(ledger: Ledger, rows: list[tuple[int, list[str]]]) -> None:
    """`image_index.add_bands`, as one statement on Postgres.

    add_bands sends one INSERT per band through the driver's executemany: 2,500 round trips (and
    5,000 context switches) per 500 stored images, where this sends one; same rows, same
    re-adding-is-a-no-op rule.
    """
    if not ledger.is_postgres:
        add_bands(ledger, rows)
        return
    ids: list[int] = []
    bands: list[int] = []
    values: list[str] = []
    phashes: list[int] = []
    for sid, parts in rows:
        whole = phash_int64(phash_from_bands(parts))
        for i, v in enumerate(parts):
            ids.append(sid)
            bands.append(i)
            values.append(v)
            phashes.append(whole)
    if ids:
        params = {"ids": ids, "bands": bands, "vals": values, "phashes": phashes}
        ledger.transaction(lambda conn: conn.execute(_PG_ADD_BANDS, params))  # re-run on a lost connection: a no-op for rows already in


def _refused_late(outcome: Outcome, why: str) -> Outcome:
    """A `fetched` outcome turned into a blocklist refusal: the blocklist grew while it was fetched."""
    kept = {k: outcome.updates[k] for k in ("attempts", "http_status", "fetched_at") if k in outcome.updates}
    return Outcome(outcome.sample_id, State.FETCH_FAILED, "blocklisted", {**(outcome.details or {}), "by": why}, kept)


def _write_batch(ledger: Ledger, store: ObjectStore, bands: list[tuple[int, list[str]]], due: dict[State, list[Outcome]],
                 urls: dict[int, str], *, lease: StageLease, ctx: RunContext | None, max_distance: int) -> tuple[set[int], list[str]]:
    """One batch of the stage's ledger writes, in one worker thread: a last blocklist check, bands,
    the moves (a sample becomes a duplicate-detection candidate only once it is `fetched`), then the
    sweep. Returns (samples refused by the last check, image keys the sweep deleted)."""
    stored = {o.sample_id: [o.updates["object_key"]] for outcomes in due.values() for o in outcomes if "object_key" in o.updates}
    fetched = [{"id": o.sample_id, "url": urls.get(o.sample_id), "sha256": o.updates.get("sha256"), "phash": o.updates.get("phash")}
               for outcomes in due.values() for o in outcomes if o.to_state == State.FETCHED]
    late = guard.blocked_samples(ledger, fetched, max_distance=max_distance) if fetched else {}
    if late:
        due = {state: [_refused_late(o, late[o.sample_id]) if o.sample_id in late and o.to_state == State.FETCHED else o for o in outcomes]
               for state, outcomes in due.items()}
        bands = [(sid, parts) for sid, parts in bands if sid not in late]
    if bands:
        _add_bands(ledger, bands)
    for state, outcomes in due.items():
        lease.apply(outcomes, from_state=state, ctx=ctx)
    deleted = guard.sweep_after_move(ledger, store, stored, stored=stored, max_distance=max_distance) if stored else []
    return set(late), deleted


def _recount(counts: Counter[str], old: str, new: str, n: int) -> None:
    counts[old] -= n
    if counts[old] <= 0:
        del counts[old]
    counts[new] += n


def _failure(row: dict[str, Any], res: FetchResult, settings: FetchSettings, now: datetime) -> Outcome:
    """Where a failed fetch leaves a sample: expired, failed for good, or due again later."""
    details = res.details()
    attempts = row["attempts"] + (0 if res.reason == "host_backoff" else 1)
    updates: dict[str, Any] = {"attempts": attempts, "http_status": res.status}
    assert res.reason is not None
    if res.expired:
        return Outcome(row["id"], State.EXPIRED, res.reason, details, updates)
    if res.permanent:
        return Outcome(row["id"], State.FETCH_FAILED, res.reason, details, updates)
    if attempts >= settings.max_attempts:
        return Outcome(row["id"], State.FETCH_FAILED, "retries_exhausted", {**details, "last_reason": res.reason, "attempts": attempts}, updates)
    wait = max(res.retry_after_s or 0.0, settings.retry_base_s * 2 ** max(attempts - 1, 0))
    updates["next_attempt_at"] = now + timedelta(seconds=wait)
    return Outcome(row["id"], State.FETCH_RETRY, res.reason, {**details, "retry_in_s": round(wait, 1)}, updates)


class _ShardFetch:
    """One shard's fetch run: claimer -> workers -> batched ledger writes."""

    def __init__(self, ledger: Ledger, store: ObjectStore, settings: FetchSettings, image: ImageConfig, *,
                 shard: int | None, lease: StageLease, ctx: RunContext | None, decode_workers: int | None) -> None:
        self.ledger, self.store, self.settings, self.image = ledger, store, settings, image
        self.shard, self.lease, self.ctx = shard, lease, ctx
        self.decode_workers = decode_workers
        self.report = FetchReport(shard=shard)
        self.pending: dict[State, list[Outcome]] = {State.TEXT_OK: [], State.FETCH_RETRY: []}
        self.bands: list[tuple[int, list[str]]] = []
        self.stored: dict[str, tuple[str, int]] = {}  # sha256 -> (key, size) stored by this run
        self.urls: dict[int, str] = {}  # sample id -> URL, from its claim until its outcome is written
        self.images: guard.ImageBlocklist | None = None  # refreshed for every claimed batch
        self.write_lock = asyncio.Lock()

    async def run(self) -> FetchReport:
        started = time.perf_counter()
        queue: asyncio.Queue[tuple[State, dict[str, Any]] | None] = asyncio.Queue(maxsize=2 * self.settings.batch_size)
        decode = functools.partial(normalise_image, apply_checks=True)
        # Uploads get their own connections, as many as requests in flight (up to 64), so they
        # neither queue behind ledger writes nor cap throughput.
        uploader = self.store.uploader(concurrency=min(self.settings.concurrency, 64))
        # On this loop, not behind a dispatcher thread: see DecodePool (0.07 -> 0.04 ms per image).
        with DecodePool(self.image, workers=self.decode_workers, fn=decode, timeout_s=self.image.decode_timeout_s,
                        loop=asyncio.get_running_loop()) as pool:
            self.pool = pool
            # The per-host limits hold across every fetch task sharing this ledger, not per task.
            budget = LedgerHostBudget(self.ledger) if self.settings.shared_host_limits else None
            async with uploader, Fetcher(self.settings.policy(), budget=budget) as fetcher:
                self.uploader = uploader
                fetcher.restore_domain_states(await asyncio.to_thread(load_host_states, self.ledger))
                self.fetcher = fetcher
                workers = [asyncio.create_task(self._worker(queue)) for _ in range(self.settings.concurrency)]
                try:
                    await self._claim_into(queue)
                finally:
                    for _ in workers:
                        await queue.put(None)
                    await asyncio.gather(*workers)
                    await self._flush(force=True)
                    await asyncio.to_thread(save_host_states, self.ledger, fetcher.domain_states())
        self.report.seconds = time.perf_counter() - started
        return self.report

    async def _claim_into(self, queue: asyncio.Queue[tuple[State, dict[str, Any]] | None]) -> None:
        held: list[LeaseConflict] = []  # samples someone else holds in one state must not keep the other's from being done
        for state in (State.TEXT_OK, State.FETCH_RETRY):
            try:
                while rows := await asyncio.to_thread(self.lease.claim, state, limit=self.settings.batch_size, columns=_COLUMNS):
                    self.report.claimed += len(rows)
                    # The blocklist as it is now, for this batch: a takedown during a long task counts.
                    blocked, self.images = await asyncio.to_thread(self._blocklist_for, rows)
                    for row in rows:
                        row["blocked"] = blocked.get(row["id"])
                        self.urls[row["id"]] = row["url"]
                        await queue.put((state, row))
            except LeaseConflict as conflict:
                held.append(conflict)
        if held:
            raise LeaseConflict.combine(held)

    def _blocklist_for(self, rows: list[dict[str, Any]]) -> tuple[dict[int, str], guard.ImageBlocklist]:
        return guard.blocked_by_url(self.ledger, rows), guard.image_blocklist(self.ledger, self.image.phash_distance)

    async def _worker(self, queue: asyncio.Queue[tuple[State, dict[str, Any]] | None]) -> None:
        while (item := await queue.get()) is not None:
            state, row = item
            try:
                outcome = await self._one(row)
            except Exception as exc:  # a bug or a failing store must not strand the sample: record it, retry later
                log.exception("fetch of sample %s failed", row["id"])
                outcome = Outcome(row["id"], State.FETCH_RETRY, "stage_error", {"error": f"{type(exc).__name__}: {exc}"[:500]},
                                  {"next_attempt_at": datetime.now(timezone.utc) + timedelta(seconds=self.settings.retry_base_s)})
            self.pending[state].append(outcome)
            self.report.reasons[outcome.reason] += 1
            self.report.states[outcome.to_state.value] += 1
            waiting = len(self.pending[state])
            # One worker writes a batch while the others go on fetching. Were every worker to
            # queue for the write lock once 500 more outcomes came in before the batch in flight
            # was written (a batch takes 0.15-0.4 s in Postgres; 500 outcomes come in ~0.4 s at
            # 1,300/s), all 64 would stand behind the ledger; only a ledger far behind holds them.
            if waiting >= _WRITE_BATCH and (not self.write_lock.locked() or waiting >= 4 * _WRITE_BATCH):
                await self._flush()

    async def _one(self, row: dict[str, Any]) -> Outcome:
        sid, url = row["id"], row["url"]
        now = datetime.now(timezone.utc)
        if row.get("blocked"):
            return Outcome(sid, State.FETCH_FAILED, "blocklisted", {"by": row["blocked"]}, {"attempts": row["attempts"]})
        res = await self.fetcher.fetch(url)
        if not res.ok:
            return _failure(row, res, self.settings, now)
        assert res.body is not None
        decoded = await self.pool.decode(res.body)
        details = res.details()
        base = {"attempts": row["attempts"] + 1, "http_status": res.status, "fetched_at": now}
        if isinstance(decoded, ImageRejection):
            to = State.IMAGE_REJECTED if decoded.reason in _IMAGE_CHECK_REASONS else State.FETCH_FAILED
            return Outcome(sid, to, decoded.reason, {**details, "image": decoded.detail}, base)
        assert isinstance(decoded, NormalisedImage)
        assert self.images is not None
        if why := self.images.match(decoded.sha256, decoded.phash):
            return Outcome(sid, State.FETCH_FAILED, "blocklisted", {**details, "by": why}, base)
        if res.final_url != url:
            try:
                details["final_url"] = normalise_url(res.final_url)
            except ValueError:
                pass
        # Content-addressed: an image this run already stored is not sent again, and a new one is
        # PUT without a HEAD first (half the requests to the object store).
        if decoded.sha256 in self.stored:
            key, size = self.stored[decoded.sha256]
        else:
            put = await self.uploader.put_image(decoded.jpeg, content_type="image/jpeg")
            key, size = self.stored[decoded.sha256] = (put.key, put.size)
            self.report.bytes_stored += put.size
        self.bands.append((sid, phash_bands(decoded.phash, self.image.phash_distance + 1)))
        details.update(source_format=decoded.source_format, source_size=[decoded.source_width, decoded.source_height],
                       source_bytes=decoded.orig_bytes)
        return Outcome(sid, State.FETCHED, "ok", details, {
            **base, "object_key": key, "sha256": decoded.sha256, "phash": decoded.phash,
            "width": decoded.width, "height": decoded.height, "bytes": size, "format": decoded.source_format,
        })

    async def _flush(self, force: bool = False) -> None:
        async with self.write_lock:
            due = {state: outcomes for state, outcomes in self.pending.items() if outcomes and (force or len(outcomes) >= _WRITE_BATCH)}
            for state in due:
                self.pending[state] = []  # workers append to a fresh list while this batch is written
            bands, self.bands = self.bands, []
            if bands or due:
                urls = {o.sample_id: self.urls.pop(o.sample_id, "") for outcomes in due.values() for o in outcomes}
                late, deleted = await asyncio.to_thread(_write_batch, self.ledger, self.store, bands, due, urls, lease=self.lease,
                                                        ctx=self.ctx, max_distance=self.image.phash_distance)
                if late:
                    _recount(self.report.states, State.FETCHED.value, State.FETCH_FAILED.value, len(late))
                    _recount(self.report.reasons, "ok", "blocklisted", len(late))
                if deleted:
                    # Not to be reused by a later sample of this run: the object is gone.
                    gone = set(deleted)
                    self.stored = {sha: kept for sha, kept in self.stored.items() if kept[0] not in gone}


def fetch_shard(
    ledger: Ledger, store: ObjectStore, settings: FetchSettings, image: ImageConfig, *, shard: int | None = None,
    owner: str | None = None, ctx: RunContext | None = None, lease_seconds: int = 120,
    claim_wait_seconds: float | None = None, decode_workers: int | None = None,
) -> FetchReport:
    """Fetch every due sample of `shard` (all shards when None); safe to re-run and to run twice at once.

    `owner`: the lease owner token (default: this process, see `taisu_etl.db.leases`). Samples
    another process holds are waited for (up to `claim_wait_seconds`, default lease_seconds + 30)
    or taken from an owner that is provably dead; samples not yet due for a retry are left alone.
    """
    ctx = ctx or RunContext.from_airflow_env(recipe_version=ledger.recipe_version)
    with StageLease(ledger, stage=Stage.FETCH, shard=shard, lease_seconds=lease_seconds,
                    claim_wait_seconds=claim_wait_seconds, owner=owner) as lease:
        run = _ShardFetch(ledger, store, settings, image, shard=shard, lease=lease, ctx=ctx, decode_workers=decode_workers)
        return asyncio.run(run.run())
