-- Provenance views (created by the migrations; the text lives in taisu_etl/db/views.py).
-- They run unchanged on SQLite and Postgres.

CREATE VIEW v_funnel AS
SELECT state, COUNT(*) AS samples FROM sample_state GROUP BY state;

CREATE VIEW v_rejections AS
SELECT state, last_reason AS reason, COUNT(*) AS samples FROM sample_state WHERE state IN ('text_rejected', 'fetch_failed', 'expired', 'image_rejected', 'duplicate', 'score_rejected', 'taken_down') GROUP BY state, last_reason;

CREATE VIEW v_ingest_issues AS
SELECT source, reason, COUNT(*) AS rows_lost FROM ingest_issue GROUP BY source, reason;

CREATE VIEW v_sample_lineage AS
SELECT e.sample_id, s.url_id, s.url, s.caption, e.created_at, e.stage, e.from_state, e.to_state, e.reason, e.details, e.dag_id, e.run_id, e.task_id, e.map_index, e.try_number, e.worker, e.recipe_version FROM sample_event e JOIN sample s ON s.id = e.sample_id;

CREATE VIEW v_release_contents AS
SELECT r.name AS release_name, r.state AS release_state, m.shard, s.id AS sample_id, s.url_id, s.url, s.sha256, s.object_key FROM release_member m JOIN release r ON r.id = m.release_id JOIN sample s ON s.id = m.sample_id;

CREATE VIEW v_takedown_audit AS
SELECT t.id AS takedown_id, t.received_at, t.requester, t.kind, t.value, t.status, t.processed_at, COUNT(b.id) AS blocklist_entries FROM takedown_request t LEFT JOIN blocklist b ON b.takedown_id = t.id GROUP BY t.id, t.received_at, t.requester, t.kind, t.value, t.status, t.processed_at;
