BEGIN;

CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL, 
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

-- Running upgrade  -> 0001

CREATE TABLE domain_state (
    host VARCHAR(255) NOT NULL, 
    robots_txt TEXT, 
    robots_status INTEGER, 
    robots_fetched_at TIMESTAMP WITH TIME ZONE, 
    backoff_until TIMESTAMP WITH TIME ZONE, 
    failures INTEGER DEFAULT '0' NOT NULL, 
    details JSONB, 
    CONSTRAINT pk_domain_state PRIMARY KEY (host)
);

CREATE TABLE image_band (
    sample_id BIGINT NOT NULL, 
    band SMALLINT NOT NULL, 
    value VARCHAR(16) NOT NULL, 
    CONSTRAINT pk_image_band PRIMARY KEY (sample_id, band)
);

CREATE INDEX ix_image_band_band_value ON image_band (band, value);

CREATE TABLE ingest_issue (
    id BIGSERIAL NOT NULL, 
    source TEXT NOT NULL, 
    position TEXT NOT NULL, 
    reason VARCHAR(32) NOT NULL, 
    detail TEXT, 
    run_id VARCHAR(250), 
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
    CONSTRAINT pk_ingest_issue PRIMARY KEY (id), 
    CONSTRAINT uq_ingest_issue_source_position_reason UNIQUE (source, position, reason)
);

CREATE TABLE release (
    id BIGSERIAL NOT NULL, 
    name VARCHAR(128) NOT NULL, 
    state VARCHAR(16) NOT NULL, 
    parent_id BIGINT, 
    recipe JSONB, 
    counts JSONB, 
    manifest_key TEXT, 
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
    published_at TIMESTAMP WITH TIME ZONE, 
    CONSTRAINT pk_release PRIMARY KEY (id), 
    CONSTRAINT fk_release_parent_id_release FOREIGN KEY(parent_id) REFERENCES release (id), 
    CONSTRAINT uq_release_name UNIQUE (name)
);

COMMENT ON COLUMN release.state IS 'staging | published | failed';

CREATE TABLE sample (
    id BIGSERIAL NOT NULL, 
    pair_hash VARCHAR(32) NOT NULL, 
    url_id VARCHAR(32) NOT NULL, 
    taisu_id VARCHAR(64), 
    url TEXT, 
    caption TEXT NOT NULL, 
    caption_clean TEXT, 
    caption_hash VARCHAR(16) NOT NULL, 
    source TEXT NOT NULL, 
    source_pos TEXT, 
    object_key TEXT, 
    sha256 VARCHAR(64), 
    phash VARCHAR(16), 
    width INTEGER, 
    height INTEGER, 
    bytes INTEGER, 
    format VARCHAR(8), 
    http_status INTEGER, 
    fetched_at TIMESTAMP WITH TIME ZONE, 
    duplicate_of BIGINT, 
    score FLOAT, 
    score_model VARCHAR(128), 
    gen_caption TEXT, 
    gen_caption_model VARCHAR(128), 
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
    CONSTRAINT pk_sample PRIMARY KEY (id), 
    CONSTRAINT fk_sample_duplicate_of_sample FOREIGN KEY(duplicate_of) REFERENCES sample (id), 
    CONSTRAINT uq_sample_pair_hash UNIQUE (pair_hash)
);

COMMENT ON COLUMN sample.pair_hash IS 'hash of normalised URL + caption: one row per pair';

COMMENT ON COLUMN sample.url_id IS 'stable hash of the normalised URL (the public sample id)';

COMMENT ON COLUMN sample.taisu_id IS 'TaiSu''s URL-slice id or the id in TaiSu''s release';

COMMENT ON COLUMN sample.url IS 'normalised URL; NULL for images ingested from archives';

COMMENT ON COLUMN sample.caption IS 'web caption as ingested';

COMMENT ON COLUMN sample.caption_clean IS 'web caption after the text filter''s clean-up, when it differs';

COMMENT ON COLUMN sample.caption_hash IS 'hash of the normalised caption: counts over-frequent captions';

COMMENT ON COLUMN sample.source IS 'input file or source name';

COMMENT ON COLUMN sample.source_pos IS 'line, row or archive member within the source';

CREATE INDEX ix_sample_caption_hash ON sample (caption_hash);

