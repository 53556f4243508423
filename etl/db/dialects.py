"""What differs between the supported databases, in one place, branching on ``dialect.name``.

- which URLs (database and driver) are supported, and how they are normalised;
- how a connection is set up (SQLite: WAL, foreign keys, explicit transactions; MariaDB:
  utf8mb4 with a binary collation, UTC, a strict ``sql_mode``, READ COMMITTED) and which
  servers are refused (MySQL, MariaDB before 10.5);
- table options (MariaDB: InnoDB, utf8mb4, binary collation, so ids and permission names
  compare exactly, as on the other two);
- the upsert construct (``INSERT .. ON CONFLICT``; MariaDB ``ON DUPLICATE KEY UPDATE``), bulk
  inserts (``COPY`` on PostgreSQL), and ``IN`` a list as one parameter;
- the partial unique index ("one open grant per connection and permission"); MariaDB has none,
  so there it is a unique key over a generated column that is NULL for closed grants;
- the run lock (PostgreSQL advisory lock, MariaDB ``GET_LOCK`` named after the database,
  ``flock`` beside a SQLite file);
- how driver errors sort: the database is unreachable, one statement's data was refused,
  or the transaction lost a lock race (deadlock) and is worth running again;
- whose clock the shared rate budget uses (the server's, where there is a server).

``RETURNING`` is used as is: all three have it (MariaDB since 10.5, which is why older
MariaDB and MySQL, which has none, are refused). A new database is one more entry in each of these.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Integer,
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
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from etl.errors import ConfigError, LockHeld

# backend -> (drivers accepted, the driver plain "backend://" means)
DRIVERS: dict[str, tuple[tuple[str, ...], str]] = {
    "sqlite": (("pysqlite",), "pysqlite"),
    "postgresql": (("psycopg",), "psycopg"),
    "mysql": (("pymysql",), "pymysql"),
    "mariadb": (("pymysql",), "pymysql"),
}
SUPPORTED_URLS = ("sqlite:///PATH, postgresql://, postgresql+psycopg://, "
                  "mariadb:// or mysql:// (MariaDB 10.5+, through PyMySQL)")
# SQLAlchemy names the dialect "mariadb" or "mysql" after the URL; both are MariaDB here.
MARIADB = ("mariadb", "mysql")
MARIADB_OLDEST = (10, 5)  # INSERT .. RETURNING
# Every MariaDB session: utf8mb4 with exact comparison, UTC, and a strict sql_mode, whatever the server's
# defaults (a lax one truncates an over-long value with only a warning).
MARIADB_SESSION = ("SET time_zone = '+00:00', "
                   "sql_mode = 'TRADITIONAL,NO_ENGINE_SUBSTITUTION,NO_BACKSLASH_ESCAPES'")
# Table options (SQLAlchemy reads one prefix per dialect name).
TABLE_OPTIONS: dict[str, str] = {f"{prefix}_{key}": value for prefix in MARIADB for key, value in
                                 (("engine", "InnoDB"), ("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))}
# pg advisory lock key: a fixed 64-bit number of our own ("smartcar-etl" in spirit).
ADVISORY_KEY = 0x5C_E7_1A_0C_2B_5E_7A_11 - (1 << 63)
# Execution option that makes a SQLite transaction take the write lock at BEGIN (BEGIN IMMEDIATE).
IMMEDIATE = "etl_immediate"
# psycopg's prepare_threshold: executions of a statement before it is prepared. ``executemany`` prepares
# regardless; nothing else runs that often (``_prepare_only_executemany``).
PREPARE_NEVER = 1 << 30


def normalise_url(text: str) -> str:
    """The URL with its driver made explicit where needed; ValueError naming what is supported otherwise."""
    try:
        url: URL = make_url(text)
    except ArgumentError:
        msg = f"not a SQLAlchemy database URL (supported: {SUPPORTED_URLS})"
        raise ValueError(msg) from None
    if url.drivername.partition("+")[0] == "postgres":  # Heroku's and libpq's spelling; SQLAlchemy dropped it
        url = url.set(drivername="postgresql" + url.drivername[len("postgres"):])
    backend = url.get_backend_name()
    if backend == "sqlite" and (url.host or url.port or url.username or url.password):
        raise ValueError(_sqlite_form(url, text))
    if backend not in DRIVERS:
        msg = f"unsupported database {backend[:40]!r} (supported: {SUPPORTED_URLS})"
        raise ValueError(msg)
    drivers, default = DRIVERS[backend]
    driver = url.get_driver_name() if "+" in url.drivername else default
    if driver not in drivers:
        msg = f"unsupported driver {driver[:40]!r} for {backend} (supported: {SUPPORTED_URLS})"
        raise ValueError(msg)
    if backend != "sqlite":
        # The drivers we ship: plain postgresql:// would ask for psycopg2, mysql:// for mysqlclient.
        return url.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)
    return text


def _sqlite_form(url: URL, text: str) -> str:
    """Why a SQLite URL with a host is refused, and the form meant (the path is echoed unless it has a password)."""
    rest = text.split("://", 1)[-1]
    if url.username or url.password or len(rest) > 200:
        return "a SQLite URL has no host or user: sqlite:///PATH (relative) or sqlite:////PATH (absolute)"
    name = url.drivername
    return (f"{name}://{rest} names a host, not a file: write {name}:///{rest} (three slashes: a path "
            f"relative to the working directory) or {name}:////{rest} (four: an absolute path)")


def is_mariadb(dialect: Any) -> bool:
    """True for a MariaDB engine or connection's dialect, whichever of the two URL names it came from."""
    return dialect.name in MARIADB


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
    if url.get_backend_name() in MARIADB:
        # READ COMMITTED as on PostgreSQL: REPEATABLE READ's gap locks would make concurrent upserts deadlock.
        # A server closes idle connections after wait_timeout (8 h by default): recycle well before.
        return {"pool_pre_ping": True, "pool_recycle": 3600, "isolation_level": "READ COMMITTED",
                "connect_args": {"charset": "utf8mb4", "init_command": MARIADB_SESSION,
                                 "connect_timeout": 10}}
    return {"pool_pre_ping": True}


