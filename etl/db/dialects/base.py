"""The common base of the database objects: what every database answers, and the capabilities code asks.

Each supported database is one subclass (``etl.db.dialects.sqlite``, ``.postgresql``, ``.mariadb``);
``etl.db.dialects.dialect_for`` picks the object for an engine, connection or SQLAlchemy dialect once,
and callers ask it, never the database's name. A capability is a plain class attribute, true where the
database does the thing; code that must branch asks the capability (as APScheduler 4's SQLAlchemy data
store keeps ``_supports_tzaware_timestamps`` and branches on that).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from sqlalchemy import ColumnElement, Connection, Engine, Table, exc, func, text
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.types import TypeEngine

from etl.errors import LockHeld

ErrorKind = Literal["unreachable", "rejected", "retry"]
# Execution option that makes a SQLite transaction take the write lock at BEGIN (BEGIN IMMEDIATE).
IMMEDIATE = "etl_immediate"
UTC = dt.UTC
SUPPORTED_URLS = ("sqlite:///PATH, postgresql://, postgresql+psycopg://, "
                  "mariadb:// or mysql:// (MariaDB 10.5+, through PyMySQL)")


class Database:
    """One supported database: how to connect to it, the SQL that differs, and what it can do."""

    name: ClassVar[str]  # the database's own name, for messages and tests
    backends: ClassVar[tuple[str, ...]]  # the SQLAlchemy dialect names (URL schemes) it serves
    drivers: ClassVar[tuple[str, ...]]  # the drivers accepted; the first is what a plain URL means

    # Capabilities: where code must branch, it asks one of these.
    supports_partial_index: ClassVar[bool] = False  # CREATE UNIQUE INDEX .. WHERE
    has_server_clock: ClassVar[bool] = False  # a clock shared by every host (``server_now``)
    has_copy: ClassVar[bool] = False  # a bulk load faster than executemany (``insert_rows``)
    prepares_executemany: ClassVar[bool] = False  # statements run once per row are prepared on the server
    transactional_ddl: ClassVar[bool] = True  # a failed migration leaves nothing behind
    alters_by_copy: ClassVar[bool] = False  # ALTER TABLE is limited: Alembic's batch mode copies the table
    is_server: ClassVar[bool] = True  # databases live on a server (scratch databases, a session run lock)

    # --- URLs, engines, connections -------------------------------------------------------------------

    def normalise(self, url: URL, given: str) -> str:
        """The URL with its driver made explicit; ValueError for a driver we do not ship."""
        driver = url.get_driver_name() if "+" in url.drivername else self.drivers[0]
        if driver not in self.drivers:
            msg = f"unsupported driver {driver[:40]!r} for {url.get_backend_name()} (supported: {SUPPORTED_URLS})"
            raise ValueError(msg)
        # The drivers we ship: plain postgresql:// would ask for psycopg2, mysql:// for mysqlclient.
        return url.set(drivername=f"{url.get_backend_name()}+{driver}").render_as_string(hide_password=False)

    def file_of(self, url: URL) -> Path | None:
        """The file that holds the database, where it is one file on this machine."""
        return None

    def engine_options(self, url: URL) -> dict[str, Any]:
        """create_engine() options for this database."""
        return {"pool_pre_ping": True}

    def configure(self, engine: Engine) -> None:
        """Set up every connection the engine makes."""

    # --- types ----------------------------------------------------------------------------------------

    def utc_type(self, dialect: Dialect) -> TypeEngine[Any]:
        """The column type that holds a UTC timestamp to the microsecond."""
        raise NotImplementedError

    def utc_value(self, value: dt.datetime) -> Any:
        """An aware datetime as the database's driver takes it."""
        return value.astimezone(UTC)

    # --- statements -----------------------------------------------------------------------------------

    def insert(self, table: Table) -> Any:
        """The INSERT construct with this database's upsert clause."""
        raise NotImplementedError

    def upsert(self, *, conn: Connection, table: Table, rows: Sequence[dict[str, Any]], key: Sequence[str],
               update: Sequence[str], keep_existing: Sequence[str] = ()) -> None:
        """INSERT the rows; where ``key`` exists already, overwrite the ``update`` columns
        and fill the ``keep_existing`` ones only where they are still NULL.

        One executemany statement for the whole batch. ``rows`` must not repeat a key.
        """
        if not rows:
            return
        stmt = self.insert(table)
        set_: dict[str, Any] = {c: stmt.excluded[c] for c in update}
        set_.update({c: func.coalesce(table.c[c], stmt.excluded[c]) for c in keep_existing})
        if set_:
            stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=set_)
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(key))
        conn.execute(stmt, list(rows))

    def insert_rows(self, conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        """INSERT the rows (all with the same keys), in the connection's transaction: one executemany."""
        if rows:
            conn.execute(table.insert(), list(rows))

    def among(self, column: ColumnElement[Any], values: Sequence[Any]) -> ColumnElement[bool]:
        """``column IN values`` as one bound parameter, so that the statement compiles once and is cached.

        A plain ``IN`` renders a parameter per value at every execution, which costs more than the
        query for a batch of 500. Text or integer columns.
        """
        raise NotImplementedError

    def steps_since(self, column: ColumnElement[Any], origin: dt.datetime, step: dt.timedelta) -> ColumnElement[int]:
        """How many whole ``step``s fit between ``origin`` and the UTC timestamp ``column`` (at or after
        ``origin``): the index of its period. Integer arithmetic in microseconds, so that an instant on a
        period's boundary falls exactly on it (floating-point days would put it a microsecond either side)."""
        raise NotImplementedError

    # --- schema ---------------------------------------------------------------------------------------

    def table_options(self) -> dict[str, str]:
        """Keyword arguments every table takes on this database (SQLAlchemy's ``<dialect>_<option>``)."""
        return {}

    def index_where(self, condition: str) -> dict[str, Any]:
        """Keyword arguments that make an ``Index`` partial here (only where ``supports_partial_index``)."""
        return {}

    def partial_unique_stand_in(self, table: str, *, name: str, flag: str, columns: Sequence[str],
                                condition: str) -> list[str]:
        """DDL for a unique index over ``columns`` among the rows where ``condition`` holds, on a database
        without partial indexes (none where it has them: the models declare the index). Safe to run again."""
        return []

    # --- the run lock, the clock, errors --------------------------------------------------------------

    @contextlib.contextmanager
    def run_lock(self, engine: Engine, *, url: str, name: str,
                 holder: Callable[[], str]) -> Iterator[None]:
        """Hold the run lock of application ``name`` in this database for the duration, or raise LockHeld
        (naming ``holder()``) at once. Each application has its own: two can run at once, one cannot twice."""
        yield

    def server_now(self, conn: Connection) -> dt.datetime | None:
        """The database server's clock, shared by every host; None where there is no server."""
        return None

    def error_kind(self, error: exc.DBAPIError) -> ErrorKind:
        """How a driver error sorts: the database itself failed (``unreachable``: the run stops, exit 3), one
        statement's data was refused (``rejected``: it costs only its connection), or the transaction lost a
        lock race and was rolled back (``retry``: running it again is expected to work)."""
        if isinstance(error, exc.OperationalError | exc.InterfaceError):
            return "unreachable"
        return "unreachable" if type(error) is exc.DatabaseError else "rejected"

    # --- sizes and scratch databases (tests and benchmarks) --------------------------------------------

    def table_bytes(self, conn: Connection, tables: Sequence[str]) -> dict[str, int]:
        """Bytes each table takes on disk, its indexes included (benchmarks)."""
        raise NotImplementedError

    def database_ddl(self, name: str, template: str | None = None) -> tuple[str, str]:
        """(CREATE, DROP) statements for a whole database of this name on a server (tests and benchmarks).

        ``template`` (where the database has template databases) makes the new one a copy of that one.
        """
        raise NotImplementedError

    def emptying_statements(self, tables: Sequence[str]) -> list[str]:
        """Statements that delete every row of these tables and restart their ids (tests reuse a database)."""
        raise NotImplementedError

    def schema_queries(self) -> list[str]:
        """The queries whose answers describe a server database's schema (what a test may have changed)."""
        raise NotImplementedError


def microseconds(span: dt.timedelta) -> int:
    """A duration in whole microseconds."""
    return span // dt.timedelta(microseconds=1)


# What a server database holds beside rows, in the information schema both servers have.
COMMON_SCHEMA_QUERIES = (
    "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
    "WHERE table_schema = {schema} ORDER BY table_name, column_name",
    "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = {schema} "
    "ORDER BY table_name",
    "SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = {schema} ORDER BY trigger_name",
    "SELECT table_name, constraint_name, constraint_type FROM information_schema.table_constraints "
    "WHERE constraint_schema = {schema} ORDER BY table_name, constraint_name",
    "SELECT routine_name FROM information_schema.routines WHERE routine_schema = {schema} "
    "ORDER BY routine_name",
    "SELECT version_num FROM alembic_version",
)


@contextlib.contextmanager
def session_lock(engine: Engine, *, url: str, holder: Callable[[], str], sql: tuple[str, str],
                 key: object) -> Iterator[None]:
    """Hold a lock that belongs to a connection's session (``sql``: take without waiting, release)."""
    take, release = sql
    conn = engine.connect()
    try:
        got = conn.scalar(text(take), {"key": key})
        conn.commit()  # the lock is the session's; no transaction stays open
        if not got:
            raise LockHeld(url=url, holder=holder())
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # closing the connection below releases it anyway
                conn.execute(text(release), {"key": key})
                conn.commit()
    finally:
        conn.close()
