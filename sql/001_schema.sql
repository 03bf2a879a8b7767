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

COMMIT;