CREATE INDEX ix_sample_phash ON sample (phash) WHERE phash IS NOT NULL;

CREATE INDEX ix_sample_sha256 ON sample (sha256) WHERE sha256 IS NOT NULL;

CREATE INDEX ix_sample_taisu_id ON sample (taisu_id) WHERE taisu_id IS NOT NULL;

CREATE INDEX ix_sample_url_id ON sample (url_id);

CREATE TABLE sample_event (
    id BIGSERIAL NOT NULL, 
    sample_id BIGINT NOT NULL, 
    stage VARCHAR(16) NOT NULL, 
    from_state VARCHAR(24), 
    to_state VARCHAR(24) NOT NULL, 
    reason VARCHAR(32) NOT NULL, 
    details JSONB, 
    dag_id VARCHAR(250), 
    run_id VARCHAR(250), 
    task_id VARCHAR(250), 
    map_index INTEGER, 
    try_number INTEGER, 
    worker VARCHAR(128), 
    recipe_version VARCHAR(64), 
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
    CONSTRAINT pk_sample_event PRIMARY KEY (id)
);

COMMENT ON COLUMN sample_event.worker IS 'host:pid of the process that decided';

CREATE INDEX ix_sample_event_sample_id ON sample_event (sample_id);

CREATE TABLE takedown_request (
    id BIGSERIAL NOT NULL, 
    received_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
    requester TEXT NOT NULL, 
    contact TEXT, 
    reason TEXT, 
    kind VARCHAR(16) NOT NULL, 
    value TEXT NOT NULL, 
    status VARCHAR(16) DEFAULT 'received' NOT NULL, 
    processed_at TIMESTAMP WITH TIME ZONE, 
    details JSONB, 
    CONSTRAINT pk_takedown_request PRIMARY KEY (id)
);

COMMENT ON COLUMN takedown_request.kind IS 'url | sha256 | phash | sample';

CREATE TABLE blocklist (
    id BIGSERIAL NOT NULL, 
    kind VARCHAR(16) NOT NULL, 
    value TEXT NOT NULL, 
    takedown_id BIGINT, 
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
    CONSTRAINT pk_blocklist PRIMARY KEY (id), 
    CONSTRAINT fk_blocklist_takedown_id_takedown_request FOREIGN KEY(takedown_id) REFERENCES takedown_request (id), 
    CONSTRAINT uq_blocklist_kind_value UNIQUE (kind, value)
);

COMMENT ON COLUMN blocklist.kind IS 'url | sha256 | phash';

CREATE TABLE release_member (
    release_id BIGINT NOT NULL, 
    sample_id BIGINT NOT NULL, 
    shard VARCHAR(64) NOT NULL, 
    CONSTRAINT pk_release_member PRIMARY KEY (release_id, sample_id), 
    CONSTRAINT fk_release_member_release_id_release FOREIGN KEY(release_id) REFERENCES release (id) ON DELETE CASCADE, 
    CONSTRAINT fk_release_member_sample_id_sample FOREIGN KEY(sample_id) REFERENCES sample (id)
);

COMMENT ON COLUMN release_member.shard IS 'file name of the release shard';

CREATE INDEX ix_release_member_sample_id ON release_member (sample_id);

CREATE TABLE sample_state (
    sample_id BIGINT NOT NULL, 
    shard INTEGER NOT NULL, 
    state VARCHAR(24) NOT NULL, 
    last_reason VARCHAR(32), 
    lease_owner VARCHAR(128), 
    lease_until TIMESTAMP WITH TIME ZONE, 
    attempts INTEGER DEFAULT '0' NOT NULL, 
    next_attempt_at TIMESTAMP WITH TIME ZONE, 
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
    CONSTRAINT pk_sample_state PRIMARY KEY (sample_id), 
    CONSTRAINT fk_sample_state_sample_id_sample FOREIGN KEY(sample_id) REFERENCES sample (id)
);

COMMENT ON COLUMN sample_state.last_reason IS 'reason code of the latest event';

CREATE INDEX ix_sample_state_shard_state ON sample_state (shard, state, sample_id);

CREATE VIEW v_funnel AS SELECT state, COUNT(*) AS samples FROM sample_state GROUP BY state;

