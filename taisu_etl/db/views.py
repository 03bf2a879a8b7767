"""Provenance views, in SQL that runs unchanged on SQLite and Postgres, and the read-only role.

Migrations create them (`install`); `sql/002_views.sql` holds the same text for people reading
the schema, and `sql/003_example_queries.sql` shows the questions each one answers. Every view is
written so that the filter an operator adds (a sample's url_id, sha256 or id, a release name, a
request id) reaches an index on Postgres: joins on keys and correlated subqueries on indexed
columns, no aggregate over a whole table before the filter applies. `bench/provenance.py` checks
the plans on a 1M-sample ledger.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

REJECTED_STATES = (
    "text_rejected", "fetch_failed", "expired", "image_rejected", "duplicate", "score_rejected", "taken_down",
)
_rejected = ", ".join(f"'{s}'" for s in REJECTED_STATES)

# The Postgres role that may read the views and nothing else (see `reader_grants`).
READER_ROLE = "taisu_reader"

# The sample's current membership of release r (joined as m): published and not removed by a patch.
_IN_RELEASE = "r.state = 'published' AND m.sample_id IS NOT NULL AND m.removed_in_version IS NULL"

# Typed NULLs: a UNION ALL branch that has no value for a column must still give Postgres its type.
_NO_ID, _NO_INT, _NO_TEXT = "CAST(NULL AS BIGINT)", "CAST(NULL AS INTEGER)", "CAST(NULL AS TEXT)"

VIEWS: dict[str, str] = {
    # How many samples are in each state right now.
    "v_funnel": "SELECT state, COUNT(*) AS samples FROM sample_state GROUP BY state",
    # How many samples each rule rejected (their current state and the reason that put them there).
    "v_rejections": (
        "SELECT state, last_reason AS reason, COUNT(*) AS samples FROM sample_state "
        f"WHERE state IN ({_rejected}) GROUP BY state, last_reason"
    ),
    # Rows of source files that never became samples, per file and reason.
    "v_ingest_issues": "SELECT source, reason, COUNT(*) AS rows_lost FROM ingest_issue GROUP BY source, reason",
    # Every decision about every sample, one row per event, with the Airflow task try that made it
    # (dag, run, task, map index, try), the event's details (model ids, ranks, HTTP status, the
    # takedown request) and the sample's provenance, current state, score and models. Filter by
    # url_id, sha256 or sample_id; order by event_id. The first 17 columns are the original view's.
    "v_sample_lineage": (
        "SELECT e.sample_id, s.url_id, s.url, s.caption, e.created_at, e.stage, e.from_state, e.to_state, "
        "e.reason, e.details, e.dag_id, e.run_id, e.task_id, e.map_index, e.try_number, e.worker, "
        "e.recipe_version, e.id AS event_id, s.taisu_id, s.source, s.source_pos, s.sha256, s.phash, s.object_key, "
        "s.duplicate_of, st.state AS current_state, st.last_reason AS current_reason, s.score, s.score_model, "
        "s.gen_caption, s.gen_caption_model "
        "FROM sample_event e JOIN sample s ON s.id = e.sample_id LEFT JOIN sample_state st ON st.sample_id = e.sample_id"
    ),
    # "Why is this image not in release X?": one row per (release, sample), so always filter by the
    # sample (url_id, sha256 or sample_id) and usually by release_name. `why` is the answer in
    # words; the other columns are the evidence: the sample's state and the event that put it
    # there (with its Airflow task try), its membership (shard, removed_in_version and the request
    # that removed it), the blocklist entry that stops it and the request that took it down.
    "v_release_exclusion": (
        "SELECT r.name AS release_name, r.version, r.state AS release_state, s.id AS sample_id, s.url_id, s.url, s.sha256, "
        f"({_IN_RELEASE}) AS in_release, "
        "CASE "
        f"WHEN {_IN_RELEASE} THEN 'in the release' "
        "WHEN m.removed_in_version IS NOT NULL THEN 'removed in version ' || m.removed_in_version "
        "|| COALESCE(' by takedown request ' || rv.takedown_id, '') "
        "WHEN m.sample_id IS NOT NULL THEN 'a member, but the release is ' || r.state "
        "WHEN st.state = 'taken_down' THEN 'taken down' "
        "WHEN bu.id IS NOT NULL OR bs.id IS NOT NULL OR bp.id IS NOT NULL THEN 'blocklisted' "
        "WHEN st.state NOT IN ('accepted', 'captioned') THEN 'not eligible: ' || st.state || COALESCE(' (' || st.last_reason || ')', '') "
        "WHEN le.created_at > r.created_at THEN 'became eligible after the release was built' "
        "ELSE 'eligible, but not selected by the release''s options' END AS why, "
        "st.state, st.last_reason, le.stage AS last_stage, le.created_at AS last_event_at, le.dag_id AS last_dag_id, "
        "le.run_id AS last_run_id, le.task_id AS last_task_id, le.map_index AS last_map_index, "
        "le.try_number AS last_try_number, le.details AS last_details, "
        "m.shard, m.removed_in_version, rv.takedown_id AS removed_by_takedown_id, "
        "COALESCE(bu.kind, bs.kind, bp.kind) AS blocklisted_as, "
        "COALESCE(bu.takedown_id, bs.takedown_id, bp.takedown_id) AS blocklisted_by_takedown_id, "
        "(SELECT MIN(tm.takedown_id) FROM takedown_match tm WHERE tm.sample_id = s.id) AS taken_down_by_takedown_id, "
        "s.score, s.score_model, r.id AS release_id "
        "FROM release r CROSS JOIN sample s "
        "LEFT JOIN sample_state st ON st.sample_id = s.id "
        "LEFT JOIN release_member m ON m.release_id = r.id AND m.sample_id = s.id "
        "LEFT JOIN release_version rv ON rv.release_id = m.release_id AND rv.version = m.removed_in_version "
        "LEFT JOIN blocklist bu ON bu.kind = 'url' AND bu.value = s.url "
        "LEFT JOIN blocklist bs ON bs.kind = 'sha256' AND bs.value = s.sha256 "
        "LEFT JOIN blocklist bp ON bp.kind = 'phash' AND bp.value = s.phash "
        # The decision that put the sample in its current state (a recheck records an event but keeps
        # the state and reason, so it is not the answer).
        "LEFT JOIN sample_event le ON le.id = (SELECT MAX(e.id) FROM sample_event e "
        "WHERE e.sample_id = s.id AND e.to_state = st.state AND e.reason = st.last_reason)"
    ),
    # Every published version of every release that contained a sample (members of version v:
    # removed_in_version NULL or > v), withdrawn releases included. Filter by url_id, sha256,
    # taisu_id or sample_id.
    "v_image_releases": (
        "SELECT r.name AS release_name, r.state AS release_state, v.version, m.shard, s.id AS sample_id, s.url_id, s.url, "
        "s.sha256, m.removed_in_version, (r.state = 'published' AND v.version = r.version) AS current_version, "
        "v.created_at AS version_created_at, v.manifest_key, v.takedown_id AS version_takedown_id, s.taisu_id, "
        "r.id AS release_id "
        "FROM release_member m JOIN release r ON r.id = m.release_id "
        "JOIN release_version v ON v.release_id = m.release_id AND (m.removed_in_version IS NULL OR v.version < m.removed_in_version) "
        "JOIN sample s ON s.id = m.sample_id"
    ),
    # Which sample is in which shard of each release now: the members of its current version
    # (withdrawn releases hold nothing; v_image_releases keeps their history).
    "v_release_contents": (
        "SELECT r.name AS release_name, r.state AS release_state, m.shard, s.id AS sample_id, s.url_id, "
        "s.url, s.sha256, s.object_key, r.version, r.id AS release_id FROM release_member m "
        "JOIN release r ON r.id = m.release_id JOIN sample s ON s.id = m.sample_id "
        "WHERE m.removed_in_version IS NULL AND r.state <> 'withdrawn'"
    ),
    # One row per takedown request: who asked for what, its status and times, and what it did
    # (samples matched, blocklist entries, objects deleted and their versions, what the
    # verification found, releases patched or withdrawn). `objects_left_behind` counts objects whose
    # verification found more versions than the action leaves (0 deleted, 1 rewritten): it must be 0.
    "v_takedown_audit": (
        "SELECT t.id AS takedown_id, t.received_at, t.requester, t.kind, t.value, t.status, t.processed_at, "
        "(SELECT COUNT(*) FROM blocklist b WHERE b.takedown_id = t.id) AS blocklist_entries, "
        "t.contact, t.reason, t.reference, t.channel, t.status_detail, t.matched_at, t.verified_at, "
        "(SELECT COUNT(*) FROM takedown_match tm WHERE tm.takedown_id = t.id) AS samples_matched, "
        "(SELECT COUNT(*) FROM takedown_object o WHERE o.takedown_id = t.id) AS objects, "
        "(SELECT COALESCE(SUM(o.versions_deleted), 0) FROM takedown_object o WHERE o.takedown_id = t.id) AS object_versions_deleted, "
        "(SELECT COUNT(*) FROM takedown_object o WHERE o.takedown_id = t.id AND o.verified_at IS NOT NULL) AS objects_verified, "
        "(SELECT COUNT(*) FROM takedown_object o WHERE o.takedown_id = t.id "
        "AND o.versions_left > CASE WHEN o.action = 'rewritten' THEN 1 ELSE 0 END) AS objects_left_behind, "
        "(SELECT COUNT(*) FROM takedown_release tr WHERE tr.takedown_id = t.id AND tr.action = 'patched') AS releases_patched, "
        "(SELECT COUNT(*) FROM takedown_release tr WHERE tr.takedown_id = t.id AND tr.action = 'withdrawn') AS releases_withdrawn "
        "FROM takedown_request t"
    ),
    # The audit trail of takedowns, one row per fact, for `WHERE takedown_id = N ORDER BY step,
    # happened_at`. Facts, by step (the order processing goes through): 1 received, 2 matched,
    # 3 sample_matched (how, distance), 4 blocklisted (kind value), 5 sample_taken_down (the event
    # and its Airflow task), 6 object_deleted / object_rewritten (versions deleted),
    # 7 release_patched / release_withdrawn (versions, samples, shards), 8 processed / rejected,
    # 9 object_verified (versions left), 10 verified. `amount` is the fact's number: distance,
    # versions deleted or left, samples removed. (Order by step first: SQLite keeps server-set
    # times to the second, so happened_at alone ties within one run.)
    "v_takedown_events": " UNION ALL ".join([
        "SELECT t.id AS takedown_id, t.received_at AS happened_at, 'received' AS fact, 1 AS step, "
        f"{_NO_ID} AS sample_id, {_NO_TEXT} AS url_id, t.kind || ' ' || t.value AS subject, "
        "'from ' || t.requester || COALESCE(' <' || t.contact || '>', '') || COALESCE(', reference ' || t.reference, '') "
        "|| COALESCE(', via ' || t.channel, '') || COALESCE(': ' || t.reason, '') AS detail, "
        f"{_NO_INT} AS amount, {_NO_TEXT} AS dag_id, {_NO_TEXT} AS run_id, {_NO_TEXT} AS task_id FROM takedown_request t",
        "SELECT t.id, t.matched_at, 'matched', 2, "
        f"{_NO_ID}, {_NO_TEXT}, t.kind || ' ' || t.value, {_NO_TEXT}, {_NO_INT}, {_NO_TEXT}, {_NO_TEXT}, {_NO_TEXT} "
        "FROM takedown_request t WHERE t.matched_at IS NOT NULL",
        "SELECT t.id, COALESCE(t.processed_at, t.matched_at, t.received_at), "
        "CASE WHEN t.status = 'rejected' THEN 'rejected' ELSE 'processed' END, 8, "
        f"{_NO_ID}, {_NO_TEXT}, t.kind || ' ' || t.value, t.status_detail, {_NO_INT}, {_NO_TEXT}, {_NO_TEXT}, {_NO_TEXT} "
        "FROM takedown_request t WHERE t.processed_at IS NOT NULL OR t.status = 'rejected'",
        "SELECT t.id, t.verified_at, 'verified', 10, "
        f"{_NO_ID}, {_NO_TEXT}, t.kind || ' ' || t.value, t.status_detail, {_NO_INT}, {_NO_TEXT}, {_NO_TEXT}, {_NO_TEXT} "
        "FROM takedown_request t WHERE t.verified_at IS NOT NULL",
        "SELECT tm.takedown_id, tm.matched_at, 'sample_matched', 3, tm.sample_id, s.url_id, s.url, "
        f"'by ' || tm.how || COALESCE(' at distance ' || tm.distance, ''), tm.distance, {_NO_TEXT}, {_NO_TEXT}, {_NO_TEXT} "
        "FROM takedown_match tm JOIN sample s ON s.id = tm.sample_id",
        "SELECT tm.takedown_id, e.created_at, 'sample_taken_down', 5, e.sample_id, s.url_id, s.url, "
        f"e.from_state || ' -> ' || e.to_state, {_NO_INT}, e.dag_id, e.run_id, e.task_id "
        "FROM takedown_match tm JOIN sample_event e ON e.sample_id = tm.sample_id AND e.stage = 'takedown' "
        "JOIN sample s ON s.id = tm.sample_id",
        "SELECT b.takedown_id, b.created_at, 'blocklisted', 4, b.sample_id, s.url_id, b.kind || ' ' || b.value, "
        f"{_NO_TEXT}, {_NO_INT}, {_NO_TEXT}, {_NO_TEXT}, {_NO_TEXT} "
        "FROM blocklist b LEFT JOIN sample s ON s.id = b.sample_id WHERE b.takedown_id IS NOT NULL",
        "SELECT o.takedown_id, o.deleted_at, 'object_' || o.action, 6, "
        f"{_NO_ID}, {_NO_TEXT}, o.object_key, o.kind || ': ' || o.versions_deleted || ' versions deleted', o.versions_deleted, "
        f"{_NO_TEXT}, {_NO_TEXT}, {_NO_TEXT} FROM takedown_object o",
        "SELECT o.takedown_id, o.verified_at, 'object_verified', 9, "
        f"{_NO_ID}, {_NO_TEXT}, o.object_key, o.kind || ': ' || COALESCE(CAST(o.versions_left AS TEXT), '?') || ' versions left', "
        f"o.versions_left, {_NO_TEXT}, {_NO_TEXT}, {_NO_TEXT} FROM takedown_object o WHERE o.verified_at IS NOT NULL",
        "SELECT tr.takedown_id, tr.created_at, 'release_' || tr.action, 7, "
        f"{_NO_ID}, {_NO_TEXT}, r.name, 'version ' || tr.from_version || COALESCE(' -> ' || tr.to_version, '') || ': ' "
        "|| tr.samples_removed || ' samples removed, ' || tr.shards_rewritten || ' shards rewritten', tr.samples_removed, "
        f"{_NO_TEXT}, {_NO_TEXT}, {_NO_TEXT} FROM takedown_release tr JOIN release r ON r.id = tr.release_id",
    ]),
}


def reader_grants() -> str:
    """Postgres: create the read-only role if it is missing and let it read the views (only).

    Roles belong to the cluster and grants to each database, so this runs once per ledger
    database and is idempotent. A migrating user without CREATEROLE (a managed service, a ledger
    owner without admin rights) gets a NOTICE and the migration goes on: once an administrator
    has created the role, the ledger's owner grants it with
    `python -m taisu_etl.db.views grants | psql LEDGER_URL` (this same block). The role logs
    in without a password where pg_hba.conf trusts the host (these machines); in production set
    one: ALTER ROLE taisu_reader PASSWORD '...'. Views run with their owner's rights, so SELECT on
    a view needs nothing on the tables it reads, and the role gets nothing on them.
    """
    role = READER_ROLE
    names = ", ".join(VIEWS)
    return (
        "DO $$\nBEGIN\n"
        f"    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN\n"
        "        BEGIN\n"
        f"            CREATE ROLE {role} LOGIN;\n"
        "        EXCEPTION\n"
        "            WHEN insufficient_privilege THEN\n"
        f"                RAISE NOTICE 'role {role} not created: % lacks CREATEROLE; ask an administrator to run "
        f"CREATE ROLE {role} LOGIN, then run: python -m taisu_etl.db.views grants | psql LEDGER_URL', current_user;\n"
        "            WHEN duplicate_object OR unique_violation THEN\n"
        "                NULL;  -- another database's migration created it at the same moment\n"
        "        END;\n"
        "    END IF;\n"
        f"    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN\n"
        "        BEGIN\n"
        f"            EXECUTE format('GRANT CONNECT ON DATABASE %I TO {role}', current_database());\n"
        "        EXCEPTION\n"
        "            WHEN insufficient_privilege THEN\n"
        f"                RAISE NOTICE 'could not grant {role} CONNECT on database %: its owner must', current_database();\n"
        "        END;\n"
        "        BEGIN\n"
        f"            EXECUTE format('GRANT USAGE ON SCHEMA %I TO {role}', current_schema());\n"
        "        EXCEPTION\n"
        "            WHEN insufficient_privilege THEN\n"
        f"                RAISE NOTICE 'could not grant {role} USAGE on schema %: its owner must', current_schema();\n"
        "        END;\n"
        f"        GRANT SELECT ON {names} TO {role};\n"
        "    END IF;\n"
        "END $$"
    )


def install(op: Any) -> None:
    """Create every view, and on Postgres the read-only role's grants (called by the migration
    that last changed the views)."""
    for name, select in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {select}")
    if op.get_context().dialect.name == "postgresql":
        op.execute(reader_grants())


def uninstall(op: Any, names: Iterable[str] | None = None) -> None:
    """Drop the views (by default every current one), newest first. Their grants go with them; the
    role stays, since other ledger databases of the cluster may use it."""
    for name in reversed(list(VIEWS if names is None else names)):
        op.execute(f"DROP VIEW IF EXISTS {name}")


def render_sql() -> str:
    """The text of `sql/002_views.sql`: every view, then the Postgres grants of the reader role."""
    head = (
        "-- Provenance views (created by the migrations; the text lives in taisu_etl/db/views.py).\n"
        "-- They run unchanged on SQLite and Postgres. Regenerate: python -m taisu_etl.db.views > sql/002_views.sql\n"
    )
    body = "".join(f"\nCREATE VIEW {name} AS\n{select};\n" for name, select in VIEWS.items())
    role = f"\n-- Postgres only: the read-only role {READER_ROLE} (the views and nothing else).\n{reader_grants()};\n"
    return head + body + role


if __name__ == "__main__":
    import sys

    # `grants`: only the reader role's block, for a database migrated before the role existed.
    sys.stdout.write(reader_grants() + ";\n" if sys.argv[1:] == ["grants"] else render_sql())