def refuse_server(name: str, *, mariadb: bool, version: tuple[int, ...]) -> str | None:
    """Why this server cannot hold the history (None when it can): MySQL, or MariaDB before 10.5."""
    if name not in MARIADB:
        return None
    shown = ".".join(str(v) for v in version) or "(version unknown)"
    if not mariadb:
        return (f"MySQL {shown} is not supported: it has no INSERT .. RETURNING, which the job relies on; "
                "use MariaDB 10.5 or newer (or PostgreSQL)")
    if version < MARIADB_OLDEST:
        return f"MariaDB {shown} is too old: MariaDB 10.5 or newer is supported (INSERT .. RETURNING)"
    return None


def configure(engine: Engine) -> None:
    """Set up every connection the engine makes.

    SQLite: foreign keys on, WAL (once set it stays in the file; a read-only
    file keeps the mode it has), and transactions begun explicitly by
    SQLAlchemy rather than implicitly by pysqlite (the recipe in SQLAlchemy's
    pysqlite docs), so that SAVEPOINT works and a writer can ask for ``BEGIN
    IMMEDIATE`` (execution option ``IMMEDIATE``) instead of failing to upgrade
    a read lock when another process writes.
    """
    if is_mariadb(engine.dialect):
        _configure_mariadb(engine)
    if engine.dialect.name == "postgresql":
        event.listen(engine, "connect", _prepare_only_executemany)
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


def _prepare_only_executemany(dbapi_connection: Any, _record: Any) -> None:
    """PostgreSQL: prepare the statements that run once per row (``executemany``), and no other.

    psycopg prepares a statement on its fifth execution, and PostgreSQL may then keep one generic plan
    for the connection's life. Made while a table was small (a first backfill into a new database), that
    plan scans the whole table for each batch's ``id = ANY(ids)`` as the table grows: 7.5 ms per batch
    instead of 1.2 at 3,000 vehicles, and growing with them. A statement run once per batch is therefore
    sent unprepared, and planned for its own parameters each time. ``executemany`` prepares at once (by
    primary key, one plan serves every row).

    The server's ``plan_cache_mode`` stays as it is: forcing custom plans would replan every foreign-key
    check, one per inserted row (30,000 change rows: 2.3 s instead of 0.65).
    """
    dbapi_connection.prepare_threshold = PREPARE_NEVER


