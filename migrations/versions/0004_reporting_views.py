"""Reporting views: current_permissions, connection_overview, permission_change_log.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 15:00:00

Plain SQL that SQLite, PostgreSQL and MariaDB all understand (``pc.change`` needs no quotes on
MariaDB, where ``change`` is a reserved word: a name after a dot is always an identifier); the views hold no data of
their own, so they can be dropped and created again freely.
"""

from collections.abc import Sequence

from alembic import op

from etl.db.migrating import create_view

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = {
    # Who holds what now: one row per open grant, with user and vehicle.
    "current_permissions": """
        SELECT g.connection_id, c.user_id, c.vehicle_id, v.make, v.model, g.permission,
               g.valid_from AS granted_since
        FROM permission_grants g
        JOIN connections c ON c.id = g.connection_id
        LEFT JOIN vehicles v ON v.id = c.vehicle_id
        WHERE g.valid_to IS NULL
    """,
    # One row per connection: user, vehicle attributes, status, open permission count, health.
    "connection_overview": """
        SELECT c.id AS connection_id, c.user_id, c.vehicle_id, v.make, v.model, v.year, v.mode,
               v.powertrain_type, c.status, c.tracked,
               (SELECT COUNT(*) FROM permission_grants g
                WHERE g.connection_id = c.id AND g.valid_to IS NULL) AS permission_count,
               c.first_seen_at, c.last_success_at, c.last_attempt_at, c.last_error
        FROM connections c
        LEFT JOIN vehicles v ON v.id = c.vehicle_id
    """,
    # Every permission change with the connection's user and vehicle.
    "permission_change_log": """
        SELECT pc.id, pc.observed_at, pc.previous_observed_at, pc.change, pc.permission, pc.connection_id,
               c.user_id, c.vehicle_id, v.make, v.model, v.powertrain_type, pc.source_updated_at, pc.run_id
        FROM permission_changes pc
        JOIN connections c ON c.id = pc.connection_id
        LEFT JOIN vehicles v ON v.id = c.vehicle_id
    """,
}


def upgrade() -> None:
    for name, query in VIEWS.items():
        create_view(name, query)  # skipped where it exists: safe to run again after a failure on MariaDB


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
