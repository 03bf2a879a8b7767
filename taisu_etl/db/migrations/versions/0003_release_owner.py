"""release owner: who is creating a release, and its heartbeat

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from taisu_etl.db import views

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Staging rows from before keep a NULL owner and heartbeat: the next run takes them over.
    with op.batch_alter_table('release', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner', sa.String(length=128), nullable=True,
                                      comment='lease owner token of the run that claimed the name (label@host:pid:start)'))
        batch_op.add_column(sa.Column('owner_since', Ts, nullable=True, comment='when that run claimed it'))
        batch_op.add_column(sa.Column('heartbeat_at', Ts, nullable=True, comment="the owner's last renewal of its claim while staging"))


def downgrade() -> None:
    # SQLite drops a column by rebuilding the table, which the views on `release` would not survive.
    rebuild = op.get_context().dialect.name == 'sqlite'
    if rebuild:
        views.uninstall(op)
    with op.batch_alter_table('release', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('owner_since')
        batch_op.drop_column('owner')
    if rebuild:
        views.install(op)
