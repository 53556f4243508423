"""Guards that make a migration safe to run again where DDL is not transactional (MariaDB).

PostgreSQL and SQLite run a migration in one transaction: it applies whole or not at all.
A database without transactional DDL (MariaDB) commits every DDL statement at once, so a
migration that fails part-way (a lost connection, a full disk) leaves some of its tables,
columns or indexes behind while ``alembic_version`` still names the revision before. Each step
of a migration is therefore guarded by one of these checks, and running ``db upgrade`` again completes the revision
instead of failing on what already exists. On the other two databases the checks always
find the step still to do.
"""

from __future__ import annotations

from typing import Any

from alembic import op
from sqlalchemy import Column, inspect

from etl.db.dialects import TABLE_OPTIONS, dialect_for, partial_index_where
from etl.db.models import OPEN_GRANT_INDEX, open_grant_stand_in


def missing_table(name: str) -> bool:
    """True unless the table exists."""
    return not inspect(op.get_bind()).has_table(name)


def missing_column(table: str, column: str) -> bool:
    """True unless the table has the column."""
    return column not in {c["name"] for c in inspect(op.get_bind()).get_columns(table)}


def missing_index(table: str, name: str) -> bool:
    """True unless the table has an index (or a unique key) of this name."""
    inspector = inspect(op.get_bind())
    names = {i["name"] for i in inspector.get_indexes(table)}
    return name not in names | {u["name"] for u in inspector.get_unique_constraints(table)}


def missing_view(name: str) -> bool:
    """True unless the view exists."""
    return name not in inspect(op.get_bind()).get_view_names()


def create_table(name: str, *items: Any) -> None:
    """``op.create_table`` unless the table exists; on MariaDB with the models' table options."""
    if missing_table(name):
        options: dict[str, Any] = TABLE_OPTIONS
        op.create_table(name, *items, **options)


def create_index(table: str, name: str, columns: list[str], **options: Any) -> None:
    """``op.create_index`` unless the table has an index of this name."""
    if missing_index(table, name):
        op.create_index(name, table, columns, **options)


def add_column(table: str, column: Column[Any]) -> None:
    """``op.add_column`` unless the table has the column."""
    if missing_column(table, column.name):
        op.add_column(table, column)


def create_view(name: str, query: str) -> None:
    """``CREATE VIEW`` unless the view exists."""
    if missing_view(name):
        op.execute(f"CREATE VIEW {name} AS {query}")


def create_open_grant_index() -> None:
    """"At most one open grant per connection and permission": a partial unique index, or the stand-in for
    one where the database has none (MariaDB)."""
    dialect = op.get_bind().dialect
    if not dialect_for(dialect).supports_partial_index:
        for statement in open_grant_stand_in(dialect):  # IF NOT EXISTS: safe to run again
            op.execute(statement)
        return
    create_index("permission_grants", OPEN_GRANT_INDEX, ["connection_id", "permission"], unique=True,
                 **partial_index_where("valid_to IS NULL"))
