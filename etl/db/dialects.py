"""What differs between the supported databases, in one place, branching on ``dialect.name``.

- which URLs (database and driver) are supported, and how they are normalised;
- how a connection is set up (SQLite: WAL, foreign keys, explicit transactions);
- the upsert construct (``INSERT .. ON CONFLICT``), bulk inserts (``COPY`` on PostgreSQL),
  and ``IN`` a list as one parameter;
- the partial unique index ("one open grant per connection and permission");
- the run lock (PostgreSQL advisory lock, ``flock`` beside a SQLite file);
- how driver errors sort: the database is unreachable, or one statement's data was refused;
- whose clock the shared rate budget uses (the server's, where there is a server).

``RETURNING`` is used as is: both databases have it. A new database is one more
entry in each of these.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    String,
    Table,
    any_,
    bindparam,
    event,
    exc,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from etl.errors import LockHeld

# backend -> (drivers accepted, the driver plain "backend://" means)
DRIVERS: dict[str, tuple[tuple[str, ...], str]] = {
    "sqlite": (("pysqlite",), "pysqlite"),
    "postgresql": (("psycopg",), "psycopg"),
}
SUPPORTED_URLS = "sqlite:///PATH, postgresql://, postgresql+psycopg://"
# pg advisory lock key: a fixed 64-bit number of our own ("smartcar-etl" in spirit).
ADVISORY_KEY = 0x5C_E7_1A_0C_2B_5E_7A_11 - (1 << 63)
# Execution option that makes a SQLite transaction take the write lock at BEGIN (BEGIN IMMEDIATE).
IMMEDIATE = "etl_immediate"


def normalise_url(text: str) -> str:
    """The URL with its driver made explicit where needed; ValueError naming what is supported otherwise."""
    try:
        url: URL = make_url(text)
    except ArgumentError:
        msg = f"not a SQLAlchemy database URL (supported: {SUPPORTED_URLS})"
        raise ValueError(msg) from None
    backend = url.get_backend_name()
    if backend not in DRIVERS:
        msg = f"unsupported database {backend[:40]!r} (supported: {SUPPORTED_URLS})"
        raise ValueError(msg)
    drivers, default = DRIVERS[backend]
    driver = url.get_driver_name() if "+" in url.drivername else default
    if driver not in drivers:
        msg = f"unsupported driver {driver[:40]!r} for {backend} (supported: {SUPPORTED_URLS})"
        raise ValueError(msg)
    if backend == "postgresql":
        # psycopg 3 is the driver we ship; plain postgresql:// would ask for psycopg2.
        return url.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)
    return text


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL; None for an in-memory or URI database."""
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()


def engine_options(url: URL) -> dict[str, Any]:
    """create_engine() options for this database."""
    if url.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True}


def configure(engine: Engine) -> None:
    """Set up every connection the engine makes.

    SQLite: foreign keys on, WAL (once set it stays in the file; a read-only
    file keeps the mode it has), and transactions begun explicitly by
    SQLAlchemy rather than implicitly by pysqlite (the recipe in SQLAlchemy's
    pysqlite docs), so that SAVEPOINT works and a writer can ask for ``BEGIN
    IMMEDIATE`` (execution option ``IMMEDIATE``) instead of failing to upgrade
    a read lock when another process writes.
    """
    if engine.dialect.name != "sqlite":
        return
    in_memory = (engine.url.database or "") in ("", ":memory:")

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite issues no BEGIN of its own
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")
            if not in_memory:
                with contextlib.suppress(sqlite3.OperationalError):
                    cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(IMMEDIATE) else "BEGIN")


