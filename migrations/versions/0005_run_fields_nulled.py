"""Count, per run, the descriptive fields stored as NULL because the API sent a value no column can hold.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 19:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from etl.db.migrating import add_column

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    add_column('sync_runs', sa.Column('fields_nulled', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_column('fields_nulled')
