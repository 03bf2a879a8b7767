"""Provenance views, in SQL that runs unchanged on SQLite and Postgres.

Migrations create them; `sql/002_views.sql` holds the same text for people reading the schema.
"""

from __future__ import annotations

REJECTED_STATES = (
    "text_rejected", "fetch_failed", "expired", "image_rejected", "duplicate", "score_rejected", "taken_down",
)
_rejected = ", ".join(f"'{s}'" for s in REJECTED_STATES)

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
    # Every decision about every sample, with the Airflow task that made it.
    "v_sample_lineage": (
        "SELECT e.sample_id, s.url_id, s.url, s.caption, e.created_at, e.stage, e.from_state, e.to_state, "
        "e.reason, e.details, e.dag_id, e.run_id, e.task_id, e.map_index, e.try_number, e.worker, "
        "e.recipe_version FROM sample_event e JOIN sample s ON s.id = e.sample_id"
    ),
    # Which sample went into which shard of which release.
    "v_release_contents": (
        "SELECT r.name AS release_name, r.state AS release_state, m.shard, s.id AS sample_id, s.url_id, "
        "s.url, s.sha256, s.object_key FROM release_member m JOIN release r ON r.id = m.release_id "
        "JOIN sample s ON s.id = m.sample_id"
    ),
    # Each takedown request and how many blocklist entries it produced.
    "v_takedown_audit": (
        "SELECT t.id AS takedown_id, t.received_at, t.requester, t.kind, t.value, t.status, t.processed_at, "
        "COUNT(b.id) AS blocklist_entries FROM takedown_request t LEFT JOIN blocklist b ON b.takedown_id = t.id "
        "GROUP BY t.id, t.received_at, t.requester, t.kind, t.value, t.status, t.processed_at"
    ),
}