def _configure_mariadb(engine: Engine) -> None:
    """Refuse MySQL and old MariaDB at every new connection (exit 2), before SQLAlchemy's own set-up
    queries (some of which differ by server) and before anything is read or written."""

    def _connect(dbapi_connection: Any, _record: Any) -> None:
        mariadb, version = server_version(str(dbapi_connection.get_server_info()))
        reason = refuse_server(engine.dialect.name, mariadb=mariadb, version=version)
        if reason is not None:
            msg = f"database_url: {reason}"  # the pool closes the connection
            raise ConfigError(msg)

    def _collation(dbapi_connection: Any, _record: Any) -> None:
        # After SQLAlchemy's own "SET NAMES utf8mb4", which resets the collation to the charset's default.
        with contextlib.closing(dbapi_connection.cursor()) as cursor:
            cursor.execute("SET collation_connection = 'utf8mb4_bin'")

    event.listen(engine, "connect", _connect, insert=True)
    event.listen(engine, "connect", _collation)


def server_version(info: str) -> tuple[bool, tuple[int, ...]]:
    """(is it MariaDB, its version) from the version string a server announces.

    MariaDB announces ``5.5.5-10.11.19-MariaDB-...`` (the prefix is for old replicas); MySQL ``8.0.36``.
    """
    mariadb = "mariadb" in info.lower()
    if mariadb and info.startswith("5.5.5-"):
        info = info[len("5.5.5-"):]
    numbers = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", info)
    version = tuple(int(n) for n in numbers.groups() if n is not None) if numbers else ()
    return mariadb, version


