"""The ledger's tables: the single source of truth for the schema on SQLite and Postgres.

Alembic migrations in `migrations/versions` create exactly these tables (a test compares the
migrated database with this metadata), and `sql/001_schema.sql` is their rendered Postgres DDL.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

# BIGINT ids on Postgres (166M samples, billions of events); SQLite only auto-increments a column
# declared INTEGER PRIMARY KEY, which is 64-bit there anyway.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# JSONB on Postgres for indexable details; JSON text elsewhere.
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Ts = sa.DateTime(timezone=True)

sample = sa.Table(
    "sample",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("pair_hash", sa.String(32), nullable=False, comment="hash of normalised URL + caption: one row per pair"),
    sa.Column("url_id", sa.String(32), nullable=False, comment="stable hash of the normalised URL (the public sample id)"),
    sa.Column("taisu_id", sa.String(64), comment="TaiSu's URL-slice id or the id in TaiSu's release"),
    sa.Column("url", sa.Text, comment="normalised URL; NULL for images ingested from archives"),
    sa.Column("caption", sa.Text, nullable=False, comment="web caption as ingested"),
    sa.Column("caption_clean", sa.Text, comment="web caption after the text filter's clean-up, when it differs"),
    sa.Column("caption_hash", sa.String(16), nullable=False, comment="hash of the normalised caption: counts over-frequent captions"),
    sa.Column("source", sa.Text, nullable=False, comment="input file or source name"),
    sa.Column("source_pos", sa.Text, comment="line, row or archive member within the source"),
    sa.Column("object_key", sa.Text),
    sa.Column("sha256", sa.String(64)),
    sa.Column("phash", sa.String(16)),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("bytes", sa.Integer),
    sa.Column("format", sa.String(8)),
    sa.Column("http_status", sa.Integer),
    sa.Column("fetched_at", Ts),
    sa.Column("duplicate_of", BigId, sa.ForeignKey("sample.id")),
    sa.Column("score", sa.Float),
    sa.Column("score_model", sa.String(128)),
    sa.Column("gen_caption", sa.Text),
    sa.Column("gen_caption_model", sa.String(128)),
    sa.Column("created_at", Ts, nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", Ts, nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint("pair_hash"),
    sa.Index("ix_sample_url_id", "url_id"),
    sa.Index("ix_sample_caption_hash", "caption_hash"),
    # Partial: most rows have no value yet, and an index entry per NULL would be written again
    # on every update of the row.
    sa.Index("ix_sample_taisu_id", "taisu_id", postgresql_where=sa.text("taisu_id IS NOT NULL"), sqlite_where=sa.text("taisu_id IS NOT NULL")),
    sa.Index("ix_sample_sha256", "sha256", postgresql_where=sa.text("sha256 IS NOT NULL"), sqlite_where=sa.text("sha256 IS NOT NULL")),
    sa.Index("ix_sample_phash", "phash", postgresql_where=sa.text("phash IS NOT NULL"), sqlite_where=sa.text("phash IS NOT NULL")),
    # A takedown follows duplicates to their original; few samples are duplicates, so the index is small.
    sa.Index("ix_sample_duplicate_of", "duplicate_of", postgresql_where=sa.text("duplicate_of IS NOT NULL"),
             sqlite_where=sa.text("duplicate_of IS NOT NULL")),
)

# Where each sample is and who holds it. Kept apart from the wide `sample` row because it changes
# at every stage: a state change rewrites this narrow row and its two index entries instead of the
# whole sample row and all of its indexes, which doubles transition throughput on Postgres.
sample_state = sa.Table(
    "sample_state",
    metadata,
    sa.Column("sample_id", BigId, sa.ForeignKey("sample.id"), primary_key=True),
    sa.Column("shard", sa.Integer, nullable=False),
    sa.Column("state", sa.String(24), nullable=False),
    sa.Column("last_reason", sa.String(32), comment="reason code of the latest event"),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("lease_until", Ts),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", Ts),
    sa.Column("updated_at", Ts, nullable=False, server_default=sa.func.now()),
    # sample_id last: claims and scans page through a shard's samples in id order straight off
    # this index, instead of sorting every matching row for each batch.
    sa.Index("ix_sample_state_shard_state", "shard", "state", "sample_id"),
)

sample_event = sa.Table(
    "sample_event",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    # No foreign key: events are an append-only audit log written at tens of thousands of rows a
    # second, and samples are never deleted (a takedown changes state and removes bytes), so the
    # per-row constraint check would cost a quarter of the insert for nothing.
    sa.Column("sample_id", BigId, nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("from_state", sa.String(24)),
    sa.Column("to_state", sa.String(24), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("details", Json),
    sa.Column("dag_id", sa.String(250)),
    sa.Column("run_id", sa.String(250)),
    sa.Column("task_id", sa.String(250)),
    sa.Column("map_index", sa.Integer),
    sa.Column("try_number", sa.Integer),
    sa.Column("worker", sa.String(128), comment="host:pid of the process that decided"),
    sa.Column("recipe_version", sa.String(64)),
    sa.Column("created_at", Ts, nullable=False, server_default=sa.func.now()),
    sa.Index("ix_sample_event_sample_id", "sample_id"),
)

# Rows of a source file that could not become samples (no URL, bad UTF-8, an archived image with no
# caption, ...): kept with file and position so "what did we lose from wukong_100m_7.csv?" is a query.
ingest_issue = sa.Table(
    "ingest_issue",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("position", sa.Text, nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("run_id", sa.String(250)),
    sa.Column("created_at", Ts, nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint("source", "position", "reason"),
)

# Bands of each stored image's 64-bit perceptual hash. Two hashes within Hamming distance d share
# at least one of d+1 bands exactly (pigeonhole), so near-duplicate candidates are an index lookup.
image_band = sa.Table(
    "image_band",
    metadata,
    sa.Column("sample_id", BigId, nullable=False),
    sa.Column("band", sa.SmallInteger, nullable=False),
    sa.Column("value", sa.String(16), nullable=False),
    sa.Column("phash", sa.BigInteger, comment="the whole pHash as a signed 64-bit integer: candidates are checked in the index"),
    sa.PrimaryKeyConstraint("sample_id", "band"),
    # Covering: a lookup by (band, value) reads each candidate's whole hash from the index itself
    # instead of one random fetch of its sample row; at 1M images a band value has ~120 of them.
    sa.Index("ix_image_band_lookup", "band", "value", "phash", "sample_id"),
)

release = sa.Table(
    "release",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, comment="staging | published | failed | withdrawn"),
    sa.Column("parent_id", BigId, sa.ForeignKey("release.id")),
    sa.Column("recipe", Json),
    sa.Column("counts", Json),
    sa.Column("manifest_key", sa.Text),
    sa.Column("created_at", Ts, nullable=False, server_default=sa.func.now()),
    sa.Column("published_at", Ts),
    sa.Column("version", sa.Integer, nullable=False, server_default="1", comment="1 when published; +1 per takedown patch"),
    sa.Column("withdrawn_at", Ts),
    # Who is creating the release: a run claims the name (one run at a time), renews `heartbeat_at`
    # while it builds, and keeps the claim to publish or fail; a provably dead owner, or one whose
    # heartbeat is older than the timeout, is taken over by the next run.
    sa.Column("owner", sa.String(128), comment="lease owner token of the run that claimed the name (label@host:pid:start)"),
    sa.Column("owner_since", Ts, comment="when that run claimed it"),
    sa.Column("heartbeat_at", Ts, comment="the owner's last renewal of its claim while staging"),
    sa.UniqueConstraint("name"),
)

release_member = sa.Table(
    "release_member",
    metadata,
    sa.Column("release_id", BigId, sa.ForeignKey("release.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("sample_id", BigId, sa.ForeignKey("sample.id"), primary_key=True),
    sa.Column("shard", sa.String(64), nullable=False, comment="file name of the release shard"),
    sa.Column("removed_in_version", sa.Integer, comment="first release version without the sample (a takedown patch); NULL while it is in"),
    sa.Index("ix_release_member_sample_id", "sample_id"),
)

# Every published version of a release: version 1 from `release create`, one more per takedown
# patch. Members of version v are the release_member rows with removed_in_version NULL or > v.
release_version = sa.Table(
    "release_version",
    metadata,
    sa.Column("release_id", BigId, sa.ForeignKey("release.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("manifest_key", sa.Text, nullable=False),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("samples", sa.Integer, nullable=False),
    sa.Column("takedown_id", BigId, sa.ForeignKey("takedown_request.id"), comment="the request that made this version"),
    sa.Column("created_at", Ts, nullable=False, server_default=sa.func.now()),
)

takedown_request = sa.Table(
    "takedown_request",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("received_at", Ts, nullable=False, server_default=sa.func.now()),
    sa.Column("requester", sa.Text, nullable=False),
    sa.Column("contact", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("kind", sa.String(16), nullable=False, comment="sample | taisu_id | url | sha256 | image | domain"),
    sa.Column("value", sa.Text, nullable=False, comment="the selector: id, normalised URL, hex digest, host; image: its sha256"),
    sa.Column("status", sa.String(16), nullable=False, server_default="received",
              comment="received | matched | processed | verified | rejected"),
    sa.Column("processed_at", Ts),
    sa.Column("details", Json),
    sa.Column("reference", sa.Text, comment="the requester's reference, e.g. an e-mail id"),
    sa.Column("channel", sa.Text, comment="cli | airflow | FILE:LINE of a bulk import"),
    sa.Column("status_detail", sa.Text, comment="why rejected, or what the last step found"),
    sa.Column("matched_at", Ts),
    sa.Column("verified_at", Ts),
    sa.Index("ix_takedown_request_status", "status"),
)

# Which samples a request matched, and how: the audit trail's "matches".
takedown_match = sa.Table(
    "takedown_match",
    metadata,
    sa.Column("takedown_id", BigId, sa.ForeignKey("takedown_request.id"), primary_key=True),
    sa.Column("sample_id", BigId, sa.ForeignKey("sample.id"), primary_key=True),
    sa.Column("how", sa.String(16), nullable=False, comment="sample | taisu_id | url | sha256 | phash | duplicate_of | domain"),
    sa.Column("distance", sa.SmallInteger, comment="Hamming distance of the perceptual hashes (phash matches)"),
    sa.Column("matched_at", Ts, nullable=False, server_default=sa.func.now()),
    sa.Index("ix_takedown_match_sample_id", "sample_id"),
)

# Every object a request deleted (images, embedding files, old release shards) and what the
# verification found there afterwards: "is it really gone?" answered from the ledger.
takedown_object = sa.Table(
    "takedown_object",
    metadata,
    sa.Column("takedown_id", BigId, sa.ForeignKey("takedown_request.id"), primary_key=True),
    sa.Column("object_key", sa.Text, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False, comment="image | embeddings | release_file"),
    sa.Column("action", sa.String(16), nullable=False, comment="deleted | rewritten"),
    sa.Column("versions_deleted", sa.Integer, nullable=False, server_default="0"),
    sa.Column("deleted_at", Ts, nullable=False, server_default=sa.func.now()),
    sa.Column("verified_at", Ts),
    sa.Column("versions_left", sa.Integer, comment="versions found by the verification: 0 for deleted, 1 for rewritten"),
)

# Which published releases a request patched (a new version) or withdrew.
takedown_release = sa.Table(
    "takedown_release",
    metadata,
    sa.Column("takedown_id", BigId, sa.ForeignKey("takedown_request.id"), primary_key=True),
    sa.Column("release_id", BigId, sa.ForeignKey("release.id"), primary_key=True),
    sa.Column("action", sa.String(16), nullable=False, comment="patched | withdrawn"),
    sa.Column("from_version", sa.Integer, nullable=False),
    sa.Column("to_version", sa.Integer),
    sa.Column("samples_removed", sa.Integer, nullable=False),
    sa.Column("shards_rewritten", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", Ts, nullable=False, server_default=sa.func.now()),
)

blocklist = sa.Table(
    "blocklist",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False, comment="url | sha256 | phash | host"),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("takedown_id", BigId, sa.ForeignKey("takedown_request.id")),
    sa.Column("sample_id", BigId, comment="the sample the value was taken from, if any"),
    sa.Column("created_at", Ts, nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint("kind", "value"),
    # The audit trail counts and lists a request's entries (a domain request can add hundreds of thousands).
    sa.Index("ix_blocklist_takedown_id", "takedown_id"),
)

domain_state = sa.Table(
    "domain_state",
    metadata,
    sa.Column("host", sa.String(255), primary_key=True),
    sa.Column("robots_txt", sa.Text),
    sa.Column("robots_status", sa.Integer),
    sa.Column("robots_fetched_at", Ts),
    sa.Column("backoff_until", Ts),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("details", Json),
)

# Per-host politeness shared by every fetch process of a deployment (taisu_etl.db.host_budget): rate
# slots are reserved in blocks off `next_slot`, concurrency is leased in units. Times are Unix seconds
# on the database's clock, so the workers' own clocks never have to agree.
host_budget = sa.Table(
    "host_budget",
    metadata,
    sa.Column("host", sa.String(255), primary_key=True),
    sa.Column("next_slot", sa.Double, nullable=False, comment="database-clock Unix time of the host's next unreserved request slot"),
)

host_grant = sa.Table(
    "host_grant",
    metadata,
    sa.Column("host", sa.String(255), primary_key=True),
    sa.Column("owner", sa.String(128), primary_key=True, comment="the fetch process holding the grant (a lease owner token: label@host:pid:start)"),
    sa.Column("units", sa.Integer, nullable=False, comment="requests the owner may have open to the host at once"),
    sa.Column("wanted", sa.Integer, nullable=False, comment="units the owner could use: the others' fair share counts it"),
    sa.Column("expires_at", sa.Double, nullable=False, comment="database-clock Unix time; a crashed owner's units are free after it"),
    sa.Index("ix_host_grant_owner", "owner"),
)
