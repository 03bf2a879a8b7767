"""Provenance in SQL: the views answer the operators' questions on a ledger built the way the
demo builds one (ingest with bad rows, every stage's decisions made inside Airflow tasks, a
published release, a takedown filed and processed against it, a worker holding leases), on
SQLite and Postgres; every query of sql/003_example_queries.sql returns rows there; and the
read-only role reads the views and nothing else.
"""

from __future__ import annotations

import csv
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import sqlalchemy as sa
import logging

from taisu_etl.db import views
from taisu_etl.db.engine import make_engine
from taisu_etl.db.ledger import Ledger
from taisu_etl.db.migrate import upgrade
from taisu_etl.release import ReleaseOptions, create_release
from taisu_etl.stages.ingest import ingest_file
from taisu_etl.storage import LocalObjectStore
from taisu_etl.takedown.process import process_request
from taisu_etl.takedown.requests import file_request
from taisu_etl.vocab import State
from tests.conftest import PG_ADMIN_URL
from tests.release.support import seed

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "sql" / "003_example_queries.sql"
RELEASE = "demo-20261201"
PIPELINE_RUN = "scheduled__2026-12-01T00:00:00+00:00"
TAKEDOWN_RUN = "manual__2026-12-02T09:30:00+00:00"
LEASE_OWNER = "gpu@worker-3:4242"


def _airflow_task(monkeypatch: pytest.MonkeyPatch, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> None:
    """What Airflow exports to a running task: the ledger records it on every event."""
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", dag_id)
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", run_id)
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", task_id)
    monkeypatch.setenv("AIRFLOW_CTX_TRY_NUMBER", str(try_number))


@dataclass
class Demo:
    ledger: Ledger
    request_id: int
    removed: str  # url_id of the release member the takedown removed
    kept: str  # url_id of a member still in the release
    rejected: str  # url_id of a text-rejected sample
    blocklisted: str  # url_id of an eligible sample the blocklist keeps out
    captioned: str  # url_id of a sample with a score and a generated caption

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.ledger.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]


