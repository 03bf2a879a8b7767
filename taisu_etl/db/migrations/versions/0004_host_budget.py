"""host budget: per-host rate slots and concurrency grants shared by every fetch process

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('host_budget',
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('next_slot', sa.Double(), nullable=False, comment="database-clock Unix time of the host's next unreserved request slot"),
    sa.PrimaryKeyConstraint('host', name=op.f('pk_host_budget'))
    )
    op.create_table('host_grant',
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False, comment='the fetch process holding the grant (a lease owner token: label@host:pid:start)'),
    sa.Column('units', sa.Integer(), nullable=False, comment='requests the owner may have open to the host at once'),
    sa.Column('wanted', sa.Integer(), nullable=False, comment="units the owner could use: the others' fair share counts it"),
    sa.Column('expires_at', sa.Double(), nullable=False, comment="database-clock Unix time; a crashed owner's units are free after it"),
    sa.PrimaryKeyConstraint('host', 'owner', name=op.f('pk_host_grant'))
    )
    with op.batch_alter_table('host_grant', schema=None) as batch_op:
        batch_op.create_index('ix_host_grant_owner', ['owner'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('host_grant', schema=None) as batch_op:
        batch_op.drop_index('ix_host_grant_owner')
    op.drop_table('host_grant')
    op.drop_table('host_budget')
