"""The archive_versions view: archive spans with their last sighting, for SQL.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 05:10:00.000000

An unchanged pass writes nothing to the archive: while a span is its connection's current one
(``connections.archive_span_id``), its last sighting is the connection's ``last_success_at``, and the
span's own ``last_seen_at`` is written when it ends. The view gives the last sighting either way.
Plain SQL that SQLite, PostgreSQL and MariaDB all understand; it holds no data, so it can be dropped and
created again freely.
"""

from collections.abc import Sequence

from alembic import op

from etl.db.migrating import create_view

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = {
    # One row per span: a connection's run of identical observations (document NULL: the API answered 404).
    "archive_versions": """
        SELECT s.id AS span_id, s.connection_id, s.body_id, b.digest, b.size, b.rejected,
               s.first_seen_at,
               CASE WHEN c.archive_span_id = s.id AND c.last_success_at > s.last_seen_at
                    THEN c.last_success_at ELSE s.last_seen_at END AS last_seen_at,
               CASE WHEN c.archive_span_id = s.id THEN 1 ELSE 0 END AS is_current,
               s.run_id
        FROM archive_spans s
        JOIN connections c ON c.id = s.connection_id
        LEFT JOIN archive_bodies b ON b.id = s.body_id
    """,
}


def upgrade() -> None:
    for name, query in VIEWS.items():
        create_view(name, query)


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
