-- Provenance questions, each one query. Run with psql (production; as the read-only role:
-- psql -h HOST -U taisu_reader -d taisu) or sqlite3 var/ledger.db (the embedded demo).
-- Every query here runs as it is against the demo's ledger and returns rows
-- (tests/db/test_provenance.py checks that): where a query needs a sample, a release or a
-- request, a subquery picks a real one. To ask about your own, put its value in place of the
-- subquery, e.g. WHERE url_id = '3f2a9c...' (url_id is the public sample id, the one in a
-- release's ids.txt).

-- 1. The funnel: how many samples are in each state.
SELECT state, samples FROM v_funnel ORDER BY samples DESC, state;

-- 2. How many samples each rule rejected (state and reason code; `taisu-etl reasons` explains the codes).
SELECT state, reason, samples FROM v_rejections ORDER BY samples DESC, state, reason;

-- 3. Rows of the source files that never became samples, per file and reason; then the rows themselves.
SELECT source, reason, rows_lost FROM v_ingest_issues ORDER BY rows_lost DESC, source, reason;

SELECT source, position, reason, detail, run_id FROM ingest_issue ORDER BY source, position;

-- 4. Lineage of one sample: every decision, oldest first, with the Airflow dag, run, task, map
--    index and try that made it, the event's details (model ids, ranks, HTTP status, takedown
--    request) and the sample's score and models. Adapt: WHERE url_id = '<url_id>' (or sha256 =, or
--    sample_id =).
SELECT event_id, created_at, stage, from_state, to_state, reason, dag_id, run_id, task_id, map_index, try_number,
       worker, details, current_state, score, score_model, gen_caption_model
FROM v_sample_lineage
WHERE url_id = (SELECT url_id FROM sample WHERE gen_caption_model IS NOT NULL ORDER BY id LIMIT 1)
ORDER BY event_id;

-- 5. Where one sample came from: its source file and line, and what it is now.
SELECT s.id, s.url_id, s.url, s.caption, s.source, s.source_pos, st.state, st.last_reason
FROM sample s JOIN sample_state st ON st.sample_id = s.id
WHERE s.url_id = (SELECT url_id FROM sample ORDER BY id LIMIT 1);

-- 6. Why is this image not in release X? One row per sample asked about: `why` in words, and the
--    evidence (state and the decision that set it, with its Airflow task; the version that
--    removed it and the takedown request; the blocklist entry). Adapt: WHERE release_name = 'X'
--    AND url_id = '<url_id>'. Always filter by the sample: the view pairs every release with every
--    sample. Here: a sample that a takedown removed from the release, one that is still in it and
--    one the text filter rejected.
SELECT release_name, version, url_id, in_release, why, state, last_reason, last_stage, last_event_at,
       last_dag_id, last_run_id, last_task_id, last_try_number, shard, removed_in_version,
       removed_by_takedown_id, blocklisted_as, blocklisted_by_takedown_id, taken_down_by_takedown_id
FROM v_release_exclusion
WHERE release_name = (SELECT name FROM release WHERE state = 'published' ORDER BY id LIMIT 1)
  AND url_id IN (
    (SELECT s.url_id FROM takedown_match tm JOIN sample s ON s.id = tm.sample_id ORDER BY tm.takedown_id, tm.sample_id LIMIT 1),
    (SELECT s.url_id FROM release_member m JOIN sample s ON s.id = m.sample_id WHERE m.removed_in_version IS NULL ORDER BY s.id LIMIT 1),
    (SELECT s.url_id FROM sample s JOIN sample_state st ON st.sample_id = s.id WHERE st.state = 'text_rejected' ORDER BY s.id LIMIT 1))
ORDER BY in_release DESC, url_id;

-- 7. Which releases, and which versions of them, ever contained an image: by url_id ...
--    (current_version: the release's live version; removed_in_version: the first version without it)
SELECT release_name, release_state, version, current_version, shard, sample_id, removed_in_version, version_takedown_id
FROM v_image_releases
WHERE url_id = (SELECT s.url_id FROM takedown_match tm JOIN sample s ON s.id = tm.sample_id ORDER BY tm.takedown_id, tm.sample_id LIMIT 1)
ORDER BY release_name, version;

-- 8. ... by URL (the normalised URL, as in sample.url). sample.url has no index: on a large
--    Postgres ledger filter by its url_id, the hash of the normalised URL, which is indexed:
--    WHERE url_id = left(encode(sha256(convert_to('<normalised url>', 'UTF8')), 'hex'), 32)
SELECT release_name, release_state, version, current_version, shard, url_id, removed_in_version
FROM v_image_releases
WHERE url = (SELECT s.url FROM release_member m JOIN sample s ON s.id = m.sample_id ORDER BY s.id LIMIT 1)
ORDER BY release_name, version;

-- 9. ... by the image's sha256 (e.g. of a file a rights holder sent: sha256sum FILE).
SELECT release_name, release_state, version, current_version, shard, url_id, url, removed_in_version
FROM v_image_releases
WHERE sha256 = (SELECT s.sha256 FROM release_member m JOIN sample s ON s.id = m.sample_id ORDER BY s.id DESC LIMIT 1)
ORDER BY release_name, version;

-- 10. What a release holds now (its current version), per shard. Adapt: WHERE release_name = 'X'.
SELECT release_name, version, shard, COUNT(*) AS samples
FROM v_release_contents
WHERE release_name = (SELECT name FROM release WHERE state = 'published' ORDER BY id LIMIT 1)
GROUP BY release_name, version, shard ORDER BY shard;

-- 11. Every version of every release: when it was published, its manifest, the request that made it.
SELECT r.name AS release_name, r.state, v.version, v.samples, v.manifest_key, v.takedown_id, v.created_at
FROM release_version v JOIN release r ON r.id = v.release_id
ORDER BY r.name, v.version;

-- 12. The takedown requests: who asked for what, status, and what each one did (samples,
--     blocklist entries, objects and versions deleted, verification, releases patched).
SELECT takedown_id, received_at, requester, kind, value, reference, status, samples_matched, blocklist_entries,
       objects, object_versions_deleted, objects_verified, objects_left_behind, releases_patched, releases_withdrawn,
       verified_at
FROM v_takedown_audit ORDER BY received_at DESC, takedown_id DESC;

-- 13. The audit trail of one request, fact by fact in the order processing went through them.
--     Adapt: WHERE takedown_id = N.
SELECT step, happened_at, fact, sample_id, url_id, subject, detail, amount, dag_id, run_id, task_id
FROM v_takedown_events
WHERE takedown_id = (SELECT MAX(id) FROM takedown_request)
ORDER BY step, happened_at, subject;

-- 14. Is it really gone? Every object a request deleted or rewrote and what the verification
--     found there afterwards (versions_left: 0 for a deleted object, 1 for a rewritten one).
SELECT takedown_id, object_key, kind, action, versions_deleted, deleted_at, verified_at, versions_left
FROM takedown_object
WHERE takedown_id = (SELECT MAX(id) FROM takedown_request)
ORDER BY kind, object_key;

-- 15. Samples a worker holds (leases), e.g. to see what a worker that died still holds.
SELECT lease_owner, COUNT(*) AS samples, MIN(lease_until) AS first_expiry
FROM sample_state WHERE lease_owner IS NOT NULL
GROUP BY lease_owner ORDER BY lease_owner;
