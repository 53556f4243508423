"""Dialect-specific statements, in one place, branching on ``dialect.name``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table, func
from sqlalchemy.dialects import postgresql, sqlite


def _insert(conn: Connection, table: Table) -> Any:
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    msg = f"unsupported database dialect {name!r}"
    raise NotImplementedError(msg)


def upsert(
    *,
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    key: Sequence[str],
    update: Sequence[str],
    keep_existing: Sequence[str] = (),
) -> None:
    """INSERT the rows; where ``key`` exists already, overwrite the ``update`` columns
    and fill the ``keep_existing`` ones only where they are still NULL.

    One executemany statement for the whole batch. ``rows`` must not repeat a key.
    """
    if not rows:
        return
    stmt = _insert(conn, table)
    set_: dict[str, Any] = {c: stmt.excluded[c] for c in update}
    set_.update({c: func.coalesce(table.c[c], stmt.excluded[c]) for c in keep_existing})
    if set_:
        stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=set_)
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(key))
    conn.execute(stmt, list(rows))
