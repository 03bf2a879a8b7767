-- Provenance views (created by the migrations; the text lives in taisu_etl/db/views.py).
-- They run unchanged on SQLite and Postgres. Regenerate: python -m taisu_etl.db.views > sql/002_views.sql

CREATE VIEW v_funnel AS
SELECT state, COUNT(*) AS samples FROM sample_state GROUP BY state;

CREATE VIEW v_rejections AS
SELECT state, last_reason AS reason, COUNT(*) AS samples FROM sample_state WHERE state IN ('text_rejected', 'fetch_failed', 'expired', 'image_rejected', 'duplicate', 'score_rejected', 'taken_down') GROUP BY state, last_reason;

CREATE VIEW v_ingest_issues AS
SELECT source, reason, COUNT(*) AS rows_lost FROM ingest_issue GROUP BY source, reason;

CREATE VIEW v_sample_lineage AS
SELECT e.sample_id, s.url_id, s.url, s.caption, e.created_at, e.stage, e.from_state, e.to_state, e.reason, e.details, e.dag_id, e.run_id, e.task_id, e.map_index, e.try_number, e.worker, e.recipe_version, e.id AS event_id, s.taisu_id, s.source, s.source_pos, s.sha256, s.phash, s.object_key, s.duplicate_of, st.state AS current_state, st.last_reason AS current_reason, s.score, s.score_model, s.gen_caption, s.gen_caption_model FROM sample_event e JOIN sample s ON s.id = e.sample_id LEFT JOIN sample_state st ON st.sample_id = e.sample_id;

CREATE VIEW v_release_exclusion AS
SELECT r.name AS release_name, r.version, r.state AS release_state, s.id AS sample_id, s.url_id, s.url, s.sha256, (r.state = 'published' AND m.sample_id IS NOT NULL AND m.removed_in_version IS NULL) AS in_release, CASE WHEN r.state = 'published' AND m.sample_id IS NOT NULL AND m.removed_in_version IS NULL THEN 'in the release' WHEN m.removed_in_version IS NOT NULL THEN 'removed in version ' || m.removed_in_version || COALESCE(' by takedown request ' || rv.takedown_id, '') WHEN m.sample_id IS NOT NULL THEN 'a member, but the release is ' || r.state WHEN st.state = 'taken_down' THEN 'taken down' WHEN bu.id IS NOT NULL OR bs.id IS NOT NULL OR bp.id IS NOT NULL THEN 'blocklisted' WHEN st.state NOT IN ('accepted', 'captioned') THEN 'not eligible: ' || st.state || COALESCE(' (' || st.last_reason || ')', '') WHEN le.created_at > r.created_at THEN 'became eligible after the release was built' ELSE 'eligible, but not selected by the release''s options' END AS why, st.state, st.last_reason, le.stage AS last_stage, le.created_at AS last_event_at, le.dag_id AS last_dag_id, le.run_id AS last_run_id, le.task_id AS last_task_id, le.map_index AS last_map_index, le.try_number AS last_try_number, le.details AS last_details, m.shard, m.removed_in_version, rv.takedown_id AS removed_by_takedown_id, COALESCE(bu.kind, bs.kind, bp.kind) AS blocklisted_as, COALESCE(bu.takedown_id, bs.takedown_id, bp.takedown_id) AS blocklisted_by_takedown_id, (SELECT MIN(tm.takedown_id) FROM takedown_match tm WHERE tm.sample_id = s.id) AS taken_down_by_takedown_id, s.score, s.score_model, r.id AS release_id FROM release r CROSS JOIN sample s LEFT JOIN sample_state st ON st.sample_id = s.id LEFT JOIN release_member m ON m.release_id = r.id AND m.sample_id = s.id LEFT JOIN release_version rv ON rv.release_id = m.release_id AND rv.version = m.removed_in_version LEFT JOIN blocklist bu ON bu.kind = 'url' AND bu.value = s.url LEFT JOIN blocklist bs ON bs.kind = 'sha256' AND bs.value = s.sha256 LEFT JOIN blocklist bp ON bp.kind = 'phash' AND bp.value = s.phash LEFT JOIN sample_event le ON le.id = (SELECT MAX(e.id) FROM sample_event e WHERE e.sample_id = s.id AND e.to_state = st.state AND e.reason = st.last_reason);