CREATE VIEW v_rejections AS SELECT state, last_reason AS reason, COUNT(*) AS samples FROM sample_state WHERE state IN ('text_rejected', 'fetch_failed', 'expired', 'image_rejected', 'duplicate', 'score_rejected', 'taken_down') GROUP BY state, last_reason;

CREATE VIEW v_ingest_issues AS SELECT source, reason, COUNT(*) AS rows_lost FROM ingest_issue GROUP BY source, reason;

CREATE VIEW v_sample_lineage AS SELECT e.sample_id, s.url_id, s.url, s.caption, e.created_at, e.stage, e.from_state, e.to_state, e.reason, e.details, e.dag_id, e.run_id, e.task_id, e.map_index, e.try_number, e.worker, e.recipe_version FROM sample_event e JOIN sample s ON s.id = e.sample_id;

CREATE VIEW v_release_contents AS SELECT r.name AS release_name, r.state AS release_state, m.shard, s.id AS sample_id, s.url_id, s.url, s.sha256, s.object_key FROM release_member m JOIN release r ON r.id = m.release_id JOIN sample s ON s.id = m.sample_id;

CREATE VIEW v_takedown_audit AS SELECT t.id AS takedown_id, t.received_at, t.requester, t.kind, t.value, t.status, t.processed_at, COUNT(b.id) AS blocklist_entries FROM takedown_request t LEFT JOIN blocklist b ON b.takedown_id = t.id GROUP BY t.id, t.received_at, t.requester, t.kind, t.value, t.status, t.processed_at;

INSERT INTO alembic_version (version_num) VALUES ('0001') RETURNING alembic_version.version_num;

-- Running upgrade 0001 -> 0002

DROP VIEW IF EXISTS v_takedown_audit;

DROP VIEW IF EXISTS v_release_contents;

DROP VIEW IF EXISTS v_sample_lineage;

DROP VIEW IF EXISTS v_ingest_issues;

DROP VIEW IF EXISTS v_rejections;

DROP VIEW IF EXISTS v_funnel;

ALTER TABLE release ADD COLUMN version INTEGER DEFAULT '1' NOT NULL;

COMMENT ON COLUMN release.version IS '1 when published; +1 per takedown patch';

ALTER TABLE release ADD COLUMN withdrawn_at TIMESTAMP WITH TIME ZONE;

COMMENT ON COLUMN release.state IS 'staging | published | failed | withdrawn';

ALTER TABLE image_band ADD COLUMN phash BIGINT;

COMMENT ON COLUMN image_band.phash IS 'the whole pHash as a signed 64-bit integer: candidates are checked in the index';

DROP INDEX ix_image_band_band_value;

UPDATE image_band b SET phash = ('x' || s.phash)::bit(64)::bigint FROM sample s WHERE s.id = b.sample_id AND s.phash IS NOT NULL;

CREATE INDEX ix_image_band_lookup ON image_band (band, value, phash, sample_id);

CREATE INDEX ix_sample_duplicate_of ON sample (duplicate_of) WHERE duplicate_of IS NOT NULL;

ALTER TABLE release_member ADD COLUMN removed_in_version INTEGER;

COMMENT ON COLUMN release_member.removed_in_version IS 'first release version without the sample (a takedown patch); NULL while it is in';

COMMENT ON COLUMN takedown_request.kind IS 'sample | taisu_id | url | sha256 | image | domain';

COMMENT ON COLUMN takedown_request.value IS 'the selector: id, normalised URL, hex digest, host; image: its sha256';

COMMENT ON COLUMN takedown_request.status IS 'received | matched | processed | verified | rejected';

ALTER TABLE takedown_request ADD COLUMN reference TEXT;

COMMENT ON COLUMN takedown_request.reference IS 'the requester''s reference, e.g. an e-mail id';

ALTER TABLE takedown_request ADD COLUMN channel TEXT;

COMMENT ON COLUMN takedown_request.channel IS 'cli | airflow | FILE:LINE of a bulk import';

ALTER TABLE takedown_request ADD COLUMN status_detail TEXT;

COMMENT ON COLUMN takedown_request.status_detail IS 'why rejected, or what the last step found';

ALTER TABLE takedown_request ADD COLUMN matched_at TIMESTAMP WITH TIME ZONE;

ALTER TABLE takedown_request ADD COLUMN verified_at TIMESTAMP WITH TIME ZONE;

CREATE INDEX ix_takedown_request_status ON takedown_request (status);

