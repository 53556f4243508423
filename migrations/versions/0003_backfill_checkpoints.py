"""Backfill checkpoints: the backfills table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 14:48:14.818119
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import etl.db.models
from etl.db.migrating import create_index, create_table

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Each step is skipped where already done: safe to run again after a failure on MariaDB.
    create_table('backfills',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('total', sa.Integer(), nullable=True),
    sa.Column('next_page', sa.Integer(), nullable=True),
    sa.Column('started_at', etl.db.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', etl.db.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('last_run_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.CheckConstraint("kind IN ('ids', 'all')", name=op.f('ck_backfills_kind')),
    sa.CheckConstraint("status IN ('running', 'done', 'abandoned')", name=op.f('ck_backfills_status')),
    sa.ForeignKeyConstraint(['last_run_id'], ['sync_runs.id'], name=op.f('fk_backfills_last_run_id_sync_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_backfills'))
    )
    create_index('backfills', 'ix_backfills_kind_fingerprint_status', ['kind', 'fingerprint', 'status'])



def downgrade() -> None:
    with op.batch_alter_table('backfills', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_backfills_kind_fingerprint_status'))

    op.drop_table('backfills')