@pytest.fixture
def demo(ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Demo:
    store = LocalObjectStore(tmp_path / "objects")
    source = tmp_path / "wukong_100m_0.csv"
    with open(source, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["url", "caption"])
        w.writerow(["http://img9.example.com/p/ingested.jpg", "一只白色的小猫在窗台上晒太阳"])
        w.writerow(["", "没有网址的一行说明文字"])
        w.writerow(["ftp://img9.example.com/p/x.jpg", "用错误协议的一张图片说明"])
    _airflow_task(monkeypatch, "taisu_pipeline", PIPELINE_RUN, "ingest")
    ingest_file(ledger, source)
    _airflow_task(monkeypatch, "taisu_pipeline", PIPELINE_RUN, "pipeline_stages", try_number=2)
    seeded = seed(ledger, store)
    for name in ("AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_DAG_RUN_ID", "AIRFLOW_CTX_TASK_ID", "AIRFLOW_CTX_TRY_NUMBER"):
        monkeypatch.delenv(name)
    create_release(ledger, store, RELEASE, ReleaseOptions(parent=None), workdir=tmp_path, fetch_workers=2)

    with ledger.engine.connect() as conn:
        members = conn.execute(sa.text(
            "SELECT s.url_id FROM release_member m JOIN sample s ON s.id = m.sample_id ORDER BY s.id")).scalars().all()
        captioned = conn.execute(sa.text(
            "SELECT s.url_id FROM release_member m JOIN sample s ON s.id = m.sample_id "
            "WHERE s.gen_caption_model IS NOT NULL ORDER BY s.id")).scalars().all()
    removed, kept = members[0], members[-1]
    _airflow_task(monkeypatch, "taisu_takedown", TAKEDOWN_RUN, "process_request")
    rid = file_request(ledger, "sample", removed, requester="某某图片社", contact="legal@example.com", reason="版权", reference="mail-2026-1201")
    # Distance 0: the seeded perceptual hashes are neighbours, so any larger distance would take down more.
    report = process_request(ledger, store, rid, max_distance=0)
    assert report.ok, report.summary()
    ledger.claim(state=State.CAPTIONED, owner=LEASE_OWNER, limit=2, lease_seconds=3600)
    blocked = sorted(seeded.blocklisted)[0]
    return Demo(ledger, rid, removed, kept, sorted(seeded.rejected & _text_rejected(ledger))[0], blocked,
                next(u for u in captioned if u != removed))


def _text_rejected(ledger: Ledger) -> set[str]:
    with ledger.engine.connect() as conn:
        return set(conn.execute(sa.text(
            "SELECT s.url_id FROM sample s JOIN sample_state st ON st.sample_id = s.id WHERE st.state = 'text_rejected'")).scalars())


def example_queries(path: Path = EXAMPLES) -> list[tuple[str, str]]:
    """(the comment above it, the statement) for every statement of the file."""
    out: list[tuple[str, str]] = []
    comment: list[str] = []
    statement: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if statement:
            statement.append(line)
        elif line.startswith("--"):
            comment.append(line.lstrip("- "))
        elif not line.strip():
            comment = []  # a blank line ends a comment that belongs to no statement (the file's header)
        else:
            statement.append(line)
        if statement and line.rstrip().endswith(";"):
            # A statement with no comment of its own is the second query of the one above.
            out.append((" ".join(comment) or out[-1][0], "\n".join(statement).rstrip().rstrip(";")))
            comment, statement = [], []
    assert not statement, f"{path}: the last statement has no closing semicolon"
    return out


def test_every_example_query_returns_rows(demo: Demo) -> None:
    queries = example_queries()
    assert len(queries) >= 15
    for comment, sql in queries:
        rows = demo.rows(sql)
        assert rows, f"sql/003_example_queries.sql: no rows from the query under '{comment[:80]}'"


def test_lineage_names_every_decision_its_task_and_models(demo: Demo) -> None:
    events = demo.rows("SELECT * FROM v_sample_lineage WHERE url_id = :u ORDER BY event_id", u=demo.captioned)
    assert [e["stage"] for e in events] == ["ingest", "image", "score", "caption"]
    assert all((e["dag_id"], e["run_id"], e["task_id"], e["try_number"]) == ("taisu_pipeline", PIPELINE_RUN, "pipeline_stages", 2)
               for e in events)
    last = events[-1]
    assert last["current_state"] == "captioned" and last["score"] is not None
    assert last["score_model"] == "tiny-clip@0a1b2c3d" and last["gen_caption_model"] == "tiny-coca@4e5f6a7b"

    removed = demo.rows("SELECT * FROM v_sample_lineage WHERE url_id = :u ORDER BY event_id", u=demo.removed)
    takedown = removed[-1]
    assert (takedown["stage"], takedown["to_state"], takedown["reason"]) == ("takedown", "taken_down", "takedown")
    assert (takedown["dag_id"], takedown["run_id"], takedown["task_id"]) == ("taisu_takedown", TAKEDOWN_RUN, "process_request")
    assert str(demo.request_id) in str(takedown["details"])


def test_why_not_in_release_is_one_query(demo: Demo) -> None:
    rows = demo.rows(
        "SELECT * FROM v_release_exclusion WHERE release_name = :r AND url_id IN (:removed, :kept, :rejected, :blocked)",
        r=RELEASE, removed=demo.removed, kept=demo.kept, rejected=demo.rejected, blocked=demo.blocklisted)
    by = {r["url_id"]: r for r in rows}
    assert set(by) == {demo.removed, demo.kept, demo.rejected, demo.blocklisted}

    kept = by[demo.kept]
    assert kept["in_release"] and kept["why"] == "in the release" and kept["shard"] and kept["version"] == 2

    removed = by[demo.removed]
    assert not removed["in_release"] and removed["removed_in_version"] == 2
    assert removed["why"] == f"removed in version 2 by takedown request {demo.request_id}"
    assert removed["removed_by_takedown_id"] == removed["taken_down_by_takedown_id"] == demo.request_id
    assert removed["blocklisted_by_takedown_id"] == demo.request_id
    assert (removed["state"], removed["last_stage"], removed["last_task_id"]) == ("taken_down", "takedown", "process_request")

    rejected = by[demo.rejected]
    assert not rejected["in_release"] and rejected["why"] == "not eligible: text_rejected (text_too_short)"
    assert (rejected["last_stage"], rejected["last_dag_id"], rejected["last_run_id"]) == ("text", "taisu_pipeline", PIPELINE_RUN)
    assert rejected["shard"] is None and rejected["removed_in_version"] is None

    blocked = by[demo.blocklisted]
    assert not blocked["in_release"] and blocked["why"] == "blocklisted" and blocked["blocklisted_as"] in ("url", "sha256")


def test_image_releases_by_id_url_and_sha256(demo: Demo) -> None:
    for column in ("url_id", "url", "sha256"):
        removed = demo.rows(f"SELECT * FROM v_image_releases WHERE {column} = (SELECT {column} FROM sample WHERE url_id = :u) "
                            "ORDER BY version", u=demo.removed)
        assert [(r["release_name"], r["version"], r["removed_in_version"]) for r in removed] == [(RELEASE, 1, 2)], column
        assert not removed[0]["current_version"]
        kept = demo.rows(f"SELECT * FROM v_image_releases WHERE {column} = (SELECT {column} FROM sample WHERE url_id = :u) "
                         "ORDER BY version", u=demo.kept)
        assert [(r["version"], bool(r["current_version"])) for r in kept] == [(1, False), (2, True)], column
        assert kept[1]["version_takedown_id"] == demo.request_id
    if demo.ledger.is_postgres:
        # The index-friendly form of a URL lookup that sql/003_example_queries.sql documents.
        wrong = demo.rows("SELECT count(*) AS n FROM sample WHERE url IS NOT NULL "
                          "AND url_id <> left(encode(sha256(convert_to(url, 'UTF8')), 'hex'), 32)")
        assert wrong == [{"n": 0}]


def test_release_contents_are_the_current_version(demo: Demo) -> None:
    rows = demo.rows("SELECT url_id, version FROM v_release_contents WHERE release_name = :r", r=RELEASE)
    ids = {r["url_id"] for r in rows}
    assert demo.kept in ids and demo.removed not in ids
    assert {r["version"] for r in rows} == {2}
    versions = demo.rows("SELECT v.version, v.samples FROM release_version v JOIN release r ON r.id = v.release_id "
                         "WHERE r.name = :r ORDER BY v.version", r=RELEASE)
    assert [v["version"] for v in versions] == [1, 2] and versions[1]["samples"] == len(rows) == versions[0]["samples"] - 1


def test_takedown_audit_summary_and_trail(demo: Demo) -> None:
    rid = demo.request_id
    (audit,) = demo.rows("SELECT * FROM v_takedown_audit WHERE takedown_id = :t", t=rid)
    counted = demo.rows(
        "SELECT (SELECT count(*) FROM takedown_match WHERE takedown_id = :t) AS matched, "
        "(SELECT count(*) FROM blocklist WHERE takedown_id = :t) AS blocklisted, "
        "(SELECT count(*) FROM takedown_object WHERE takedown_id = :t) AS objects", t=rid)[0]
    assert (audit["samples_matched"], audit["blocklist_entries"], audit["objects"]) == (1, counted["blocklisted"], counted["objects"])
    assert counted["matched"] == 1 and counted["blocklisted"] >= 3 and counted["objects"] >= 2
    assert audit["status"] == "verified" and audit["verified_at"] is not None and audit["reference"] == "mail-2026-1201"
    assert audit["objects_verified"] == audit["objects"] and audit["objects_left_behind"] == 0
    assert audit["object_versions_deleted"] >= 1
    assert (audit["releases_patched"], audit["releases_withdrawn"]) == (1, 0)

    facts = demo.rows("SELECT * FROM v_takedown_events WHERE takedown_id = :t ORDER BY step, happened_at", t=rid)
    kinds = [f["fact"] for f in facts]
    for fact in ("received", "matched", "processed", "verified", "sample_matched", "sample_taken_down", "release_patched"):
        assert kinds.count(fact) == 1, (fact, kinds)
    assert kinds.count("blocklisted") == counted["blocklisted"]
    assert kinds.count("object_verified") == counted["objects"]
    assert kinds.count("object_deleted") + kinds.count("object_rewritten") == counted["objects"]
    assert kinds[0] == "received" and kinds[-1] == "verified", kinds
    by = {f["fact"]: f for f in facts}
    assert by["sample_matched"]["url_id"] == by["sample_taken_down"]["url_id"] == demo.removed
    assert by["sample_taken_down"]["task_id"] == "process_request"
    assert by["release_patched"]["subject"] == RELEASE and by["release_patched"]["detail"].startswith("version 1 -> 2: 1 samples removed")
    assert "某某图片社" in by["received"]["detail"] and "mail-2026-1201" in by["received"]["detail"]


# ------------------------------------------------------------------ the read-only role (Postgres)

def _as(url: str, user: str) -> str:
    return sa.engine.make_url(url).set(username=user, password=None).render_as_string(hide_password=False)


@pytest.mark.postgres
def test_reader_role_reads_the_views_and_nothing_else(pg_url: str) -> None:
    reader = make_engine(_as(pg_url, views.READER_ROLE))
    try:
        with reader.connect() as conn:
            for name in views.VIEWS:
                conn.execute(sa.text(f"SELECT * FROM {name} LIMIT 1")).all()
        for sql in ("SELECT * FROM sample LIMIT 1", "SELECT count(*) FROM takedown_request",
                    "INSERT INTO takedown_request (requester, kind, value) VALUES ('x', 'url', 'http://a.example/')",
                    "UPDATE sample_state SET state = 'accepted'", "CREATE TABLE mine (x int)"):
            with reader.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                conn.execute(sa.text(sql))
    finally:
        reader.dispose()


@pytest.fixture
def pg_admin() -> Iterator[sa.Engine]:
    url = sa.engine.make_url(PG_ADMIN_URL)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg2")
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def _migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_reader_role_without_createrole_and_in_several_databases(
    pg_admin: sa.Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A migrating user without CREATEROLE migrates anyway (a NOTICE says what to do); once the role
    exists, every ledger database of the cluster grants it the views, each on its own."""
    tag = uuid.uuid4().hex[:8]
    role, owner = f"taisu_reader_t{tag}", f"taisu_owner_t{tag}"
    databases = [f"taisu_roles_{tag}_{n}" for n in range(3)]
    monkeypatch.setattr(views, "READER_ROLE", role)
    admin_url = pg_admin.url.render_as_string(hide_password=False)
    with pg_admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {owner} LOGIN NOCREATEROLE")
        for db in databases:
            conn.exec_driver_sql(f'CREATE DATABASE "{db}" OWNER {owner}')
    try:
        # SQLAlchemy logs the server's notices (and takes them off the connection).
        with caplog.at_level(logging.INFO, logger="sqlalchemy.dialects.postgresql"):
            _migrate(_as(sa.engine.make_url(admin_url).set(database=databases[0]).render_as_string(hide_password=False), owner))
        assert any(f"role {role} not created" in r.getMessage() and "CREATEROLE" in r.getMessage() for r in caplog.records), caplog.text
        with pg_admin.connect() as conn:
            assert conn.exec_driver_sql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{role}'").scalar_one() == 0
            conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")  # what the administrator does
        _migrate(_as(sa.engine.make_url(admin_url).set(database=databases[1]).render_as_string(hide_password=False), owner))
        _migrate(sa.engine.make_url(admin_url).set(database=databases[2]).render_as_string(hide_password=False))
        for db, readable in zip(databases, (False, True, True)):
            reader = make_engine(_as(sa.engine.make_url(admin_url).set(database=db).render_as_string(hide_password=False), role))
            try:
                with reader.connect() as conn:
                    if readable:
                        assert conn.execute(sa.text("SELECT count(*) FROM v_funnel")).scalar_one() == 0
                        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                            conn.execute(sa.text("SELECT count(*) FROM sample"))
                    else:
                        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                            conn.execute(sa.text("SELECT count(*) FROM v_funnel"))
            finally:
                reader.dispose()
    finally:
        with pg_admin.connect() as conn:
            for db in databases:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {owner}")


def test_example_file_parses_into_commented_statements() -> None:
    queries = example_queries()
    assert all(re.match(r"\d+\. ", comment) for comment, _ in queries), [c[:30] for c, _ in queries]
    assert all(sql.lstrip().upper().startswith("SELECT") for _, sql in queries)