COMMENT ON COLUMN blocklist.kind IS 'url | sha256 | phash | host';

ALTER TABLE blocklist ADD COLUMN sample_id BIGINT;

COMMENT ON COLUMN blocklist.sample_id IS 'the sample the value was taken from, if any';

CREATE INDEX ix_blocklist_takedown_id ON blocklist (takedown_id);

CREATE TABLE release_version (
    release_id BIGINT NOT NULL, 
    version INTEGER NOT NULL, 
    manifest_key TEXT NOT NULL, 
    manifest_sha256 VARCHAR(64) NOT NULL, 
    samples INTEGER NOT NULL, 
    takedown_id BIGINT, 
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
    CONSTRAINT pk_release_version PRIMARY KEY (release_id, version), 
    CONSTRAINT fk_release_version_release_id_release FOREIGN KEY(release_id) REFERENCES release (id) ON DELETE CASCADE, 
    CONSTRAINT fk_release_version_takedown_id_takedown_request FOREIGN KEY(takedown_id) REFERENCES takedown_request (id)
);

COMMENT ON COLUMN release_version.takedown_id IS 'the request that made this version';

CREATE TABLE takedown_match (
    takedown_id BIGINT NOT NULL, 
    sample_id BIGINT NOT NULL, 
    how VARCHAR(16) NOT NULL, 
    distance SMALLINT, 
    matched_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
    CONSTRAINT pk_takedown_match PRIMARY KEY (takedown_id, sample_id), 
    CONSTRAINT fk_takedown_match_sample_id_sample FOREIGN KEY(sample_id) REFERENCES sample (id), 
    CONSTRAINT fk_takedown_match_takedown_id_takedown_request FOREIGN KEY(takedown_id) REFERENCES takedown_request (id)
);

COMMENT ON COLUMN takedown_match.how IS 'sample | taisu_id | url | sha256 | phash | duplicate_of | domain';

COMMENT ON COLUMN takedown_match.distance IS 'Hamming distance of the perceptual hashes (phash matches)';

CREATE INDEX ix_takedown_match_sample_id ON takedown_match (sample_id);

CREATE TABLE takedown_object (
    takedown_id BIGINT NOT NULL, 
    object_key TEXT NOT NULL, 
    kind VARCHAR(16) NOT NULL, 
    action VARCHAR(16) NOT NULL, 
    versions_deleted INTEGER DEFAULT '0' NOT NULL, 
    deleted_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
    verified_at TIMESTAMP WITH TIME ZONE, 
    versions_left INTEGER, 
    CONSTRAINT pk_takedown_object PRIMARY KEY (takedown_id, object_key), 
    CONSTRAINT fk_takedown_object_takedown_id_takedown_request FOREIGN KEY(takedown_id) REFERENCES takedown_request (id)
);

COMMENT ON COLUMN takedown_object.kind IS 'image | embeddings | release_file';

COMMENT ON COLUMN takedown_object.action IS 'deleted | rewritten';

COMMENT ON COLUMN takedown_object.versions_left IS 'versions found by the verification: 0 for deleted, 1 for rewritten';

CREATE TABLE takedown_release (
    takedown_id BIGINT NOT NULL, 
    release_id BIGINT NOT NULL, 
    action VARCHAR(16) NOT NULL, 
    from_version INTEGER NOT NULL, 
    to_version INTEGER, 
    samples_removed INTEGER NOT NULL, 
    shards_rewritten INTEGER DEFAULT '0' NOT NULL, 
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
    CONSTRAINT pk_takedown_release PRIMARY KEY (takedown_id, release_id), 
    CONSTRAINT fk_takedown_release_release_id_release FOREIGN KEY(release_id) REFERENCES release (id), 
    CONSTRAINT fk_takedown_release_takedown_id_takedown_request FOREIGN KEY(takedown_id) REFERENCES takedown_request (id)
);

COMMENT ON COLUMN takedown_release.action IS 'patched | withdrawn';

INSERT INTO release_version (release_id, version, manifest_key, manifest_sha256, samples, created_at) SELECT r.id, 1, r.manifest_key, '', (SELECT COUNT(*) FROM release_member m WHERE m.release_id = r.id), COALESCE(r.published_at, r.created_at) FROM release r WHERE r.state = 'published' AND r.manifest_key IS NOT NULL;

