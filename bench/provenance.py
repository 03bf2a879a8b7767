"""Provenance queries on a 1M-sample Postgres ledger: the plans use indexes, and how long each takes.

Builds (or reuses, when the database already holds a ledger this script built with the same
parameters) a ledger with realistic content, in SQL (INSERT ... SELECT generate_series):
- N samples with every outcome (text-rejected, fetch-failed, score-rejected, duplicates,
  accepted, captioned) and the events of every stage each went through, with Airflow
  dag/run/task/map index/try and model details, plus URL rechecks;
- three releases (two published, patched in takedown batches of 100 requests; one withdrawn),
  their members and every version;
- takedown requests (default 10,000, one sample each, by sample id, URL, sha256 or image) and
  one domain request matching a whole host: matches, `taken_down` events, blocklist entries,
  deleted and verified objects, patched and withdrawn releases.
Then, for each provenance query filtered the way operators filter it, `EXPLAIN (FORMAT JSON)` must
show no sequential scan of sample, sample_event, release_member or takedown_match (the script
fails if one does), and the query is timed (median of several runs, warm cache).

    .venv/bin/python bench/provenance.py
    .venv/bin/python bench/provenance.py --db-url postgresql://postgres@127.0.0.1:5432/taisu_bench_provenance --samples 1000000 --rebuild
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from taisu_etl.db.engine import make_engine  # noqa: E402
from taisu_etl.db.migrate import upgrade  # noqa: E402

NO_SEQ_SCAN = {"sample", "sample_event", "release_member", "takedown_match"}
BATCH = 100  # takedown requests per release patch (process_open batches them)
RELEASES = [  # (id, name, which eligible samples are members)
    (1, "taisu-2026-10", "i <= :n * 7 / 10"),
    (2, "taisu-2026-11", "TRUE"),
    (3, "taisu-laion-2026-09", "mod(i, 7) = 0"),
]
DOMAIN_HOST_MOD = 996  # the domain request takes down every sample of img996.example.com
URL = "'http://img' || mod(i, 997) || '.example.com/p/' || i || '.jpg'"
ELIGIBLE = "mod(i, 10) >= 4"
# (stage, task, from, to, reason, which samples, details): the events each sample got, in order.
STAGES = [
    ("ingest", "ingest", None, "ingested", "ingested", "TRUE", None),
    ("text", "text_filter", "ingested", "text_rejected", "text_too_short", "mod(i, 10) = 0",
     "jsonb_build_object('rule', 'min_chars', 'chars', 3)"),
    ("text", "text_filter", "ingested", "text_ok", "ok", "mod(i, 10) <> 0", None),
    ("fetch", "fetch", "text_ok", "fetch_failed", "http_404", "mod(i, 10) = 1", "jsonb_build_object('http', 404, 'ms', mod(i, 900))"),
    ("fetch", "fetch", "text_ok", "fetched", "ok", "mod(i, 10) >= 2",
     "jsonb_build_object('http', 200, 'ms', mod(i, 900), 'bytes', 20000 + mod(i, 50000))"),
    ("image", "image_checks", "fetched", "duplicate", "duplicate", "mod(i, 10) = 3", "jsonb_build_object('duplicate_of', i - 1)"),
    ("image", "image_checks", "fetched", "image_ok", "ok", "mod(i, 10) = 2 OR mod(i, 10) >= 4", None),
    ("score", "score", "image_ok", "score_rejected", "low_score", "mod(i, 10) = 2",
     "jsonb_build_object('model', 'taiyi-clip-roberta-102m@5e9a2f1', 'score', 0.1, 'image_rank', 3, 'text_rank', 5)"),
    ("score", "score", "image_ok", "accepted", "ok", ELIGIBLE,
     "jsonb_build_object('model', 'taiyi-clip-roberta-102m@5e9a2f1', 'score', 0.3, 'image_rank', 0, 'text_rank', 0)"),
    ("caption", "caption", "accepted", "captioned", "ok", f"{ELIGIBLE} AND mod(i, 3) <> 0",
     "jsonb_build_object('model', 'ofa-cn-base@9c1d', 'scorer', 'taiyi-clip-roberta-102m@5e9a2f1')"),
    ("recheck", "recheck", "captioned", "captioned", "url_alive", f"{ELIGIBLE} AND mod(i, 3) <> 0 AND mod(i, 50) = 7",
     "jsonb_build_object('http', 200)"),
]


def _say(line: str) -> None:
    print(line, flush=True)


def _admin(url: sa.URL) -> sa.Engine:
    return make_engine(url.set(database="postgres").render_as_string(hide_password=False))


def _marker(samples: int, requests: int) -> str:
    return f"bench/provenance.py samples={samples} requests={requests} format=2"


def _existing_marker(url: sa.URL) -> str | None:
    admin = _admin(url)
    try:
        with admin.connect() as conn:
            return conn.execute(sa.text("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = :d"),
                                {"d": url.database}).scalar()
    finally:
        admin.dispose()


def _recreate(url: sa.URL) -> None:
    admin = _admin(url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{url.database}"')
    admin.dispose()


def _run(conn: sa.Connection, label: str, sql: str, **params: Any) -> None:
    t0 = time.perf_counter()
    result = conn.execute(sa.text(sql), params)
    _say(f"  {label:<58} {max(result.rowcount, 0):>10,} rows {time.perf_counter() - t0:7.1f} s")


BULK_TABLES = ("sample", "sample_state", "sample_event", "release_member")


def _drop_secondary(conn: sa.Connection) -> list[str]:
    """Drop the big tables' secondary indexes, unique and foreign-key constraints; returns the DDL
    that recreates them. Building an index once over loaded rows is several times faster than
    updating it row by row (random hash keys), and one validation query replaces a check per row."""
    tables = list(BULK_TABLES)
    constraints = conn.execute(sa.text(
        "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid), c.contype FROM pg_constraint c "
        "WHERE c.conrelid::regclass::text = ANY(:t) AND c.contype IN ('u', 'f') ORDER BY c.contype DESC"), {"t": tables}).all()
    indexes = conn.execute(sa.text(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid::regclass::text = ANY(:t) AND NOT i.indisprimary "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)"), {"t": tables}).all()
    for table, name, _, _ in constraints:  # foreign keys first (ORDER BY contype DESC)
        conn.execute(sa.text(f"ALTER TABLE {table} DROP CONSTRAINT {name}"))
    for name, _ in indexes:
        conn.execute(sa.text(f"DROP INDEX {name}"))
    return ([f"ALTER TABLE {t} ADD CONSTRAINT {n} {d}" for t, n, d, kind in constraints if kind == "u"]
            + [d for _, d in indexes]
            + [f"ALTER TABLE {t} ADD CONSTRAINT {n} {d}" for t, n, d, kind in constraints if kind == "f"])


def build(engine: sa.Engine, n: int, requests: int) -> None:
    """Fill an empty, migrated ledger (see the module docstring)."""
    batches = -(-requests // BATCH)
    last_version = batches + 2  # version 1, one patch per batch, one for the domain request
    p = {"n": n, "t": requests, "batch": BATCH, "dom": DOMAIN_HOST_MOD, "last": last_version}
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
        conn.execute(sa.text("SET LOCAL maintenance_work_mem = '512MB'"))
        recreate = _drop_secondary(conn)
        _run(conn, "sample", f"""
            INSERT INTO sample (id, pair_hash, url_id, taisu_id, url, caption, caption_hash, source, source_pos, object_key,
                sha256, phash, width, height, bytes, format, http_status, fetched_at, duplicate_of, score, score_model,
                gen_caption, gen_caption_model, created_at, updated_at)
            SELECT i, md5('pair' || i), left(encode(sha256(convert_to(u, 'UTF8')), 'hex'), 32),
                CASE WHEN mod(i, 4) = 0 THEN 't' || lpad(i::text, 9, '0') END, u, c, left(md5(c), 16),
                'wukong/wukong_100m_' || mod(i, 20) || '.csv', 'line ' || (i / 20 + 2),
                CASE WHEN f THEN 'images/' || substr(h, 1, 2) || '/' || substr(h, 3, 2) || '/' || h END, CASE WHEN f THEN h END,
                CASE WHEN f THEN lpad(to_hex(i * 2654435761), 16, '0') END, CASE WHEN f THEN 640 END, CASE WHEN f THEN 480 END,
                CASE WHEN f THEN 20000 + mod(i, 50000) END, CASE WHEN f THEN 'jpeg' END,
                CASE WHEN mod(i, 10) = 1 THEN 404 WHEN f THEN 200 END, CASE WHEN f THEN ts END,
                CASE WHEN mod(i, 10) = 3 THEN i - 1 END,
                CASE WHEN mod(i, 10) = 2 THEN 0.1 WHEN {ELIGIBLE} THEN 0.2 + mod(i, 30) / 100.0 END,
                CASE WHEN mod(i, 10) = 2 OR {ELIGIBLE} THEN 'taiyi-clip-roberta-102m@5e9a2f1' END,
                CASE WHEN {ELIGIBLE} AND mod(i, 3) <> 0 THEN '草地上的一只小猫' END,
                CASE WHEN {ELIGIBLE} AND mod(i, 3) <> 0 THEN 'ofa-cn-base@9c1d' END, ts, ts
            FROM (SELECT i, {URL} AS u, '一只可爱的小猫在草地上玩耍 第' || i || '张' AS c,
                         encode(sha256(int8send(i)), 'hex') AS h, mod(i, 10) >= 2 AS f,
                         timestamptz '2026-11-01 00:00:00+00' + i * interval '2 ms' AS ts
                  FROM generate_series(1, :n) i) g""", **p)
        conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('sample', 'id'), :n)"), p)
        _run(conn, "sample_state", f"""
            INSERT INTO sample_state (sample_id, shard, state, last_reason, attempts)
            SELECT i, mod(i, 64), s.state, s.reason, CASE WHEN mod(i, 10) = 1 THEN 3 ELSE 1 END
            FROM generate_series(1, :n) i CROSS JOIN LATERAL (SELECT CASE mod(i, 10) WHEN 0 THEN 'text_rejected'
                WHEN 1 THEN 'fetch_failed' WHEN 2 THEN 'score_rejected' WHEN 3 THEN 'duplicate'
                ELSE CASE WHEN mod(i, 3) = 0 THEN 'accepted' ELSE 'captioned' END END AS state,
                CASE mod(i, 10) WHEN 0 THEN 'text_too_short' WHEN 1 THEN 'http_404' WHEN 2 THEN 'low_score'
                WHEN 3 THEN 'duplicate' ELSE 'ok' END AS reason) s""", **p)
        for k, (stage, task, from_state, to_state, reason, where, details) in enumerate(STAGES):
            _run(conn, f"sample_event: {stage} -> {to_state}", f"""
                INSERT INTO sample_event (sample_id, stage, from_state, to_state, reason, details, dag_id, run_id, task_id,
                    map_index, try_number, worker, recipe_version, created_at)
                SELECT i, :stage, :from_state, :to_state, :reason, {details or 'NULL'}, 'taisu_pipeline',
                    'scheduled__2026-11-' || lpad((1 + mod(i / 50000, 28))::text, 2, '0') || 'T00:00:00+00:00', :task,
                    CASE WHEN :task <> 'ingest' THEN mod(i, 64) END, 1 + (mod(i, 97) = 0)::int,
                    'worker-' || mod(i, 8) || ':' || (4000 + mod(i, 8)), 'taisu-v1',
                    timestamptz '2026-11-01 00:00:00+00' + i * interval '2 ms' + :k * interval '1 hour'
                FROM generate_series(1, :n) i WHERE {where}""",
                 stage=stage, task=task, from_state=from_state, to_state=to_state, reason=reason, k=k, **p)

        for rid, name, members in RELEASES:
            state, version = ("withdrawn", 1) if rid == 3 else ("published", last_version)
            conn.execute(sa.text(
                "INSERT INTO release (id, name, state, version, manifest_key, recipe, counts, created_at, published_at, withdrawn_at) "
                "VALUES (:id, :name, :state, :version, 'releases/' || :name || '/manifest.json', '{}', '{}', "
                "timestamptz '2026-11-20 00:00:00+00' + :id * interval '1 day', timestamptz '2026-11-20 06:00:00+00' + :id * interval '1 day', "
                "CASE WHEN :state = 'withdrawn' THEN timestamptz '2026-12-01 00:00:00+00' END)"),
                {"id": rid, "name": name, "state": state, "version": version})
            _run(conn, f"release_member: {name}", f"""
                INSERT INTO release_member (release_id, sample_id, shard)
                SELECT :rid, i, lpad((i / 10000)::text, 5, '0') FROM generate_series(1, :n) i WHERE {ELIGIBLE} AND {members}""",
                 rid=rid, **p)
        conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('release', 'id'), 3)"))
        t0 = time.perf_counter()
        for ddl in recreate:
            conn.execute(sa.text(ddl))
        _say(f"  {f'indexes and constraints ({len(recreate)})':<58} {'':>15} {time.perf_counter() - t0:7.1f} s")
        conn.execute(sa.text("ANALYZE"))

        # Takedown requests 1..t, one eligible sample each (distinct: 7919 is prime to n/10), and t+1 for a domain.
        _run(conn, "takedown_request", """
            INSERT INTO takedown_request (id, received_at, requester, contact, reason, kind, value, status, processed_at, details,
                reference, channel, matched_at, verified_at)
            SELECT k, ts, 'rights holder ' || mod(k, 50), 'legal' || mod(k, 50) || '@example.com', 'copyright',
                (ARRAY['sample', 'url', 'sha256', 'image'])[1 + mod(k, 4)],
                CASE mod(k, 4) WHEN 0 THEN s.url_id WHEN 1 THEN s.url ELSE s.sha256 END, 'verified',
                ts + interval '40 s', CASE WHEN mod(k, 4) = 3 THEN jsonb_build_object('phash', s.phash) END,
                'mail-' || k, CASE WHEN mod(k, 3) = 0 THEN 'airflow' ELSE 'cli' END, ts + interval '1 s', ts + interval '60 s'
            FROM generate_series(1, :t) k
            JOIN sample s ON s.id = mod(k * 7919, :n / 10) * 10 + 5
            CROSS JOIN LATERAL (SELECT timestamptz '2026-12-01 00:00:00+00' + k * interval '1 minute' AS ts) x
            UNION ALL
            SELECT :t + 1, timestamptz '2026-12-05 00:00:00+00', 'img996 photo agency', 'legal@img996.example.com', 'copyright',
                'domain', 'img996.example.com', 'verified', timestamptz '2026-12-05 00:10:00+00', NULL, 'mail-domain', 'cli',
                timestamptz '2026-12-05 00:00:05+00', timestamptz '2026-12-05 00:12:00+00'""", **p)
        conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('takedown_request', 'id'), :t + 1)"), p)
        _run(conn, "takedown_match", """
            INSERT INTO takedown_match (takedown_id, sample_id, how, distance, matched_at)
            SELECT k, mod(k * 7919, :n / 10) * 10 + 5, CASE mod(k, 4) WHEN 0 THEN 'sample' WHEN 1 THEN 'url' WHEN 2 THEN 'sha256'
                ELSE 'phash' END, CASE WHEN mod(k, 4) = 3 THEN mod(k, 5) END,
                timestamptz '2026-12-01 00:00:01+00' + k * interval '1 minute'
            FROM generate_series(1, :t) k
            UNION ALL
            SELECT :t + 1, i, 'domain', NULL, timestamptz '2026-12-05 00:00:05+00'
            FROM generate_series(1, :n) i WHERE mod(i, 997) = :dom
            ON CONFLICT DO NOTHING""", **p)
        _run(conn, "sample_event: takedown", """
            INSERT INTO sample_event (sample_id, stage, from_state, to_state, reason, details, dag_id, run_id, task_id,
                try_number, worker, recipe_version, created_at)
            SELECT m.sample_id, 'takedown', st.state, 'taken_down', 'takedown', jsonb_build_object('request', m.takedown_id, 'how', m.how),
                'taisu_takedown', 'scheduled__2026-12-' || lpad((1 + m.takedown_id / 1440)::text, 2, '0') || 'T00:00:00+00:00',
                'process_requests', 1, 'worker-0:4000', 'taisu-v1', m.matched_at + interval '2 s'
            FROM (SELECT DISTINCT ON (sample_id) * FROM takedown_match ORDER BY sample_id, takedown_id) m
            JOIN sample_state st ON st.sample_id = m.sample_id""", **p)
        _run(conn, "sample_state: taken_down", """
            UPDATE sample_state st SET state = 'taken_down', last_reason = 'takedown'
            FROM takedown_match m WHERE st.sample_id = m.sample_id AND st.state <> 'taken_down'""", **p)
        _run(conn, "blocklist", """
            INSERT INTO blocklist (kind, value, takedown_id, sample_id, created_at)
            SELECT b.kind, b.value, m.takedown_id, m.sample_id, m.matched_at + interval '2 s'
            FROM takedown_match m JOIN sample s ON s.id = m.sample_id
            CROSS JOIN LATERAL (VALUES ('url', s.url), ('sha256', s.sha256), ('phash', s.phash)) b(kind, value)
            WHERE b.value IS NOT NULL
            UNION ALL SELECT 'host', 'img996.example.com', :t + 1, NULL, timestamptz '2026-12-05 00:00:06+00'
            ON CONFLICT (kind, value) DO NOTHING""", **p)
        _run(conn, "takedown_object: images", """
            INSERT INTO takedown_object (takedown_id, object_key, kind, action, versions_deleted, deleted_at, verified_at, versions_left)
            SELECT m.takedown_id, s.object_key, 'image', 'deleted', 1 + mod(m.sample_id, 2), m.matched_at + interval '5 s',
                m.matched_at + interval '59 s', 0
            FROM takedown_match m JOIN sample s ON s.id = m.sample_id WHERE s.object_key IS NOT NULL
            ON CONFLICT DO NOTHING""", **p)

        # Release patches: requests in batches of `batch`, each batch one new version of every release holding
        # one of its samples; the domain request the last version. The withdrawn release went with the domain request.
        _run(conn, "release_member: removed_in_version", """
            UPDATE release_member rm SET removed_in_version = CASE WHEN m.takedown_id > :t THEN :last ELSE 2 + (m.takedown_id - 1) / :batch END
            FROM takedown_match m WHERE rm.sample_id = m.sample_id AND rm.release_id IN (1, 2) AND rm.removed_in_version IS NULL""", **p)
        _run(conn, "takedown_release", """
            INSERT INTO takedown_release (takedown_id, release_id, action, from_version, to_version, samples_removed, shards_rewritten, created_at)
            SELECT m.takedown_id, rm.release_id, 'patched', max(rm.removed_in_version) - 1, max(rm.removed_in_version), count(*),
                count(DISTINCT rm.shard), max(m.matched_at) + interval '30 s'
            FROM takedown_match m JOIN release_member rm ON rm.sample_id = m.sample_id AND rm.release_id IN (1, 2)
            GROUP BY m.takedown_id, rm.release_id
            UNION ALL
            SELECT :t + 1, 3, 'withdrawn', 1, NULL, count(*), 0, timestamptz '2026-12-05 00:09:00+00'
            FROM takedown_match m JOIN release_member rm ON rm.sample_id = m.sample_id AND rm.release_id = 3
            WHERE m.takedown_id = :t + 1""", **p)
        _run(conn, "takedown_object: release files", """
            INSERT INTO takedown_object (takedown_id, object_key, kind, action, versions_deleted, deleted_at, verified_at, versions_left)
            SELECT tr.takedown_id, 'releases/' || r.name || '/' || f.name, 'release_file', 'rewritten', 1, tr.created_at,
                tr.created_at + interval '20 s', 1
            FROM takedown_release tr JOIN release r ON r.id = tr.release_id
            CROSS JOIN (VALUES ('manifest.json'), ('SHA256SUMS'), ('ids.txt'), ('removed.txt'), ('README.md')) f(name)
            WHERE tr.action = 'patched'""", **p)
        _run(conn, "release_version", """
            WITH total AS (SELECT release_id, count(*) AS k FROM release_member GROUP BY release_id),
            removed AS MATERIALIZED (SELECT release_id, removed_in_version AS v, count(*) AS k FROM release_member
                        WHERE removed_in_version IS NOT NULL GROUP BY release_id, removed_in_version)
            INSERT INTO release_version (release_id, version, manifest_key, manifest_sha256, samples, takedown_id, created_at)
            SELECT r.id, v, 'releases/' || r.name || '/manifest.json', md5(r.name || v) || md5(v || r.name),
                t.k - COALESCE((SELECT sum(x.k) FROM removed x WHERE x.release_id = r.id AND x.v <= g.v), 0),
                CASE WHEN v = 1 THEN NULL WHEN v = :last THEN :t + 1 ELSE (v - 2) * :batch + 1 END,
                r.published_at + v * interval '1 hour'
            FROM release r JOIN total t ON t.release_id = r.id CROSS JOIN LATERAL generate_series(1, r.version) g(v)""", **p)
        conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('blocklist', 'id'), (SELECT max(id) FROM blocklist))"))
        conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('sample_event', 'id'), (SELECT max(id) FROM sample_event))"))
    t0 = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    _say(f"  {'VACUUM ANALYZE':<58} {'':>15} {time.perf_counter() - t0:7.1f} s")


def _pick(conn: sa.Connection, n: int, requests: int) -> dict[str, Any]:
    """Real values to filter by: a sample a takedown removed from the releases, one still in them
    (its sha256, URL and TaiSu id too), a text-rejected one, one request and the domain request."""
    def one(sql: str) -> Any:
        return conn.execute(sa.text(sql), {"n": n, "t": requests}).one()

    (removed,) = one("SELECT s.url_id FROM takedown_match m JOIN sample s ON s.id = m.sample_id WHERE m.takedown_id = :t / 2")
    kept = one("SELECT s.url_id, s.sha256, s.url, s.taisu_id FROM release_member m JOIN sample s ON s.id = m.sample_id "
               "WHERE m.release_id = 2 AND m.sample_id > :n / 2 AND m.removed_in_version IS NULL AND s.taisu_id IS NOT NULL "
               "ORDER BY m.sample_id LIMIT 1")
    (rejected,) = one("SELECT url_id FROM sample WHERE id = :n / 20 * 10 + 10")
    return {
        "removed": removed, "kept": kept.url_id, "sha256": kept.sha256, "url": kept.url, "taisu_id": kept.taisu_id,
        "rejected": rejected, "request": requests // 2, "domain_request": requests + 1, "release": RELEASES[1][1],
    }


# (label, query): each filtered as an operator filters it; parameters from _pick.
QUERIES = [
    ("lineage by url_id", "SELECT * FROM v_sample_lineage WHERE url_id = :removed ORDER BY event_id"),
    ("lineage by sha256", "SELECT * FROM v_sample_lineage WHERE sha256 = :sha256 ORDER BY event_id"),
    ("why not in release (name + url_id): removed by a takedown",
     "SELECT * FROM v_release_exclusion WHERE release_name = :release AND url_id = :removed"),
    ("why not in release (name + url_id): rejected", "SELECT * FROM v_release_exclusion WHERE release_name = :release AND url_id = :rejected"),
    ("why not in any release (url_id)", "SELECT * FROM v_release_exclusion WHERE url_id = :kept"),
    ("image releases by url_id", "SELECT * FROM v_image_releases WHERE url_id = :removed ORDER BY release_name, version"),
    ("image releases by URL (its url_id computed in SQL)",
     "SELECT * FROM v_image_releases WHERE url_id = left(encode(sha256(convert_to(:url, 'UTF8')), 'hex'), 32) ORDER BY release_name, version"),
    ("image releases by sha256", "SELECT * FROM v_image_releases WHERE sha256 = :sha256 ORDER BY release_name, version"),
    ("image releases by taisu_id", "SELECT * FROM v_image_releases WHERE taisu_id = :taisu_id ORDER BY release_name, version"),
    ("audit summary of one request", "SELECT * FROM v_takedown_audit WHERE takedown_id = :request"),
    ("audit summary of the domain request", "SELECT * FROM v_takedown_audit WHERE takedown_id = :domain_request"),
    ("audit summary, latest 50 requests", "SELECT * FROM v_takedown_audit ORDER BY received_at DESC LIMIT 50"),
    ("audit trail of one request", "SELECT * FROM v_takedown_events WHERE takedown_id = :request ORDER BY step, happened_at"),
    ("audit trail of the domain request", "SELECT * FROM v_takedown_events WHERE takedown_id = :domain_request ORDER BY step, happened_at"),
]


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out += _nodes(child)
    return out


def check_plans(conn: sa.Connection, params: dict[str, Any], runs: int) -> list[str]:
    """EXPLAIN and time every query; returns the problems (sequential scans of the big tables, no rows)."""
    problems = []
    _say(f"\n{'query':<62} {'rows':>6} {'median ms':>10} {'max ms':>8}  indexes used")
    for label, sql in QUERIES:
        used = {k: v for k, v in params.items() if f":{k}" in sql}
        plan = conn.execute(sa.text(f"EXPLAIN (FORMAT JSON) {sql}"), used).scalar_one()
        plan = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
        nodes = _nodes(plan)
        seq = sorted({n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in NO_SEQ_SCAN})
        indexes = sorted({n["Index Name"] for n in nodes if "Index Name" in n})
        times = []
        rows = 0
        for _ in range(runs):
            t0 = time.perf_counter()
            rows = len(conn.execute(sa.text(sql), used).all())
            times.append((time.perf_counter() - t0) * 1000)
        _say(f"{label:<62} {rows:>6} {statistics.median(times):>10.1f} {max(times):>8.1f}  {', '.join(indexes)}")
        if seq:
            problems.append(f"{label}: sequential scan of {', '.join(seq)}")
        if rows == 0:
            problems.append(f"{label}: no rows (the bench picked a value the ledger lacks)")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db-url", default=os.environ.get("TAISU_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/taisu_bench_provenance"))
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=7, help="timed runs of each query")
    ap.add_argument("--rebuild", action="store_true", help="build the ledger again even if the database holds one")
    args = ap.parse_args()
    if args.samples < 100_000 or args.samples % 10:
        ap.error("--samples must be a multiple of 10 and at least 100000 (the takedown requests pick samples among n/10)")
    if args.requests >= args.samples // 10:
        ap.error("--requests must be below samples / 10")
    url = sa.engine.make_url(args.db_url)
    marker = _marker(args.samples, args.requests)
    engine = make_engine(args.db_url)
    if args.rebuild or _existing_marker(url) != marker:
        _say(f"building a {args.samples:,}-sample ledger in {url.render_as_string(hide_password=True)}")
        t0 = time.perf_counter()
        _recreate(url)
        upgrade(engine)
        build(engine, args.samples, args.requests)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"COMMENT ON DATABASE \"{url.database}\" IS '{marker}'")
        _say(f"built in {time.perf_counter() - t0:.0f} s")
    else:
        upgrade(engine)  # a ledger built before a migration gets its views
        _say(f"reusing {url.render_as_string(hide_password=True)} ({marker}); --rebuild builds it again")
    with engine.connect() as conn:
        counts = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
                  for t in ("sample", "sample_event", "release_member", "release_version", "takedown_request", "takedown_match",
                            "takedown_object", "blocklist")}
        _say("ledger: " + ", ".join(f"{t} {c:,}" for t, c in counts.items()))
        _say(f"server: PostgreSQL {'.'.join(map(str, engine.dialect.server_version_info or ()))}")
        params = _pick(conn, args.samples, args.requests)
        problems = check_plans(conn, params, args.runs)
    engine.dispose()
    _say(f"\nreproduce: .venv/bin/python bench/provenance.py --db-url {url.render_as_string(hide_password=True)} "
         f"--samples {args.samples} --requests {args.requests} --runs {args.runs}")
    if problems:
        _say("PLAN PROBLEMS:\n  " + "\n  ".join(problems))
        return 1
    _say(f"every plan uses indexes (no sequential scan of {', '.join(sorted(NO_SEQ_SCAN))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
