"""The document archive: each distinct document of a connection once, and spans of identical observations.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 01:00:00.000000

Each step is skipped where already done (``etl.db.migrating``): safe to run again after a failure on MariaDB.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

import etl.db.models
from etl.db.dialects import MARIADB
from etl.db.migrating import add_column, create_index, create_table

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_table(
        'archive_bodies',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('connection_id', sa.String(length=36), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.Column('compressed', sa.Boolean(), nullable=False),
        sa.Column('body', sa.LargeBinary().with_variant(mysql.LONGBLOB(), *MARIADB), nullable=False),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('rejected', sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(['connection_id'], ['connections.id'],
                                name=op.f('fk_archive_bodies_connection_id_connections')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_archive_bodies')),
        sa.UniqueConstraint('connection_id', 'digest', name=op.f('uq_archive_bodies_connection_id_digest')),
    )
    create_table(
        'archive_spans',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('connection_id', sa.String(length=36), nullable=False),
        sa.Column('body_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
        sa.Column('first_seen_at', etl.db.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', etl.db.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column('run_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
        sa.ForeignKeyConstraint(['body_id'], ['archive_bodies.id'], name=op.f('fk_archive_spans_body_id_archive_bodies')),
        sa.ForeignKeyConstraint(['connection_id'], ['connections.id'],
                                name=op.f('fk_archive_spans_connection_id_connections')),
        sa.ForeignKeyConstraint(['run_id'], ['sync_runs.id'], name=op.f('fk_archive_spans_run_id_sync_runs')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_archive_spans')),
    )
    create_index('archive_spans', 'ix_archive_spans_connection_id_first_seen_at', ['connection_id', 'first_seen_at'])
    add_column('connections', sa.Column('archive_span_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                                        nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.drop_column('archive_span_id')
    op.drop_table('archive_spans')
    op.drop_table('archive_bodies')
