"""Databases of one's own on a shared server, for tests and benchmarks: created empty, dropped after.

Only databases whose name starts with the given prefix are ever dropped, so nothing that was
not created here is touched.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, pool, text
from sqlalchemy.engine import make_url

from etl.db.dialects import dialect_for, for_url, normalise_url
from etl.db.models import Base

# What a server database holds beside rows: one tuple of rows per query of ``Database.schema_queries``.
Schema = tuple[tuple[tuple[object, ...], ...], ...]


@contextmanager
def _engine(url: str, **options: object) -> Iterator[Engine]:
    """An engine on ``url`` for one short task, disposed after it."""
    engine = create_engine(normalise_url(url), **options)
    try:
        yield engine
    finally:
        engine.dispose()


def _run(admin_url: str, statement: str) -> None:
    with _engine(admin_url, isolation_level="AUTOCOMMIT") as admin, admin.connect() as conn:
        conn.execute(text(statement))


def create_database(admin_url: str, prefix: str = "etl_test_", template: str | None = None) -> str:
    """Create an empty database named ``prefix`` + random hex on the admin URL's server (on PostgreSQL
    optionally a copy of the ``template`` database); return its URL."""
    url = make_url(normalise_url(admin_url))
    name = f"{prefix}{uuid.uuid4().hex[:16]}"
    _run(admin_url, for_url(url).database_ddl(name, template)[0])
    return url.set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str, prefix: str = "etl_test_") -> None:
    """Drop a database that ``create_database`` made (with the same prefix)."""
    parsed = make_url(url)
    name = parsed.database
    assert name and name.startswith(prefix), f"not a scratch database: {name!r}"
    _run(admin_url, for_url(parsed).database_ddl(name)[1])


@contextmanager
def scratch_database(admin_url: str, prefix: str = "etl_test_", template: str | None = None) -> Iterator[str]:
    """The URL of a new empty database (or a copy of ``template``), dropped on leaving."""
    url = create_database(admin_url, prefix, template)
    try:
        yield url
    finally:
        drop_database(admin_url, url, prefix)


def schema_of(url: str) -> Schema:
    """What a server database holds beside rows: tables and views with their columns, constraints,
    indexes, triggers, routines and the Alembic revision (to see whether a test changed more than rows)."""
    with _engine(url, poolclass=pool.NullPool) as engine, engine.connect() as conn:
        return _schema(conn)


def emptied(url: str, schema: Schema) -> bool:
    """Delete every row of the job's tables and restart their ids, if the database's schema is still
    ``schema`` (``schema_of``); False, and nothing done, when it is not. One connection for both."""
    with _engine(url, poolclass=pool.NullPool) as engine, engine.begin() as conn:
        if _schema(conn) != schema:
            return False
        for statement in dialect_for(engine).emptying_statements([t.name for t in Base.metadata.sorted_tables]):
            conn.exec_driver_sql(statement)
    return True


def _schema(conn: Connection) -> Schema:
    return tuple(tuple(tuple(row) for row in conn.execute(text(query))) for query in dialect_for(conn).schema_queries())