CREATE VIEW v_funnel AS SELECT state, COUNT(*) AS samples FROM sample_state GROUP BY state;

CREATE VIEW v_rejections AS SELECT state, last_reason AS reason, COUNT(*) AS samples FROM sample_state WHERE state IN ('text_rejected', 'fetch_failed', 'expired', 'image_rejected', 'duplicate', 'score_rejected', 'taken_down') GROUP BY state, last_reason;

CREATE VIEW v_ingest_issues AS SELECT source, reason, COUNT(*) AS rows_lost FROM ingest_issue GROUP BY source, reason;

CREATE VIEW v_sample_lineage AS SELECT e.sample_id, s.url_id, s.url, s.caption, e.created_at, e.stage, e.from_state, e.to_state, e.reason, e.details, e.dag_id, e.run_id, e.task_id, e.map_index, e.try_number, e.worker, e.recipe_version, e.id AS event_id, s.taisu_id, s.source, s.source_pos, s.sha256, s.phash, s.object_key, s.duplicate_of, st.state AS current_state, st.last_reason AS current_reason, s.score, s.score_model, s.gen_caption, s.gen_caption_model FROM sample_event e JOIN sample s ON s.id = e.sample_id LEFT JOIN sample_state st ON st.sample_id = e.sample_id;

CREATE VIEW v_release_exclusion AS SELECT r.name AS release_name, r.version, r.state AS release_state, s.id AS sample_id, s.url_id, s.url, s.sha256, (r.state = 'published' AND m.sample_id IS NOT NULL AND m.removed_in_version IS NULL) AS in_release, CASE WHEN r.state = 'published' AND m.sample_id IS NOT NULL AND m.removed_in_version IS NULL THEN 'in the release' WHEN m.removed_in_version IS NOT NULL THEN 'removed in version ' || m.removed_in_version || COALESCE(' by takedown request ' || rv.takedown_id, '') WHEN m.sample_id IS NOT NULL THEN 'a member, but the release is ' || r.state WHEN st.state = 'taken_down' THEN 'taken down' WHEN bu.id IS NOT NULL OR bs.id IS NOT NULL OR bp.id IS NOT NULL THEN 'blocklisted' WHEN st.state NOT IN ('accepted', 'captioned') THEN 'not eligible: ' || st.state || COALESCE(' (' || st.last_reason || ')', '') WHEN le.created_at > r.created_at THEN 'became eligible after the release was built' ELSE 'eligible, but not selected by the release''s options' END AS why, st.state, st.last_reason, le.stage AS last_stage, le.created_at AS last_event_at, le.dag_id AS last_dag_id, le.run_id AS last_run_id, le.task_id AS last_task_id, le.map_index AS last_map_index, le.try_number AS last_try_number, le.details AS last_details, m.shard, m.removed_in_version, rv.takedown_id AS removed_by_takedown_id, COALESCE(bu.kind, bs.kind, bp.kind) AS blocklisted_as, COALESCE(bu.takedown_id, bs.takedown_id, bp.takedown_id) AS blocklisted_by_takedown_id, (SELECT MIN(tm.takedown_id) FROM takedown_match tm WHERE tm.sample_id = s.id) AS taken_down_by_takedown_id, s.score, s.score_model, r.id AS release_id FROM release r CROSS JOIN sample s LEFT JOIN sample_state st ON st.sample_id = s.id LEFT JOIN release_member m ON m.release_id = r.id AND m.sample_id = s.id LEFT JOIN release_version rv ON rv.release_id = m.release_id AND rv.version = m.removed_in_version LEFT JOIN blocklist bu ON bu.kind = 'url' AND bu.value = s.url LEFT JOIN blocklist bs ON bs.kind = 'sha256' AND bs.value = s.sha256 LEFT JOIN blocklist bp ON bp.kind = 'phash' AND bp.value = s.phash LEFT JOIN sample_event le ON le.id = (SELECT MAX(e.id) FROM sample_event e WHERE e.sample_id = s.id AND e.to_state = st.state AND e.reason = st.last_reason);

