"""What kind of change each permission change is, and from when the mirror knows each connection.

``permission_changes.kind``: ``first_seen``, ``granted``, ``revoked``, ``disconnected`` or ``reconnected``,
written by the history code from now on. For the past it is filled where the rows or the archive tell:
a grant without a previous observation is a first observation; a revocation that a 404 made (an archived
404 covers it) is a disconnection, one an archived document covers is a revocation; a grant whose previous
observation was an archived 404 is a return, one whose previous observation was an archived document a
grant. The rest stays NULL (the archive was off, or does not reach back).

The ``connection_coverage`` view: each connection, its application, when it existed from by the API's own
``createdAt`` and when the mirror first observed it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 11:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from etl.db.migrating import add_column, create_view

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = {
    # Each connection: its application, when it existed from (the API's createdAt; NULL: unknown) and when
    # the mirror first observed it (NULL: never answered). Between the two its permissions are unknown.
    "connection_coverage": """
        SELECT c.id AS connection_id, c.application, c.source_created_at AS existed_from,
               c.first_seen_at AS observed_from
        FROM connections c
    """,
}

# An archived observation of the change's connection at a time: a 404 (no body) or a document.
_COVERED = """EXISTS (SELECT 1 FROM archive_versions v WHERE v.connection_id = permission_changes.connection_id
                AND v.body_id IS {body} AND v.first_seen_at <= permission_changes.{at}
                AND v.last_seen_at >= permission_changes.{at})"""
FILLS = (
    ("first_seen", "permission_changes.change = 'granted' AND previous_observed_at IS NULL"),
    ("disconnected", "permission_changes.change = 'revoked' AND " + _COVERED.format(body="NULL", at="observed_at")),
    ("revoked", "permission_changes.change = 'revoked' AND " + _COVERED.format(body="NOT NULL", at="observed_at")),
    ("reconnected", "permission_changes.change = 'granted' AND " + _COVERED.format(body="NULL", at="previous_observed_at")),
    ("granted", "permission_changes.change = 'granted' AND " + _COVERED.format(body="NOT NULL", at="previous_observed_at")),
)


def upgrade() -> None:
    add_column('permission_changes', sa.Column('kind', sa.String(length=16), nullable=True))
    # ``change`` is a reserved word on MariaDB: written after its table's name it is always the column.
    for kind, condition in FILLS:  # the first that applies wins; re-running fills only what is still NULL
        op.execute(f"UPDATE permission_changes SET kind = '{kind}' WHERE kind IS NULL AND {condition}")
    for name, query in VIEWS.items():
        create_view(name, query)


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table('permission_changes', schema=None) as batch_op:
        batch_op.drop_column('kind')
