"""The rate budget kept in the database (one token bucket per application); per run, the connections
deferred by --max-duration and the wall time spent waiting for the rate limit.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 19:35:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import etl.db.models
from etl.db.migrating import add_column, create_table

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Each step is skipped where already done: safe to run again after a failure on MariaDB.
    create_table(
        'rate_budgets',
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('capacity', sa.Float(), nullable=False),
        sa.Column('per_second', sa.Float(), nullable=False),
        sa.Column('tokens', sa.Float(), nullable=False),
        sa.Column('updated_at', etl.db.models.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_rate_budgets')),
    )
    add_column('sync_runs', sa.Column('connections_deferred', sa.Integer(), server_default='0', nullable=False))
    add_column('sync_runs', sa.Column('rate_limit_wait_seconds', sa.Float(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_column('rate_limit_wait_seconds')
        batch_op.drop_column('connections_deferred')
    op.drop_table('rate_budgets')
