"""SQLite: one file beside the job; no server, so no server clock and a file lock for the run lock."""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import fcntl
import functools
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
    Integer,
    String,
    Table,
    bindparam,
    cast,
    event,
    exc,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.types import TypeEngine

from etl.db.dialects.base import IMMEDIATE, UTC, Database, ErrorKind, microseconds
from etl.errors import LockHeld

SQLITE_RETRY = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED (primary result codes)


class _UtcText(sqlite.DATETIME):
    """SQLite DATETIME whose values ``utc_value`` has already turned into text (and reads back itself)."""

    def bind_processor(self, dialect: Dialect) -> None:
        return None

    def result_processor(self, dialect: Dialect, coltype: object) -> None:
        return None


@functools.lru_cache(maxsize=4096)
def _utc_text(value: dt.datetime) -> str:
    """An aware datetime as SQLite stores it; remembered, as a batch binds the same few times again and again."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


class SQLite(Database):
    """SQLite through the standard library's driver."""

    name = "sqlite"
    backends = ("sqlite",)
    drivers = ("pysqlite",)
    supports_partial_index = True
    alters_by_copy = True
    is_server = False

    def normalise(self, url: URL, given: str) -> str:
        """The URL as given (SQLite's driver is the standard library's); a host or user is refused."""
        if url.host or url.port or url.username or url.password:
            raise ValueError(_sqlite_form(url, given))
        super().normalise(url, given)  # the driver check
        return given

    def file_of(self, url: URL) -> Path | None:
        """The file of a SQLite URL; None for an in-memory or URI database."""
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            return None
        return Path(database).expanduser().resolve()

    def engine_options(self, url: URL) -> dict[str, Any]:
        return {"connect_args": {"timeout": 30}}

    def configure(self, engine: Engine) -> None:
        """Foreign keys on, WAL (once set it stays in the file; a read-only file keeps the mode it has), and
        transactions begun explicitly by SQLAlchemy rather than implicitly by pysqlite (the recipe in
        SQLAlchemy's pysqlite docs), so that SAVEPOINT works and a writer can ask for ``BEGIN IMMEDIATE``
        (execution option ``IMMEDIATE``) instead of failing to upgrade a read lock when another process writes.
        """
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

    def utc_type(self, dialect: Dialect) -> TypeEngine[Any]:
        """Naive UTC text (``2026-03-01 12:00:00.000000``, SQLAlchemy's own format, which sorts and compares
        correctly as text), made and parsed by ``isoformat`` and ``fromisoformat``: several times faster
        than the generic path."""
        return dialect.type_descriptor(_UtcText())  # type: ignore[no-untyped-call]

    def utc_value(self, value: dt.datetime) -> Any:
        return _utc_text(value)

    def insert(self, table: Table) -> Any:
        return sqlite.insert(table)

    def among(self, column: ColumnElement[Any], values: Sequence[Any]) -> ColumnElement[bool]:
        """``IN (SELECT value FROM json_each(text))``."""
        every = bindparam(None, json.dumps(list(values)), type_=String(), unique=True)
        return column.in_(select(literal_column("value")).select_from(func.json_each(every)))

    def index_where(self, condition: str) -> dict[str, Any]:
        return {"sqlite_where": text(condition)}

    def steps_since(self, column: ColumnElement[Any], origin: dt.datetime, step: dt.timedelta) -> ColumnElement[int]:
        """Whole seconds of the stored text's first 19 characters (``strftime('%s')``), its six digits of
        microseconds, then an integer division: ``julianday`` would round to the millisecond."""
        start = origin.astimezone(UTC)
        seconds = cast(func.strftime("%s", func.substr(column, 1, 19)), Integer)
        fraction = cast(func.substr(column, 21, 6), Integer)
        elapsed = (seconds - calendar.timegm(start.timetuple())) * 1_000_000 + fraction - start.microsecond
        return elapsed // microseconds(step)  # integers: SQLite's "/" divides them as integers

    @contextlib.contextmanager
    def run_lock(self, engine: Engine, *, url: str, name: str,
                 holder: Callable[[], str]) -> Iterator[None]:
        """``flock`` on ``<database>.lock`` (another application's: ``<database>.<name>.lock``); the kernel
        releases it when the holder's process ends, however
        it ends (SIGKILL included). An in-memory database has no other process to keep out."""
        path = self.file_of(engine.url)
        if path is None:
            yield
            return
        suffix = ".lock" if name == "default" else f".{name}.lock"
        fd = os.open(f"{path}{suffix}", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
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

    def error_kind(self, error: exc.DBAPIError) -> ErrorKind:
        """A busy or locked file (after the 30 s busy timeout) is worth a retry: nothing was written. A file
        that is not a database, or is corrupt, is reported as a plain DatabaseError (unreachable)."""
        if (getattr(error.orig, "sqlite_errorcode", 0) or 0) & 0xFF in SQLITE_RETRY:
            return "retry"
        return super().error_kind(error)

    def table_bytes(self, conn: Connection, tables: Sequence[str]) -> dict[str, int]:
        """SQLite's ``dbstat``."""
        return {t: int(conn.scalar(text(
            "SELECT SUM(pgsize) FROM dbstat WHERE name IN "
            "(SELECT name FROM sqlite_master WHERE tbl_name = :t)"), {"t": t}) or 0) for t in tables}


def _sqlite_form(url: URL, given: str) -> str:
    """Why a SQLite URL with a host is refused, and the form meant (the path is echoed unless it has a password)."""
    rest = given.split("://", 1)[-1]
    if url.username or url.password or len(rest) > 200:
        return "a SQLite URL has no host or user: sqlite:///PATH (relative) or sqlite:////PATH (absolute)"
    name = url.drivername
    return (f"{name}://{rest} names a host, not a file: write {name}:///{rest} (three slashes: a path "
            f"relative to the working directory) or {name}:////{rest} (four: an absolute path)")
