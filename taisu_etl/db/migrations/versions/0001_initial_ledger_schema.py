"""initial ledger schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# The views as this revision created them, frozen here: later revisions drop and recreate them
# from taisu_etl.db.views, whose text may refer to tables this revision does not have.
VIEWS = {
    'v_funnel': 'SELECT state, COUNT(*) AS samples FROM sample_state GROUP BY state',
    'v_rejections': "SELECT state, last_reason AS reason, COUNT(*) AS samples FROM sample_state WHERE state IN ('text_rejected', 'fetch_failed', 'expired', 'image_rejected', 'duplicate', 'score_rejected', 'taken_down') GROUP BY state, last_reason",
    'v_ingest_issues': 'SELECT source, reason, COUNT(*) AS rows_lost FROM ingest_issue GROUP BY source, reason',
    'v_sample_lineage': 'SELECT e.sample_id, s.url_id, s.url, s.caption, e.created_at, e.stage, e.from_state, e.to_state, e.reason, e.details, e.dag_id, e.run_id, e.task_id, e.map_index, e.try_number, e.worker, e.recipe_version FROM sample_event e JOIN sample s ON s.id = e.sample_id',
    'v_release_contents': 'SELECT r.name AS release_name, r.state AS release_state, m.shard, s.id AS sample_id, s.url_id, s.url, s.sha256, s.object_key FROM release_member m JOIN release r ON r.id = m.release_id JOIN sample s ON s.id = m.sample_id',
    'v_takedown_audit': 'SELECT t.id AS takedown_id, t.received_at, t.requester, t.kind, t.value, t.status, t.processed_at, COUNT(b.id) AS blocklist_entries FROM takedown_request t LEFT JOIN blocklist b ON b.takedown_id = t.id GROUP BY t.id, t.received_at, t.requester, t.kind, t.value, t.status, t.processed_at',
}

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('domain_state',
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('robots_txt', sa.Text(), nullable=True),
    sa.Column('robots_status', sa.Integer(), nullable=True),
    sa.Column('robots_fetched_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('backoff_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failures', sa.Integer(), server_default='0', nullable=False),
    sa.Column('details', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.PrimaryKeyConstraint('host', name=op.f('pk_domain_state'))
    )
    op.create_table('image_band',
    sa.Column('sample_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('band', sa.SmallInteger(), nullable=False),
    sa.Column('value', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('sample_id', 'band', name=op.f('pk_image_band'))
    )
    with op.batch_alter_table('image_band', schema=None) as batch_op:
        batch_op.create_index('ix_image_band_band_value', ['band', 'value'], unique=False)

    op.create_table('ingest_issue',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('position', sa.Text(), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('run_id', sa.String(length=250), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ingest_issue')),
    sa.UniqueConstraint('source', 'position', 'reason', name=op.f('uq_ingest_issue_source_position_reason'))
    )
    op.create_table('release',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False, comment='staging | published | failed'),
    sa.Column('parent_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('recipe', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('counts', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('manifest_key', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['parent_id'], ['release.id'], name=op.f('fk_release_parent_id_release')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_release')),
    sa.UniqueConstraint('name', name=op.f('uq_release_name'))
    )
    op.create_table('sample',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('pair_hash', sa.String(length=32), nullable=False, comment='hash of normalised URL + caption: one row per pair'),
    sa.Column('url_id', sa.String(length=32), nullable=False, comment='stable hash of the normalised URL (the public sample id)'),
    sa.Column('taisu_id', sa.String(length=64), nullable=True, comment="TaiSu's URL-slice id or the id in TaiSu's release"),
    sa.Column('url', sa.Text(), nullable=True, comment='normalised URL; NULL for images ingested from archives'),
    sa.Column('caption', sa.Text(), nullable=False, comment='web caption as ingested'),
    sa.Column('caption_clean', sa.Text(), nullable=True, comment="web caption after the text filter's clean-up, when it differs"),
    sa.Column('caption_hash', sa.String(length=16), nullable=False, comment='hash of the normalised caption: counts over-frequent captions'),
    sa.Column('source', sa.Text(), nullable=False, comment='input file or source name'),
    sa.Column('source_pos', sa.Text(), nullable=True, comment='line, row or archive member within the source'),
    sa.Column('object_key', sa.Text(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('phash', sa.String(length=16), nullable=True),
    sa.Column('width', sa.Integer(), nullable=True),
    sa.Column('height', sa.Integer(), nullable=True),
    sa.Column('bytes', sa.Integer(), nullable=True),
    sa.Column('format', sa.String(length=8), nullable=True),
    sa.Column('http_status', sa.Integer(), nullable=True),
    sa.Column('fetched_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('duplicate_of', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('score_model', sa.String(length=128), nullable=True),
    sa.Column('gen_caption', sa.Text(), nullable=True),
    sa.Column('gen_caption_model', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['duplicate_of'], ['sample.id'], name=op.f('fk_sample_duplicate_of_sample')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sample')),
    sa.UniqueConstraint('pair_hash', name=op.f('uq_sample_pair_hash'))
    )
    with op.batch_alter_table('sample', schema=None) as batch_op:
        batch_op.create_index('ix_sample_caption_hash', ['caption_hash'], unique=False)
        batch_op.create_index('ix_sample_phash', ['phash'], unique=False, postgresql_where=sa.text('phash IS NOT NULL'), sqlite_where=sa.text('phash IS NOT NULL'))
        batch_op.create_index('ix_sample_sha256', ['sha256'], unique=False, postgresql_where=sa.text('sha256 IS NOT NULL'), sqlite_where=sa.text('sha256 IS NOT NULL'))
        batch_op.create_index('ix_sample_taisu_id', ['taisu_id'], unique=False, postgresql_where=sa.text('taisu_id IS NOT NULL'), sqlite_where=sa.text('taisu_id IS NOT NULL'))
        batch_op.create_index('ix_sample_url_id', ['url_id'], unique=False)

    op.create_table('sample_event',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('sample_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=False),
    sa.Column('from_state', sa.String(length=24), nullable=True),
    sa.Column('to_state', sa.String(length=24), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('details', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('dag_id', sa.String(length=250), nullable=True),
    sa.Column('run_id', sa.String(length=250), nullable=True),
    sa.Column('task_id', sa.String(length=250), nullable=True),
    sa.Column('map_index', sa.Integer(), nullable=True),
    sa.Column('try_number', sa.Integer(), nullable=True),
    sa.Column('worker', sa.String(length=128), nullable=True, comment='host:pid of the process that decided'),
    sa.Column('recipe_version', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sample_event'))
    )
    with op.batch_alter_table('sample_event', schema=None) as batch_op:
        batch_op.create_index('ix_sample_event_sample_id', ['sample_id'], unique=False)

    op.create_table('takedown_request',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('requester', sa.Text(), nullable=False),
    sa.Column('contact', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False, comment='url | sha256 | phash | sample'),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='received', nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('details', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_takedown_request'))
    )
    op.create_table('blocklist',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False, comment='url | sha256 | phash'),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('takedown_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['takedown_id'], ['takedown_request.id'], name=op.f('fk_blocklist_takedown_id_takedown_request')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_blocklist')),
    sa.UniqueConstraint('kind', 'value', name=op.f('uq_blocklist_kind_value'))
    )
    op.create_table('release_member',
    sa.Column('release_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('sample_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('shard', sa.String(length=64), nullable=False, comment='file name of the release shard'),
    sa.ForeignKeyConstraint(['release_id'], ['release.id'], name=op.f('fk_release_member_release_id_release'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['sample_id'], ['sample.id'], name=op.f('fk_release_member_sample_id_sample')),
    sa.PrimaryKeyConstraint('release_id', 'sample_id', name=op.f('pk_release_member'))
    )
    with op.batch_alter_table('release_member', schema=None) as batch_op:
        batch_op.create_index('ix_release_member_sample_id', ['sample_id'], unique=False)

    op.create_table('sample_state',
    sa.Column('sample_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('shard', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=24), nullable=False),
    sa.Column('last_reason', sa.String(length=32), nullable=True, comment='reason code of the latest event'),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['sample_id'], ['sample.id'], name=op.f('fk_sample_state_sample_id_sample')),
    sa.PrimaryKeyConstraint('sample_id', name=op.f('pk_sample_state'))
    )
    with op.batch_alter_table('sample_state', schema=None) as batch_op:
        batch_op.create_index('ix_sample_state_shard_state', ['shard', 'state', 'sample_id'], unique=False)
    for name, select in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {select}")


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table('sample_state', schema=None) as batch_op:
        batch_op.drop_index('ix_sample_state_shard_state')

    op.drop_table('sample_state')
    with op.batch_alter_table('release_member', schema=None) as batch_op:
        batch_op.drop_index('ix_release_member_sample_id')

    op.drop_table('release_member')
    op.drop_table('blocklist')
    op.drop_table('takedown_request')
    with op.batch_alter_table('sample_event', schema=None) as batch_op:
        batch_op.drop_index('ix_sample_event_sample_id')

    op.drop_table('sample_event')
    with op.batch_alter_table('sample', schema=None) as batch_op:
        batch_op.drop_index('ix_sample_url_id')
        batch_op.drop_index('ix_sample_taisu_id', postgresql_where=sa.text('taisu_id IS NOT NULL'), sqlite_where=sa.text('taisu_id IS NOT NULL'))
        batch_op.drop_index('ix_sample_sha256', postgresql_where=sa.text('sha256 IS NOT NULL'), sqlite_where=sa.text('sha256 IS NOT NULL'))
        batch_op.drop_index('ix_sample_phash', postgresql_where=sa.text('phash IS NOT NULL'), sqlite_where=sa.text('phash IS NOT NULL'))
        batch_op.drop_index('ix_sample_caption_hash')

    op.drop_table('sample')
    op.drop_table('release')
    op.drop_table('ingest_issue')
    with op.batch_alter_table('image_band', schema=None) as batch_op:
        batch_op.drop_index('ix_image_band_band_value')

    op.drop_table('image_band')
    op.drop_table('domain_state')
