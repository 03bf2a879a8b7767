"""takedown workflow, release versions, provenance views

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import importlib

import sqlalchemy as sa
from alembic import op

from taisu_etl.db import views

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
Ts = sa.DateTime(timezone=True)


def _initial_views() -> dict[str, str]:
    return importlib.import_module('taisu_etl.db.migrations.versions.0001_initial_ledger_schema').VIEWS


def _backfill_band_phash() -> None:
    """Each band row gets its image's whole pHash (from `sample.phash`)."""
    if op.get_context().dialect.name == 'postgresql':
        op.execute("UPDATE image_band b SET phash = ('x' || s.phash)::bit(64)::bigint FROM sample s "
                   "WHERE s.id = b.sample_id AND s.phash IS NOT NULL")
        return
    if op.get_context().as_sql:
        return
    from taisu_etl.images.dedup import phash_int64

    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT DISTINCT b.sample_id, s.phash FROM image_band b JOIN sample s ON s.id = b.sample_id "
                                "WHERE s.phash IS NOT NULL")).all()
    if rows:
        conn.execute(sa.text("UPDATE image_band SET phash = :p WHERE sample_id = :i"),
                     [{"i": sid, "p": phash_int64(ph)} for sid, ph in rows])


def upgrade() -> None:
    views.uninstall(op, _initial_views())
    with op.batch_alter_table('release', schema=None) as batch_op:
        batch_op.add_column(sa.Column('version', sa.Integer(), server_default='1', nullable=False,
                                      comment='1 when published; +1 per takedown patch'))
        batch_op.add_column(sa.Column('withdrawn_at', Ts, nullable=True))
        batch_op.alter_column('state', existing_type=sa.String(length=16), existing_nullable=False,
                              comment='staging | published | failed | withdrawn',
                              existing_comment='staging | published | failed')
    with op.batch_alter_table('image_band', schema=None) as batch_op:
        batch_op.add_column(sa.Column('phash', sa.BigInteger(), nullable=True,
                                      comment='the whole pHash as a signed 64-bit integer: candidates are checked in the index'))
        batch_op.drop_index('ix_image_band_band_value')
    _backfill_band_phash()
    with op.batch_alter_table('image_band', schema=None) as batch_op:
        batch_op.create_index('ix_image_band_lookup', ['band', 'value', 'phash', 'sample_id'], unique=False)
    with op.batch_alter_table('sample', schema=None) as batch_op:
        batch_op.create_index('ix_sample_duplicate_of', ['duplicate_of'], unique=False,
                              postgresql_where=sa.text('duplicate_of IS NOT NULL'), sqlite_where=sa.text('duplicate_of IS NOT NULL'))
    with op.batch_alter_table('release_member', schema=None) as batch_op:
        batch_op.add_column(sa.Column('removed_in_version', sa.Integer(), nullable=True,
                                      comment='first release version without the sample (a takedown patch); NULL while it is in'))
    with op.batch_alter_table('takedown_request', schema=None) as batch_op:
        batch_op.alter_column('kind', existing_type=sa.String(length=16), existing_nullable=False,
                              comment='sample | taisu_id | url | sha256 | image | domain',
                              existing_comment='url | sha256 | phash | sample')
        batch_op.alter_column('value', existing_type=sa.Text(), existing_nullable=False,
                              comment='the selector: id, normalised URL, hex digest, host; image: its sha256')
        batch_op.alter_column('status', existing_type=sa.String(length=16), existing_nullable=False,
                              existing_server_default='received',
                              comment='received | matched | processed | verified | rejected')
        batch_op.add_column(sa.Column('reference', sa.Text(), nullable=True, comment="the requester's reference, e.g. an e-mail id"))
        batch_op.add_column(sa.Column('channel', sa.Text(), nullable=True, comment='cli | airflow | FILE:LINE of a bulk import'))
        batch_op.add_column(sa.Column('status_detail', sa.Text(), nullable=True, comment='why rejected, or what the last step found'))
        batch_op.add_column(sa.Column('matched_at', Ts, nullable=True))
        batch_op.add_column(sa.Column('verified_at', Ts, nullable=True))
        batch_op.create_index('ix_takedown_request_status', ['status'], unique=False)
    with op.batch_alter_table('blocklist', schema=None) as batch_op:
        batch_op.alter_column('kind', existing_type=sa.String(length=16), existing_nullable=False,
                              comment='url | sha256 | phash | host', existing_comment='url | sha256 | phash')
        batch_op.add_column(sa.Column('sample_id', BigId, nullable=True, comment='the sample the value was taken from, if any'))
        batch_op.create_index('ix_blocklist_takedown_id', ['takedown_id'], unique=False)
    op.create_table('release_version',
    sa.Column('release_id', BigId, nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('manifest_key', sa.Text(), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('takedown_id', BigId, nullable=True, comment='the request that made this version'),
    sa.Column('created_at', Ts, server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['release_id'], ['release.id'], name=op.f('fk_release_version_release_id_release'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['takedown_id'], ['takedown_request.id'], name=op.f('fk_release_version_takedown_id_takedown_request')),
    sa.PrimaryKeyConstraint('release_id', 'version', name=op.f('pk_release_version'))
    )
    op.create_table('takedown_match',
    sa.Column('takedown_id', BigId, nullable=False),
    sa.Column('sample_id', BigId, nullable=False),
    sa.Column('how', sa.String(length=16), nullable=False, comment='sample | taisu_id | url | sha256 | phash | duplicate_of | domain'),
    sa.Column('distance', sa.SmallInteger(), nullable=True, comment='Hamming distance of the perceptual hashes (phash matches)'),
    sa.Column('matched_at', Ts, server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['sample_id'], ['sample.id'], name=op.f('fk_takedown_match_sample_id_sample')),
    sa.ForeignKeyConstraint(['takedown_id'], ['takedown_request.id'], name=op.f('fk_takedown_match_takedown_id_takedown_request')),
    sa.PrimaryKeyConstraint('takedown_id', 'sample_id', name=op.f('pk_takedown_match'))
    )
    with op.batch_alter_table('takedown_match', schema=None) as batch_op:
        batch_op.create_index('ix_takedown_match_sample_id', ['sample_id'], unique=False)
    op.create_table('takedown_object',
    sa.Column('takedown_id', BigId, nullable=False),
    sa.Column('object_key', sa.Text(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False, comment='image | embeddings | release_file'),
    sa.Column('action', sa.String(length=16), nullable=False, comment='deleted | rewritten'),
    sa.Column('versions_deleted', sa.Integer(), server_default='0', nullable=False),
    sa.Column('deleted_at', Ts, server_default=sa.func.now(), nullable=False),
    sa.Column('verified_at', Ts, nullable=True),
    sa.Column('versions_left', sa.Integer(), nullable=True, comment='versions found by the verification: 0 for deleted, 1 for rewritten'),
    sa.ForeignKeyConstraint(['takedown_id'], ['takedown_request.id'], name=op.f('fk_takedown_object_takedown_id_takedown_request')),
    sa.PrimaryKeyConstraint('takedown_id', 'object_key', name=op.f('pk_takedown_object'))
    )
    op.create_table('takedown_release',
    sa.Column('takedown_id', BigId, nullable=False),
    sa.Column('release_id', BigId, nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False, comment='patched | withdrawn'),
    sa.Column('from_version', sa.Integer(), nullable=False),
    sa.Column('to_version', sa.Integer(), nullable=True),
    sa.Column('samples_removed', sa.Integer(), nullable=False),
    sa.Column('shards_rewritten', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', Ts, server_default=sa.func.now(), nullable=False),
    sa.ForeignKeyConstraint(['release_id'], ['release.id'], name=op.f('fk_takedown_release_release_id_release')),
    sa.ForeignKeyConstraint(['takedown_id'], ['takedown_request.id'], name=op.f('fk_takedown_release_takedown_id_takedown_request')),
    sa.PrimaryKeyConstraint('takedown_id', 'release_id', name=op.f('pk_takedown_release'))
    )
    # Releases published before versions existed are version 1.
    op.execute(
        "INSERT INTO release_version (release_id, version, manifest_key, manifest_sha256, samples, created_at) "
        "SELECT r.id, 1, r.manifest_key, '', (SELECT COUNT(*) FROM release_member m WHERE m.release_id = r.id), "
        "COALESCE(r.published_at, r.created_at) FROM release r WHERE r.state = 'published' AND r.manifest_key IS NOT NULL"
    )
    views.install(op)


def downgrade() -> None:
    views.uninstall(op)
    op.drop_table('takedown_release')
    op.drop_table('takedown_object')
    with op.batch_alter_table('takedown_match', schema=None) as batch_op:
        batch_op.drop_index('ix_takedown_match_sample_id')
    op.drop_table('takedown_match')
    op.drop_table('release_version')
    with op.batch_alter_table('blocklist', schema=None) as batch_op:
        batch_op.drop_index('ix_blocklist_takedown_id')
        batch_op.drop_column('sample_id')
    with op.batch_alter_table('takedown_request', schema=None) as batch_op:
        batch_op.drop_index('ix_takedown_request_status')
        for column in ('verified_at', 'matched_at', 'status_detail', 'channel', 'reference'):
            batch_op.drop_column(column)
    with op.batch_alter_table('release_member', schema=None) as batch_op:
        batch_op.drop_column('removed_in_version')
    with op.batch_alter_table('image_band', schema=None) as batch_op:
        batch_op.drop_index('ix_image_band_lookup')
        batch_op.drop_column('phash')
        batch_op.create_index('ix_image_band_band_value', ['band', 'value'], unique=False)
    with op.batch_alter_table('sample', schema=None) as batch_op:
        batch_op.drop_index('ix_sample_duplicate_of', postgresql_where=sa.text('duplicate_of IS NOT NULL'),
                            sqlite_where=sa.text('duplicate_of IS NOT NULL'))
    with op.batch_alter_table('release', schema=None) as batch_op:
        batch_op.drop_column('withdrawn_at')
        batch_op.drop_column('version')
    for name, select in _initial_views().items():
        op.execute(f"CREATE VIEW {name} AS {select}")