def insert(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT construct, the one with an upsert clause."""
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    if name in MARIADB:
        return mysql.insert(table)
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
    if is_mariadb(conn.dialect):  # ON DUPLICATE KEY UPDATE: the only unique key of these tables is ``key``
        new = stmt.inserted
        changes = {c: new[c] for c in update} | {c: func.coalesce(table.c[c], new[c]) for c in keep_existing}
        conn.execute(stmt.on_duplicate_key_update(changes or {key[0]: table.c[key[0]]}), list(rows))
        return
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


def among(conn: Connection, column: ColumnElement[Any], values: Sequence[Any]) -> ColumnElement[bool]:
    """``column IN values`` as one bound parameter, so that the statement compiles once and is cached.

    A plain ``IN`` renders a parameter per value at every execution (on
    PostgreSQL each with a cast), which costs more than the query for a batch
    of 500. PostgreSQL: ``= ANY(array)``; SQLite: ``IN (SELECT value FROM
    json_each(text))``. MariaDB: a plain ``IN``, expanded by PyMySQL on this side (it has no
    server-side statements to cache anyway). Text or integer columns.
    """
    if conn.dialect.name == "postgresql":
        element = BigInteger() if isinstance(column.type, Integer) else String()
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(element), unique=True))
    if is_mariadb(conn.dialect):
        return column.in_(bindparam(None, list(values), expanding=True, unique=True))
    every = bindparam(None, json.dumps(list(values)), type_=String(), unique=True)
    return column.in_(select(literal_column("value")).select_from(func.json_each(every)))


def partial_index_where(condition: str) -> dict[str, Any]:
    """Keyword arguments that make an ``Index`` partial (``WHERE condition``) on SQLite and PostgreSQL.

    MariaDB has no partial index: such an index is made there by ``mariadb_partial_unique`` instead,
    and this one must be created only on the other two (``Index.ddl_if(dialect=PARTIAL_INDEXES)``).
    """
    return {"sqlite_where": text(condition), "postgresql_where": text(condition)}


PARTIAL_INDEXES = ("sqlite", "postgresql")


def mariadb_partial_unique(table: str, *, name: str, flag: str, columns: Sequence[str], condition: str) -> list[str]:
    """MariaDB DDL for a unique index over ``columns`` among the rows where ``condition`` holds.

    A generated column ``flag`` is 1 where the condition holds and NULL elsewhere; a unique key over
    the columns and it then admits any number of rows where it is NULL (NULLs are distinct) and one
    where it is 1. Both statements are safe to run again (``IF NOT EXISTS``).
    """
    return [
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {flag} TINYINT "
        f"AS (CASE WHEN {condition} THEN 1 END) PERSISTENT",
        f"CREATE UNIQUE INDEX IF NOT EXISTS {name} ON {table} ({', '.join((*columns, flag))})",
    ]


@contextlib.contextmanager
def run_lock(engine: Engine, *, url: str, holder: Callable[[], str]) -> Iterator[None]:
    """Hold the database's run lock for the duration, or raise LockHeld (naming ``holder()``) at once.

    PostgreSQL: a session-level advisory lock on a connection held for the whole
    run; a process that dies loses its connection, and with it the lock. MariaDB:
    ``GET_LOCK``, likewise the session's; its names are server-wide, so the name
    includes the database (``lock_name``).
    SQLite: ``flock`` on ``<database>.lock``; the kernel releases it when the
    holder's process ends, however it ends (SIGKILL included). An in-memory
    SQLite database has no other process to keep out.
    """
    if engine.dialect.name == "postgresql":
        with _session_lock(engine, url=url, holder=holder, sql=PG_LOCK, key=ADVISORY_KEY):
            yield
        return
    if is_mariadb(engine.dialect):
        with _session_lock(engine, url=url, holder=holder, sql=MARIADB_LOCK, key=lock_name(engine.url.database)):
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


# (take without waiting, release) of a lock held by the session (the connection) that takes it.
PG_LOCK = ("SELECT pg_try_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)")
MARIADB_LOCK = ("SELECT GET_LOCK(:key, 0)", "SELECT RELEASE_LOCK(:key)")


def lock_name(database: str | None) -> str:
    """The MariaDB run lock's name: server-wide, so it names the database (hashed past 64 characters)."""
    name = f"smartcar-etl:{database or ''}"
    return name if len(name) <= 64 else f"smartcar-etl:{hashlib.sha256(name.encode()).hexdigest()[:48]}"


@contextlib.contextmanager
def _session_lock(engine: Engine, *, url: str, holder: Callable[[], str], sql: tuple[str, str],
                  key: object) -> Iterator[None]:
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


def database_ddl(dialect_name: str, name: str, template: str | None = None) -> tuple[str, str]:
    """(CREATE, DROP) statements for a whole database of this name on a server (tests and benchmarks).

    ``template`` (PostgreSQL only) makes the new database a copy of that one.
    """
    if dialect_name in MARIADB:
        assert template is None, "MariaDB has no template databases"
        return f"CREATE DATABASE `{name}`", f"DROP DATABASE IF EXISTS `{name}`"
    copy = f' TEMPLATE "{template}"' if template else ""
    return f'CREATE DATABASE "{name}"{copy}', f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'


def emptying_statements(dialect_name: str, tables: Sequence[str]) -> list[str]:
    """Statements that delete every row of these tables and restart their ids, on a server (tests reuse a
    database)."""
    if dialect_name in MARIADB:
        return ["SET FOREIGN_KEY_CHECKS = 0", *(f"TRUNCATE TABLE `{t}`" for t in tables), "SET FOREIGN_KEY_CHECKS = 1"]
    quoted = ", ".join('"' + t + '"' for t in tables)
    return [f"TRUNCATE {quoted} RESTART IDENTITY CASCADE"]


# What a server database holds beside rows (tests compare it to see whether a test changed the schema).
SCHEMA_QUERIES = {
    "common": (
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
    ),
    "postgresql": ("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                   "ORDER BY indexname",),
    "mariadb": ("SELECT table_name, index_name, column_name, seq_in_index FROM information_schema.statistics "
                "WHERE table_schema = DATABASE() ORDER BY table_name, index_name, seq_in_index",),
}


def schema_queries(dialect_name: str) -> list[str]:
    """The queries whose answers describe a server database's schema (``SCHEMA_QUERIES``)."""
    mariadb = dialect_name in MARIADB
    schema = "DATABASE()" if mariadb else "current_schema()"
    return [q.format(schema=schema) for q in SCHEMA_QUERIES["common"]] + list(
        SCHEMA_QUERIES["mariadb" if mariadb else "postgresql"])


def table_bytes(conn: Connection, tables: Sequence[str]) -> dict[str, int]:
    """Bytes each table takes on disk, its indexes included (benchmarks): SQLite's ``dbstat``, PostgreSQL's
    ``pg_total_relation_size``, MariaDB's ``data_length + index_length`` after ``ANALYZE``."""
    if conn.dialect.name == "postgresql":
        return {t: int(conn.scalar(text("SELECT pg_total_relation_size(:t)"), {"t": t}) or 0) for t in tables}
    if is_mariadb(conn.dialect):
        for t in tables:
            conn.exec_driver_sql(f"ANALYZE TABLE {t}").all()
        return {t: int(conn.scalar(text(
            "SELECT data_length + index_length FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = :t"), {"t": t}) or 0) for t in tables}
    return {t: int(conn.scalar(text(
        "SELECT SUM(pgsize) FROM dbstat WHERE name IN "
        "(SELECT name FROM sqlite_master WHERE tbl_name = :t)"), {"t": t}) or 0) for t in tables}


def server_now(conn: Connection) -> dt.datetime | None:
    """The database server's clock, shared by every host; None where there is no server (SQLite)."""
    if conn.dialect.name == "postgresql":
        now: dt.datetime = conn.scalar(text("SELECT clock_timestamp()"))
        return now.astimezone(dt.UTC)
    if is_mariadb(conn.dialect):
        utc: dt.datetime = conn.scalar(text("SELECT UTC_TIMESTAMP(6)"))
        return utc.replace(tzinfo=dt.UTC)
    return None


ErrorKind = Literal["unreachable", "rejected", "retry"]
SQLITE_RETRY = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED (primary result codes)
# MariaDB error codes (the server's, and PyMySQL's own client ones, 2000-2999).
MARIADB_RETRY = {1205, 1213}  # lock wait timeout, deadlock: the transaction was rolled back; run it again
MARIADB_UNREACHABLE = {
    1040, 1044, 1045, 1049, 1053, 1077, 1081, 1129, 1130, 1152, 1153, 1154, 1155, 1156, 1157, 1158, 1159,
    1160, 1161, 1184, 1927, 4031,
}  # too many connections, access denied, unknown database, shutdown, aborted or killed connection, ...


def error_kind(error: exc.DBAPIError) -> ErrorKind:
    """How a driver error sorts: the database itself failed (``unreachable``: the run stops, exit 3), one
    statement's data was refused (``rejected``: it costs only its connection), or the transaction lost a
    lock race and was rolled back (``retry``: running it again is expected to work).

    PyMySQL raises OperationalError for a deadlock, a CHECK failure or a bad string as well as for a lost
    server, so MariaDB's errors sort by their code; PostgreSQL's by SQLSTATE class (40: retry); SQLite's
    busy or locked file (after the 30 s busy timeout) is worth a retry too.
    """
    if _mariadb_error(error):
        return _mariadb_kind(error)
    sqlstate = getattr(error.orig, "sqlstate", None) or ""
    if sqlstate.startswith("40"):  # serialization failure, deadlock detected
        return "retry"
    if (getattr(error.orig, "sqlite_errorcode", 0) or 0) & 0xFF in SQLITE_RETRY:
        return "retry"  # another writer held the file past the busy timeout: nothing was written
    if isinstance(error, exc.OperationalError | exc.InterfaceError):
        return "unreachable"
    # SQLite reports a file that is not a database, or is corrupt, as a plain DatabaseError.
    return "unreachable" if type(error) is exc.DatabaseError else "rejected"


def _mariadb_error(error: exc.DBAPIError) -> bool:
    return type(error.orig).__module__.startswith("pymysql")


def _mariadb_kind(error: exc.DBAPIError) -> ErrorKind:
    args = getattr(error.orig, "args", ())
    code = args[0] if args and isinstance(args[0], int) else 0
    if code in MARIADB_RETRY:
        return "retry"
    if isinstance(error, exc.InterfaceError) or code < 1000 or 2000 <= code < 3000 or code in MARIADB_UNREACHABLE:
        return "unreachable"
    return "rejected"