CREATE VIEW v_image_releases AS
SELECT r.name AS release_name, r.state AS release_state, v.version, m.shard, s.id AS sample_id, s.url_id, s.url, s.sha256, m.removed_in_version, (r.state = 'published' AND v.version = r.version) AS current_version, v.created_at AS version_created_at, v.manifest_key, v.takedown_id AS version_takedown_id, s.taisu_id, r.id AS release_id FROM release_member m JOIN release r ON r.id = m.release_id JOIN release_version v ON v.release_id = m.release_id AND (m.removed_in_version IS NULL OR v.version < m.removed_in_version) JOIN sample s ON s.id = m.sample_id;

CREATE VIEW v_release_contents AS
SELECT r.name AS release_name, r.state AS release_state, m.shard, s.id AS sample_id, s.url_id, s.url, s.sha256, s.object_key, r.version, r.id AS release_id FROM release_member m JOIN release r ON r.id = m.release_id JOIN sample s ON s.id = m.sample_id WHERE m.removed_in_version IS NULL AND r.state <> 'withdrawn';

CREATE VIEW v_takedown_audit AS
SELECT t.id AS takedown_id, t.received_at, t.requester, t.kind, t.value, t.status, t.processed_at, (SELECT COUNT(*) FROM blocklist b WHERE b.takedown_id = t.id) AS blocklist_entries, t.contact, t.reason, t.reference, t.channel, t.status_detail, t.matched_at, t.verified_at, (SELECT COUNT(*) FROM takedown_match tm WHERE tm.takedown_id = t.id) AS samples_matched, (SELECT COUNT(*) FROM takedown_object o WHERE o.takedown_id = t.id) AS objects, (SELECT COALESCE(SUM(o.versions_deleted), 0) FROM takedown_object o WHERE o.takedown_id = t.id) AS object_versions_deleted, (SELECT COUNT(*) FROM takedown_object o WHERE o.takedown_id = t.id AND o.verified_at IS NOT NULL) AS objects_verified, (SELECT COUNT(*) FROM takedown_object o WHERE o.takedown_id = t.id AND o.versions_left > CASE WHEN o.action = 'rewritten' THEN 1 ELSE 0 END) AS objects_left_behind, (SELECT COUNT(*) FROM takedown_release tr WHERE tr.takedown_id = t.id AND tr.action = 'patched') AS releases_patched, (SELECT COUNT(*) FROM takedown_release tr WHERE tr.takedown_id = t.id AND tr.action = 'withdrawn') AS releases_withdrawn FROM takedown_request t;

