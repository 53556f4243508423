"""Per-connection cadence (next_due_at, consecutive_failures) and the process that owns a run.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 14:20:26.408055
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import etl.db.models

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.add_column(sa.Column('next_due_at', etl.db.models.UtcDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('consecutive_failures', sa.Integer(), server_default='0', nullable=False))
        batch_op.create_index(batch_op.f('ix_connections_next_due_at'), ['next_due_at'], unique=False)

    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pid', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('host', sa.Text(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_column('host')
        batch_op.drop_column('pid')

    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_connections_next_due_at'))
        batch_op.drop_column('consecutive_failures')
        batch_op.drop_column('next_due_at')

