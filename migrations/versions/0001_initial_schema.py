"""Initial schema: users, vehicles, connections, permission history, runs and errors.

Revision ID: 0001
Revises:
Create Date: 2026-11-28 13:43:01.056450

Every step is skipped where it is already done (``etl.db.migrating``): MariaDB commits each DDL
statement at once, so a failed upgrade is completed by running it again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import etl.db.models
from etl.db.migrating import create_index, create_open_grant_index, create_table

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_table('sync_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('started_at', etl.db.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', etl.db.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('connections_planned', sa.Integer(), server_default='0', nullable=False),
    sa.Column('connections_fetched', sa.Integer(), server_default='0', nullable=False),
    sa.Column('connections_changed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('connections_deleted', sa.Integer(), server_default='0', nullable=False),
    sa.Column('connections_failed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('permissions_granted', sa.Integer(), server_default='0', nullable=False),
    sa.Column('permissions_revoked', sa.Integer(), server_default='0', nullable=False),
    sa.Column('requests', sa.Integer(), server_default='0', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('running', 'succeeded', 'partial', 'failed', 'aborted')", name=op.f('ck_sync_runs_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_runs'))
    )
    create_index('sync_runs', 'ix_sync_runs_started_at', ['started_at'])

    create_table('users',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('first_seen_at', etl.db.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', etl.db.models.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users'))
    )
    create_table('vehicles',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('make', sa.Text(), nullable=True),
    sa.Column('model', sa.Text(), nullable=True),
    sa.Column('year', sa.Integer(), nullable=True),
    sa.Column('mode', sa.Text(), nullable=True),
    sa.Column('powertrain_type', sa.Text(), nullable=True),
    sa.Column('first_seen_at', etl.db.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', etl.db.models.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vehicles'))
    )
    create_table('connections',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('user_id', sa.String(length=36), nullable=True),
    sa.Column('vehicle_id', sa.String(length=36), nullable=True),
    sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('tracked', sa.Boolean(), server_default=sa.text('(true)'), nullable=False),
    sa.Column('tracked_at', etl.db.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('source_created_at', etl.db.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('source_updated_at', etl.db.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('first_seen_at', etl.db.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('last_seen_at', etl.db.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('last_success_at', etl.db.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('last_attempt_at', etl.db.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'active', 'deleted')", name=op.f('ck_connections_status')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_connections_user_id_users')),
    sa.ForeignKeyConstraint(['vehicle_id'], ['vehicles.id'], name=op.f('fk_connections_vehicle_id_vehicles')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_connections'))
    )
    create_index('connections', 'ix_connections_status', ['status'])
    create_index('connections', 'ix_connections_user_id', ['user_id'])
    create_index('connections', 'ix_connections_vehicle_id', ['vehicle_id'])

    create_table('fetch_errors',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('connection_id', sa.String(length=36), nullable=False),
    sa.Column('occurred_at', etl.db.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('http_status', sa.Integer(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['connection_id'], ['connections.id'], name=op.f('fk_fetch_errors_connection_id_connections')),
    sa.ForeignKeyConstraint(['run_id'], ['sync_runs.id'], name=op.f('fk_fetch_errors_run_id_sync_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fetch_errors'))
    )
    create_index('fetch_errors', 'ix_fetch_errors_connection_id_occurred_at', ['connection_id', 'occurred_at'])
    create_index('fetch_errors', 'ix_fetch_errors_run_id', ['run_id'])

    create_table('permission_changes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('connection_id', sa.String(length=36), nullable=False),
    sa.Column('permission', sa.String(length=100), nullable=False),
    sa.Column('change', sa.String(length=8), nullable=False),
    sa.Column('observed_at', etl.db.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('previous_observed_at', etl.db.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('source_updated_at', etl.db.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('run_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.CheckConstraint(sa.column('change').in_(('granted', 'revoked')), name=op.f('ck_permission_changes_change')),
    sa.ForeignKeyConstraint(['connection_id'], ['connections.id'], name=op.f('fk_permission_changes_connection_id_connections')),
    sa.ForeignKeyConstraint(['run_id'], ['sync_runs.id'], name=op.f('fk_permission_changes_run_id_sync_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_permission_changes'))
    )
    create_index('permission_changes', 'ix_permission_changes_connection_id_permission_observed_at', ['connection_id', 'permission', 'observed_at'])
    create_index('permission_changes', 'ix_permission_changes_observed_at', ['observed_at'])

    create_table('permission_grants',
    sa.Column('connection_id', sa.String(length=36), nullable=False),
    sa.Column('permission', sa.String(length=100), nullable=False),
    sa.Column('valid_from', etl.db.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('valid_to', etl.db.models.UtcDateTime(timezone=True), nullable=True),
    sa.CheckConstraint('valid_to IS NULL OR valid_to > valid_from', name=op.f('ck_permission_grants_interval')),
    sa.ForeignKeyConstraint(['connection_id'], ['connections.id'], name=op.f('fk_permission_grants_connection_id_connections')),
    sa.PrimaryKeyConstraint('connection_id', 'permission', 'valid_from', name=op.f('pk_permission_grants'))
    )
    create_index('permission_grants', 'ix_permission_grants_permission_valid_from', ['permission', 'valid_from'])
    create_open_grant_index()



def downgrade() -> None:
    # A table's indexes go with it (MariaDB refuses to drop one that a foreign key needs).
    for table in ('permission_grants', 'permission_changes', 'fetch_errors', 'connections', 'vehicles', 'users',
                  'sync_runs'):
        op.drop_table(table)