CREATE VIEW v_takedown_events AS
SELECT t.id AS takedown_id, t.received_at AS happened_at, 'received' AS fact, 1 AS step, CAST(NULL AS BIGINT) AS sample_id, CAST(NULL AS TEXT) AS url_id, t.kind || ' ' || t.value AS subject, 'from ' || t.requester || COALESCE(' <' || t.contact || '>', '') || COALESCE(', reference ' || t.reference, '') || COALESCE(', via ' || t.channel, '') || COALESCE(': ' || t.reason, '') AS detail, CAST(NULL AS INTEGER) AS amount, CAST(NULL AS TEXT) AS dag_id, CAST(NULL AS TEXT) AS run_id, CAST(NULL AS TEXT) AS task_id FROM takedown_request t UNION ALL SELECT t.id, t.matched_at, 'matched', 2, CAST(NULL AS BIGINT), CAST(NULL AS TEXT), t.kind || ' ' || t.value, CAST(NULL AS TEXT), CAST(NULL AS INTEGER), CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM takedown_request t WHERE t.matched_at IS NOT NULL UNION ALL SELECT t.id, COALESCE(t.processed_at, t.matched_at, t.received_at), CASE WHEN t.status = 'rejected' THEN 'rejected' ELSE 'processed' END, 8, CAST(NULL AS BIGINT), CAST(NULL AS TEXT), t.kind || ' ' || t.value, t.status_detail, CAST(NULL AS INTEGER), CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM takedown_request t WHERE t.processed_at IS NOT NULL OR t.status = 'rejected' UNION ALL SELECT t.id, t.verified_at, 'verified', 10, CAST(NULL AS BIGINT), CAST(NULL AS TEXT), t.kind || ' ' || t.value, t.status_detail, CAST(NULL AS INTEGER), CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM takedown_request t WHERE t.verified_at IS NOT NULL UNION ALL SELECT tm.takedown_id, tm.matched_at, 'sample_matched', 3, tm.sample_id, s.url_id, s.url, 'by ' || tm.how || COALESCE(' at distance ' || tm.distance, ''), tm.distance, CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM takedown_match tm JOIN sample s ON s.id = tm.sample_id UNION ALL SELECT tm.takedown_id, e.created_at, 'sample_taken_down', 5, e.sample_id, s.url_id, s.url, e.from_state || ' -> ' || e.to_state, CAST(NULL AS INTEGER), e.dag_id, e.run_id, e.task_id FROM takedown_match tm JOIN sample_event e ON e.sample_id = tm.sample_id AND e.stage = 'takedown' JOIN sample s ON s.id = tm.sample_id UNION ALL SELECT b.takedown_id, b.created_at, 'blocklisted', 4, b.sample_id, s.url_id, b.kind || ' ' || b.value, CAST(NULL AS TEXT), CAST(NULL AS INTEGER), CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM blocklist b LEFT JOIN sample s ON s.id = b.sample_id WHERE b.takedown_id IS NOT NULL UNION ALL SELECT o.takedown_id, o.deleted_at, 'object_' || o.action, 6, CAST(NULL AS BIGINT), CAST(NULL AS TEXT), o.object_key, o.kind || ': ' || o.versions_deleted || ' versions deleted', o.versions_deleted, CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM takedown_object o UNION ALL SELECT o.takedown_id, o.verified_at, 'object_verified', 9, CAST(NULL AS BIGINT), CAST(NULL AS TEXT), o.object_key, o.kind || ': ' || COALESCE(CAST(o.versions_left AS TEXT), '?') || ' versions left', o.versions_left, CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM takedown_object o WHERE o.verified_at IS NOT NULL UNION ALL SELECT tr.takedown_id, tr.created_at, 'release_' || tr.action, 7, CAST(NULL AS BIGINT), CAST(NULL AS TEXT), r.name, 'version ' || tr.from_version || COALESCE(' -> ' || tr.to_version, '') || ': ' || tr.samples_removed || ' samples removed, ' || tr.shards_rewritten || ' shards rewritten', tr.samples_removed, CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM takedown_release tr JOIN release r ON r.id = tr.release_id;

-- Postgres only: the read-only role taisu_reader (the views and nothing else).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'taisu_reader') THEN
        BEGIN
            CREATE ROLE taisu_reader LOGIN;
        EXCEPTION
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'role taisu_reader not created: % lacks CREATEROLE; ask an administrator to run CREATE ROLE taisu_reader LOGIN, then run: python -m taisu_etl.db.views grants | psql LEDGER_URL', current_user;
            WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's migration created it at the same moment
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'taisu_reader') THEN
        BEGIN
            EXECUTE format('GRANT CONNECT ON DATABASE %I TO taisu_reader', current_database());
        EXCEPTION
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'could not grant taisu_reader CONNECT on database %: its owner must', current_database();
        END;
        BEGIN
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO taisu_reader', current_schema());
        EXCEPTION
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'could not grant taisu_reader USAGE on schema %: its owner must', current_schema();
        END;
        GRANT SELECT ON v_funnel, v_rejections, v_ingest_issues, v_sample_lineage, v_release_exclusion, v_image_releases, v_release_contents, v_takedown_audit, v_takedown_events TO taisu_reader;
    END IF;
END $$;
