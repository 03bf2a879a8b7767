"""A ledger connection lost in the middle of work: retried with back-off, nothing decided is lost.

The ledger talks to the real Postgres through a TCP proxy on 127.0.0.1 that the test cuts: every
open connection is dropped and new ones are refused (nothing listens) until it is restored, which
is what a client sees of a server restart.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Iterator

import pytest
import sqlalchemy as sa

from taisu_etl.db.leases import StageLease
from taisu_etl.db.ledger import Ledger, NewSample, Outcome
from taisu_etl.errors import LedgerError
from taisu_etl.urls import normalise_url
from taisu_etl.vocab import Stage, State
from tests.conftest import _empty_postgres

pytestmark = pytest.mark.postgres


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to the database; `cut()` drops every connection and refuses new ones."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.cuts = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._listener: socket.socket | None = None
        self._accepting = threading.Event()
        self._threads: list[threading.Thread] = []
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        self._accepting.set()
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self, listener: socket.socket) -> None:
        while self._accepting.is_set() and self._listener is listener:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                self._pairs.add((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b, (client, server)), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close_pair(pair)

    def _close_pair(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            self._pairs.discard(pair)
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self) -> None:
        """Drop every open connection and refuse new ones (the port stops listening)."""
        self._accepting.clear()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._close_pair(pair)
        self.cuts += 1
        self.dropped += len(pairs)

    def close(self) -> None:
        self.cut()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def pg_ledger_url(pg_url: str) -> str:
    _empty_postgres(pg_url)
    return pg_url


@pytest.fixture
def proxy(pg_ledger_url: str) -> Iterator[CuttableProxy]:
    url = sa.engine.make_url(pg_ledger_url)
    p = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    yield p
    p.close()


def _through(url: str, proxy: CuttableProxy) -> str:
    return sa.engine.make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


def _add(url: str, n: int) -> None:
    direct = Ledger.open(url, shards=2)
    direct.add_samples(NewSample(caption=f"雪山脚下的湖泊 第{i}张", source="s.csv", url=normalise_url(f"http://a.example.com/{i}.jpg"))
                       for i in range(n))
    direct.dispose()


def _events_per_sample(url: str, stage: str) -> dict[int, int]:
    direct = Ledger.open(url)
    with direct.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT sample_id, COUNT(*) FROM sample_event WHERE stage = :s GROUP BY sample_id"), {"s": stage}).all()
    direct.dispose()
    return {i: n for i, n in rows}


def _outage(proxy: CuttableProxy, seconds: float) -> None:
    proxy.cut()
    time.sleep(seconds)
    proxy.restore()


def _text_stage(ledger: Ledger, progress: list[int], *, batch: int = 50, lease_seconds: int = 60) -> None:
    """A claiming stage in miniature: claim a batch, decide it, write the decisions; until the state is empty."""
    with StageLease(ledger, stage=Stage.TEXT, shard=None, lease_seconds=lease_seconds, claim_wait_seconds=5) as lease:
        while rows := lease.claim(State.INGESTED, limit=batch, columns=("id", "caption")):
            outcomes = [
                Outcome(r["id"], State.TEXT_OK if r["id"] % 3 else State.TEXT_REJECTED, "ok" if r["id"] % 3 else "boilerplate",
                        details={"n": r["id"]}, updates={"caption_clean": r["caption"]} if r["id"] % 3 else {})
                for r in rows
            ]
            progress.append(sum(lease.apply(outcomes, from_state=State.INGESTED).values()))
            time.sleep(0.01)  # stands in for the stage's work


def test_decisions_survive_dropped_connections_and_a_refusing_server(pg_ledger_url: str, proxy: CuttableProxy,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    total = 3000
    _add(pg_ledger_url, total)
    ledger = Ledger.open(_through(pg_ledger_url, proxy), shards=2, retry_seconds=30)
    progress: list[int] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _text_stage(ledger, progress)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failure.append(exc)

    caplog.set_level(logging.WARNING, logger="taisu_etl")
    worker = threading.Thread(target=run)
    worker.start()
    for at in (500, 1500):  # two outages, each in the middle of the run
        deadline = time.monotonic() + 60
        while sum(progress) < at and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not failure, failure
        assert worker.is_alive(), "the stage ended before the outage: make it longer"
        _outage(proxy, 1.5)
    worker.join(timeout=120)
    assert not worker.is_alive() and not failure, failure
    assert proxy.cuts == 2 and proxy.dropped >= 2  # connections really were cut while in use
    assert any("lost the ledger" in r.getMessage() for r in caplog.records)
    per_sample = _events_per_sample(pg_ledger_url, "text")
    assert len(per_sample) == total and set(per_sample.values()) == {1}
    assert "ingested" not in ledger.funnel()
    assert sum(ledger.funnel().values()) == total
    ledger.dispose()


def test_the_score_stage_survives_a_ledger_restart(pg_ledger_url: str, proxy: CuttableProxy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from taisu_etl.models import ClipScorer
    from taisu_etl.stages.model_config import ScoreConfig
    from taisu_etl.stages.score import score_shard
    from taisu_etl.storage import LocalObjectStore
    from taisu_etl.synthweb import make_pairs
    from taisu_etl.synthweb.seeding import seed_checked_pairs

    store = LocalObjectStore(tmp_path / "o")
    direct = Ledger.open(pg_ledger_url, shards=2)
    ids = seed_checked_pairs(direct, store, make_pairs(160, seed=31, mismatch_rate=0.2, split="heldout"), size=(64, 64))
    config = ScoreConfig(workers=0, batch_size=8, chunk_size=8, store_embeddings=False, device="cpu")
    scorer = ClipScorer.load(config.model.spec(), device="cpu")
    ledger = Ledger.open(_through(pg_ledger_url, proxy), shards=2, retry_seconds=30)
    reports = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            reports.append(score_shard(ledger, store, config, scorer=scorer, lease_seconds=30))
        except BaseException as exc:  # noqa: BLE001
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 120
    while len(_events_per_sample(pg_ledger_url, "score")) < 24 and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert worker.is_alive(), "scoring ended before the outage: make it longer"
    _outage(proxy, 2.0)
    worker.join(timeout=180)
    assert not worker.is_alive() and not failure, failure
    per_sample = _events_per_sample(pg_ledger_url, "score")
    assert sorted(per_sample) == sorted(ids.values()) and set(per_sample.values()) == {1}
    assert direct.shards_with(State.IMAGE_OK) == []
    ledger.dispose()
    direct.dispose()


def test_a_ledger_that_never_comes_back_ends_in_one_error_within_the_bound(pg_ledger_url: str, proxy: CuttableProxy) -> None:
    _add(pg_ledger_url, 2000)
    ledger = Ledger.open(_through(pg_ledger_url, proxy), shards=2, retry_seconds=3)
    progress: list[int] = []
    failure: list[BaseException] = []
    ended = threading.Event()

    def run() -> None:
        try:
            _text_stage(ledger, progress, batch=20)
        except BaseException as exc:  # noqa: BLE001
            failure.append(exc)
        finally:
            ended.set()

    worker = threading.Thread(target=run)
    worker.start()
    while sum(progress) < 100 and worker.is_alive():
        time.sleep(0.005)
    assert worker.is_alive()
    proxy.cut()
    cut_at = time.monotonic()
    assert ended.wait(timeout=60)
    took = time.monotonic() - cut_at
    worker.join()
    # The bound, plus one connection attempt (connect_timeout 5 s; a refused one fails at once) and the stage's way out.
    assert 3 <= took < 3 + 5 + 3, took
    assert len(failure) == 1 and isinstance(failure[0], LedgerError), failure
    msg = str(failure[0])
    assert "\n" not in msg and "could not reconnect within 3 s" in msg and f"127.0.0.1:{proxy.port}" in msg
    # What was decided before the outage is in the ledger, once.
    per_sample = _events_per_sample(pg_ledger_url, "text")
    assert set(per_sample.values()) <= {1} and len(per_sample) >= sum(progress)
    ledger.dispose()


def test_sql_errors_are_not_retried(pg_ledger_url: str) -> None:
    ledger = Ledger.open(pg_ledger_url, retry_seconds=30)
    started = time.monotonic()
    with pytest.raises(sa.exc.ProgrammingError):
        ledger.transaction(lambda conn: conn.execute(sa.text("SELECT no_such_column FROM sample")))
    with pytest.raises(sa.exc.IntegrityError):
        ledger.transaction(lambda conn: conn.execute(sa.text("INSERT INTO sample_state (sample_id, shard, state) VALUES (999999, 0, 'x')")))
    assert time.monotonic() - started < 5
    ledger.dispose()


def test_a_heartbeat_that_cannot_reach_the_ledger_logs_and_keeps_trying(pg_ledger_url: str, proxy: CuttableProxy,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    _add(pg_ledger_url, 10)
    ledger = Ledger.open(_through(pg_ledger_url, proxy), shards=2, retry_seconds=30)
    direct = Ledger.open(pg_ledger_url)
    caplog.set_level(logging.WARNING, logger="taisu_etl")

    def lease_left() -> float:
        with direct.engine.connect() as conn:
            return conn.execute(sa.text("SELECT EXTRACT(EPOCH FROM MIN(lease_until) - now()) FROM sample_state")).scalar_one()

    with StageLease(ledger, stage=Stage.TEXT, shard=None, lease_seconds=3, claim_wait_seconds=0) as lease:
        rows = lease.claim(State.INGESTED, limit=10, columns=("id",))
        _outage(proxy, 2.5)  # more than two heartbeats
        assert any("could not renew the leases of 10 samples" in r.getMessage() for r in caplog.records)
        time.sleep(2.5)  # back: the next heartbeats renew again
        assert lease_left() > 1.0
        counts = lease.apply([Outcome(r["id"], State.TEXT_OK, "ok") for r in rows], from_state=State.INGESTED)
    assert counts == {"ok": 10}
    ledger.dispose()
    direct.dispose()
