"""Several Smartcar applications in one database: connections, runs and backfills name their application
(existing rows: ``default``), the single application's rate budget is keyed by its name, and daemons claim
each firing of an application's schedule in ``application_firings``.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 11:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import etl.db.models
from etl.db.migrating import add_column, create_index, create_table

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The keys the single application's bucket had before it was keyed by the application's name.
DERIVED_KEYS = ("access-token", "client:%", "client-sha256:%")


def upgrade() -> None:
    # Each step is skipped where already done: safe to run again after a failure on MariaDB.
    for table in ('connections', 'sync_runs', 'backfills'):
        add_column(table, sa.Column('application', sa.String(length=40), server_default='default', nullable=False))
    create_index('connections', 'ix_connections_application_status', ['application', 'status'])
    create_table(
        'application_firings',
        sa.Column('application', sa.String(length=40), nullable=False),
        sa.Column('last_firing_at', etl.db.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column('claimed_by', sa.Text(), nullable=True),
        sa.Column('claimed_at', etl.db.models.UtcDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('application', name=op.f('pk_application_firings')),
    )
    # The one bucket of a database made for one application becomes the bucket of `default` (a key set in
    # rate_limit.key is the user's and stays).
    bind = op.get_bind()
    budgets = sa.table('rate_budgets', sa.column('key', sa.String))
    derived = sa.or_(*(budgets.c.key.like(k) if '%' in k else budgets.c.key == k for k in DERIVED_KEYS))
    keys = list(bind.execute(sa.select(budgets.c.key)).scalars())
    ours = list(bind.execute(sa.select(budgets.c.key).where(derived)).scalars())
    if len(ours) == 1 and 'default' not in keys:
        bind.execute(sa.update(budgets).where(budgets.c.key == ours[0]).values(key='default'))


def downgrade() -> None:
    op.drop_table('application_firings')
    op.drop_index('ix_connections_application_status', table_name='connections')
    for table in ('backfills', 'sync_runs', 'connections'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('application')