CREATE VIEW v_image_releases AS SELECT r.name AS release_name, r.state AS release_state, v.version, m.shard, s.id AS sample_id, s.url_id, s.url, s.sha256, m.removed_in_version, (r.state = 'published' AND v.version = r.version) AS current_version, v.created_at AS version_created_at, v.manifest_key, v.takedown_id AS version_takedown_id, s.taisu_id, r.id AS release_id FROM release_member m JOIN release r ON r.id = m.release_id JOIN release_version v ON v.release_id = m.release_id AND (m.removed_in_version IS NULL OR v.version < m.removed_in_version) JOIN sample s ON s.id = m.sample_id;

CREATE VIEW v_release_contents AS SELECT r.name AS release_name, r.state AS release_state, m.shard, s.id AS sample_id, s.url_id, s.url, s.sha256, s.object_key, r.version, r.id AS release_id FROM release_member m JOIN release r ON r.id = m.release_id JOIN sample s ON s.id = m.sample_id WHERE m.removed_in_version IS NULL AND r.state <> 'withdrawn';

CREATE VIEW v_takedown_audit AS SELECT t.id AS takedown_id, t.received_at, t.requester, t.kind, t.value, t.status, t.processed_at, (SELECT COUNT(*) FROM blocklist b WHERE b.takedown_id = t.id) AS blocklist_entries, t.contact, t.reason, t.reference, t.channel, t.status_detail, t.matched_at, t.verified_at, (SELECT COUNT(*) FROM takedown_match tm WHERE tm.takedown_id = t.id) AS samples_matched, (SELECT COUNT(*) FROM takedown_object o WHERE o.takedown_id = t.id) AS objects, (SELECT COALESCE(SUM(o.versions_deleted), 0) FROM takedown_object o WHERE o.takedown_id = t.id) AS object_versions_deleted, (SELECT COUNT(*) FROM takedown_object o WHERE o.takedown_id = t.id AND o.verified_at IS NOT NULL) AS objects_verified, (SELECT COUNT(*) FROM takedown_object o WHERE o.takedown_id = t.id AND o.versions_left > CASE WHEN o.action = 'rewritten' THEN 1 ELSE 0 END) AS objects_left_behind, (SELECT COUNT(*) FROM takedown_release tr WHERE tr.takedown_id = t.id AND tr.action = 'patched') AS releases_patched, (SELECT COUNT(*) FROM takedown_release tr WHERE tr.takedown_id = t.id AND tr.action = 'withdrawn') AS releases_withdrawn FROM takedown_request t;