def insert(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT construct, the one with an upsert clause."""
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
    stmt = insert(conn, table)
    set_: dict[str, Any] = {c: stmt.excluded[c] for c in update}
    set_.update({c: func.coalesce(table.c[c], stmt.excluded[c]) for c in keep_existing})
    if set_:
        stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=set_)
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(key))
    conn.execute(stmt, list(rows))


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT the rows (all with the same keys), in the connection's transaction.

    PostgreSQL: ``COPY ... FROM STDIN`` through psycopg, half the server's cost
    of row-by-row inserts for a batch's grants and changes; values go through
    the columns' own bind processing first (UTC, naive timestamps refused).
    Elsewhere one executemany.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(table.insert(), list(rows))
        return
    names = list(rows[0])
    processors = [table.c[name].type.bind_processor(conn.dialect) for name in names]
    quote = conn.dialect.identifier_preparer.quote
    statement = f"COPY {quote(table.name)} ({', '.join(quote(n) for n in names)}) FROM STDIN"
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    driver_error = conn.dialect.loaded_dbapi.Error
    try:
        with cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([row[n] if p is None else p(row[n]) for n, p in zip(names, processors, strict=True)])
    except driver_error as error:  # as SQLAlchemy would raise it: sorted like any statement's error
        raise exc.DBAPIError.instance(statement, None, error, driver_error) from error
    finally:
        cursor.close()


def among(conn: Connection, column: ColumnElement[str], values: Sequence[str]) -> ColumnElement[bool]:
    """``column IN values`` as one bound parameter, so that the statement compiles once and is cached.

    A plain ``IN`` renders a parameter per value at every execution (on
    PostgreSQL each with a cast), which costs more than the query for a batch
    of 500. PostgreSQL: ``= ANY(array)``; SQLite: ``IN (SELECT value FROM
    json_each(text))``.
    """
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(String()), unique=True))
    every = bindparam(None, json.dumps(list(values)), type_=String(), unique=True)
    return column.in_(select(literal_column("value")).select_from(func.json_each(every)))


def partial_index_where(condition: str) -> dict[str, Any]:
    """Keyword arguments that make an ``Index`` partial (``WHERE condition``) on every database."""
    return {"sqlite_where": text(condition), "postgresql_where": text(condition)}


@contextlib.contextmanager
def run_lock(engine: Engine, *, url: str, holder: Callable[[], str]) -> Iterator[None]:
    """Hold the database's run lock for the duration, or raise LockHeld (naming ``holder()``) at once.

    PostgreSQL: a session-level advisory lock on a connection held for the whole
    run; a process that dies loses its connection, and with it the lock.
    SQLite: ``flock`` on ``<database>.lock``; the kernel releases it when the
    holder's process ends, however it ends (SIGKILL included). An in-memory
    SQLite database has no other process to keep out.
    """
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine, url=url, holder=holder):
            yield
        return
    path = sqlite_file(engine.url)
    if path is None:
        yield
        return
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(url=url, holder=holder()) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _advisory_lock(engine: Engine, *, url: str, holder: Callable[[], str]) -> Iterator[None]:
    conn = engine.connect()
    try:
        got = conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY})
        conn.commit()  # the lock is the session's; no transaction stays open
        if not got:
            raise LockHeld(url=url, holder=holder())
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # closing the connection below releases it anyway
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
                conn.commit()
    finally:
        conn.close()


def server_now(conn: Connection) -> dt.datetime | None:
    """The database server's clock (PostgreSQL), shared by every host; None where there is no server (SQLite)."""
    if conn.dialect.name == "postgresql":
        now: dt.datetime = conn.scalar(text("SELECT clock_timestamp()"))
        return now.astimezone(dt.UTC)
    return None


def is_unreachable(error: exc.DBAPIError) -> bool:
    """True when the database itself failed (gone, refused, not a database file), not one statement's data.

    A refused row (a value out of range, a NUL in text, a broken constraint)
    costs only its connection; anything here aborts the run (exit 3).
    """
    if isinstance(error, exc.OperationalError | exc.InterfaceError):
        return True
    # SQLite reports a file that is not a database, or is corrupt, as a plain DatabaseError.
    return type(error) is exc.DatabaseError
