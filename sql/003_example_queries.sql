-- Provenance questions, each one query. Run with psql (production) or sqlite3 var/ledger.db (demo).

-- 1. The funnel: how many samples are in each state.
SELECT state, samples FROM v_funnel ORDER BY samples DESC;

-- 2. How many samples each rule rejected.
SELECT state, reason, samples FROM v_rejections ORDER BY samples DESC;

-- 3. Why is this image not in the release? Every decision about one sample, oldest first,
--    with the Airflow task run that made it. (url_id is the public sample id.)
SELECT created_at, stage, from_state, to_state, reason, details, dag_id, run_id, task_id, map_index, try_number
FROM v_sample_lineage WHERE url_id = '0123456789abcdef0123456789abcdef' ORDER BY created_at;

-- 4. Which source file and line a sample came from.
SELECT s.id, s.url, s.caption, s.source, s.source_pos FROM sample s WHERE s.url = 'http://img0.example.com/photos/00000.jpg';

-- 5. What one Airflow task run decided (e.g. a mapped text-filter task of shard 3).
SELECT reason, COUNT(*) FROM sample_event
WHERE dag_id = 'taisu_pipeline' AND run_id = 'manual__2026-11-24T00:00:00+00:00' AND map_index = 3
GROUP BY reason;

-- 6. Samples a worker still holds (leases), e.g. after a worker died.
SELECT lease_owner, COUNT(*), MIN(lease_until) FROM sample_state WHERE lease_owner IS NOT NULL GROUP BY lease_owner;

-- 7. Which release shard holds a sample.
SELECT release_name, shard FROM v_release_contents WHERE url_id = '0123456789abcdef0123456789abcdef';

-- 8. The takedown audit trail.
SELECT * FROM v_takedown_audit ORDER BY received_at DESC;
