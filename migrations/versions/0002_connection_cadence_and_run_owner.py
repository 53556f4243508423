"""Per-connection cadence (next_due_at, consecutive_failures) and the process that owns a run.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 14:20:26.408055
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import etl.db.models
from etl.db.migrating import add_column, create_index

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Each step is skipped where already done: safe to run again after a failure on MariaDB.
    add_column('connections', sa.Column('next_due_at', etl.db.models.UtcDateTime(timezone=True), nullable=True))
    add_column('connections', sa.Column('consecutive_failures', sa.Integer(), server_default='0', nullable=False))
    create_index('connections', 'ix_connections_next_due_at', ['next_due_at'])
    add_column('sync_runs', sa.Column('pid', sa.Integer(), nullable=True))
    add_column('sync_runs', sa.Column('host', sa.Text(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_column('host')
        batch_op.drop_column('pid')

    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_connections_next_due_at'))
        batch_op.drop_column('consecutive_failures')
        batch_op.drop_column('next_due_at')