CREATE VIEW v_takedown_events AS SELECT t.id AS takedown_id, t.received_at AS happened_at, 'received' AS fact, 1 AS step, CAST(NULL AS BIGINT) AS sample_id, CAST(NULL AS TEXT) AS url_id, t.kind || ' ' || t.value AS subject, 'from ' || t.requester || COALESCE(' <' || t.contact || '>', '') || COALESCE(', reference ' || t.reference, '') || COALESCE(', via ' || t.channel, '') || COALESCE(': ' || t.reason, '') AS detail, CAST(NULL AS INTEGER) AS amount, CAST(NULL AS TEXT) AS dag_id, CAST(NULL AS TEXT) AS run_id, CAST(NULL AS TEXT) AS task_id FROM takedown_request t UNION ALL SELECT t.id, t.matched_at, 'matched', 2, CAST(NULL AS BIGINT), CAST(NULL AS TEXT), t.kind || ' ' || t.value, CAST(NULL AS TEXT), CAST(NULL AS INTEGER), CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM takedown_request t WHERE t.matched_at IS NOT NULL UNION ALL SELECT t.id, COALESCE(t.processed_at, t.matched_at, t.received_at), CASE WHEN t.status = 'rejected' THEN 'rejected' ELSE 'processed' END, 8, CAST(NULL AS BIGINT), CAST(NULL AS TEXT), t.kind || ' ' || t.value, t.status_detail, CAST(NULL AS INTEGER), CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM takedown_request t WHERE t.processed_at IS NOT NULL OR t.status = 'rejected' UNION ALL SELECT t.id, t.verified_at, 'verified', 10, CAST(NULL AS BIGINT), CAST(NULL AS TEXT), t.kind || ' ' || t.value, t.status_detail, CAST(NULL AS INTEGER), CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM takedown_request t WHERE t.verified_at IS NOT NULL UNION ALL SELECT tm.takedown_id, tm.matched_at, 'sample_matched', 3, tm.sample_id, s.url_id, s.url, 'by ' || tm.how || COALESCE(' at distance ' || tm.distance, ''), tm.distance, CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM takedown_match tm JOIN sample s ON s.id = tm.sample_id UNION ALL SELECT tm.takedown_id, e.created_at, 'sample_taken_down', 5, e.sample_id, s.url_id, s.url, e.from_state || ' -> ' || e.to_state, CAST(NULL AS INTEGER), e.dag_id, e.run_id, e.task_id FROM takedown_match tm JOIN sample_event e ON e.sample_id = tm.sample_id AND e.stage = 'takedown' JOIN sample s ON s.id = tm.sample_id UNION ALL SELECT b.takedown_id, b.created_at, 'blocklisted', 4, b.sample_id, s.url_id, b.kind || ' ' || b.value, CAST(NULL AS TEXT), CAST(NULL AS INTEGER), CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM blocklist b LEFT JOIN sample s ON s.id = b.sample_id WHERE b.takedown_id IS NOT NULL UNION ALL SELECT o.takedown_id, o.deleted_at, 'object_' || o.action, 6, CAST(NULL AS BIGINT), CAST(NULL AS TEXT), o.object_key, o.kind || ': ' || o.versions_deleted || ' versions deleted', o.versions_deleted, CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM takedown_object o UNION ALL SELECT o.takedown_id, o.verified_at, 'object_verified', 9, CAST(NULL AS BIGINT), CAST(NULL AS TEXT), o.object_key, o.kind || ': ' || COALESCE(CAST(o.versions_left AS TEXT), '?') || ' versions left', o.versions_left, CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM takedown_object o WHERE o.verified_at IS NOT NULL UNION ALL SELECT tr.takedown_id, tr.created_at, 'release_' || tr.action, 7, CAST(NULL AS BIGINT), CAST(NULL AS TEXT), r.name, 'version ' || tr.from_version || COALESCE(' -> ' || tr.to_version, '') || ': ' || tr.samples_removed || ' samples removed, ' || tr.shards_rewritten || ' shards rewritten', tr.samples_removed, CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(NULL AS TEXT) FROM takedown_release tr JOIN release r ON r.id = tr.release_id;

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

UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0001';

-- Running upgrade 0002 -> 0003

ALTER TABLE release ADD COLUMN owner VARCHAR(128);

COMMENT ON COLUMN release.owner IS 'lease owner token of the run that claimed the name (label@host:pid:start)';

ALTER TABLE release ADD COLUMN owner_since TIMESTAMP WITH TIME ZONE;

COMMENT ON COLUMN release.owner_since IS 'when that run claimed it';

ALTER TABLE release ADD COLUMN heartbeat_at TIMESTAMP WITH TIME ZONE;

COMMENT ON COLUMN release.heartbeat_at IS 'the owner''s last renewal of its claim while staging';

UPDATE alembic_version SET version_num='0003' WHERE alembic_version.version_num = '0002';

-- Running upgrade 0003 -> 0004

CREATE TABLE host_budget (
    host VARCHAR(255) NOT NULL, 
    next_slot DOUBLE PRECISION NOT NULL, 
    CONSTRAINT pk_host_budget PRIMARY KEY (host)
);

COMMENT ON COLUMN host_budget.next_slot IS 'database-clock Unix time of the host''s next unreserved request slot';

CREATE TABLE host_grant (
    host VARCHAR(255) NOT NULL, 
    owner VARCHAR(128) NOT NULL, 
    units INTEGER NOT NULL, 
    wanted INTEGER NOT NULL, 
    expires_at DOUBLE PRECISION NOT NULL, 
    CONSTRAINT pk_host_grant PRIMARY KEY (host, owner)
);

COMMENT ON COLUMN host_grant.owner IS 'the fetch process holding the grant (a lease owner token: label@host:pid:start)';

COMMENT ON COLUMN host_grant.units IS 'requests the owner may have open to the host at once';

COMMENT ON COLUMN host_grant.wanted IS 'units the owner could use: the others'' fair share counts it';

COMMENT ON COLUMN host_grant.expires_at IS 'database-clock Unix time; a crashed owner''s units are free after it';

CREATE INDEX ix_host_grant_owner ON host_grant (owner);

UPDATE alembic_version SET version_num='0004' WHERE alembic_version.version_num = '0003';

COMMIT;

