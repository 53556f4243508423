"""MariaDB 10.5+ through PyMySQL (URLs ``mariadb://`` or ``mysql://``; a MySQL server is refused).

Every session is utf8mb4 with a binary collation (ids and permission names compare exactly, as on the
other two), UTC, a strict ``sql_mode`` and READ COMMITTED. ``INSERT .. RETURNING`` is used as is (MariaDB
since 10.5, which is why older MariaDB and MySQL, which has none, are refused). There is no partial
index: a unique key over a generated column that is NULL for the rows outside the condition stands in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Table,
    bindparam,
    event,
    exc,
    func,
    literal_column,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

from etl.db.dialects.base import COMMON_SCHEMA_QUERIES, UTC, Database, ErrorKind, microseconds, session_lock
from etl.errors import ConfigError

# SQLAlchemy names the dialect "mariadb" or "mysql" after the URL; both are MariaDB here.
MARIADB = ("mariadb", "mysql")
MARIADB_OLDEST = (10, 5)  # INSERT .. RETURNING
# Every MariaDB session: utf8mb4 with exact comparison, UTC, and a strict sql_mode, whatever the server's
# defaults (a lax one truncates an over-long value with only a warning).
MARIADB_SESSION = ("SET time_zone = '+00:00', "
                   "sql_mode = 'TRADITIONAL,NO_ENGINE_SUBSTITUTION,NO_BACKSLASH_ESCAPES'")
# (take without waiting, release) of a lock held by the session (the connection) that takes it.
MARIADB_LOCK = ("SELECT GET_LOCK(:key, 0)", "SELECT RELEASE_LOCK(:key)")
# MariaDB error codes (the server's, and PyMySQL's own client ones, 2000-2999).
MARIADB_RETRY = {1205, 1213}  # lock wait timeout, deadlock: the transaction was rolled back; run it again
MARIADB_UNREACHABLE = {
    1040, 1044, 1045, 1049, 1053, 1077, 1081, 1129, 1130, 1152, 1153, 1154, 1155, 1156, 1157, 1158, 1159,
    1160, 1161, 1184, 1927, 4031,
}  # too many connections, access denied, unknown database, shutdown, aborted or killed connection, ...


class MariaDB(Database):
    """MariaDB 10.5 or newer through PyMySQL."""

    name = "mariadb"
    backends = MARIADB
    drivers = ("pymysql",)
    has_server_clock = True
    transactional_ddl = False  # every DDL statement commits at once (``etl.db.migrating`` guards each step)

    def engine_options(self, url: Any) -> dict[str, Any]:
        # READ COMMITTED as on PostgreSQL: REPEATABLE READ's gap locks would make concurrent upserts deadlock.
        # A server closes idle connections after wait_timeout (8 h by default): recycle well before.
        return {"pool_pre_ping": True, "pool_recycle": 3600, "isolation_level": "READ COMMITTED",
                "connect_args": {"charset": "utf8mb4", "init_command": MARIADB_SESSION, "connect_timeout": 10}}

    def configure(self, engine: Engine) -> None:
        """Refuse MySQL and old MariaDB at every new connection (exit 2), before SQLAlchemy's own set-up
        queries (some of which differ by server) and before anything is read or written."""

        def _connect(dbapi_connection: Any, _record: Any) -> None:
            mariadb, version = self.server_version(str(dbapi_connection.get_server_info()))
            reason = self.refuse_server(mariadb=mariadb, version=version)
            if reason is not None:
                msg = f"database_url: {reason}"  # the pool closes the connection
                raise ConfigError(msg)

        def _collation(dbapi_connection: Any, _record: Any) -> None:
            # After SQLAlchemy's own "SET NAMES utf8mb4", which resets the collation to the charset's default.
            with contextlib.closing(dbapi_connection.cursor()) as cursor:
                cursor.execute("SET collation_connection = 'utf8mb4_bin'")

        event.listen(engine, "connect", _connect, insert=True)
        event.listen(engine, "connect", _collation)

    @staticmethod
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

    @staticmethod
    def refuse_server(*, mariadb: bool, version: tuple[int, ...]) -> str | None:
        """Why this server cannot hold the history (None when it can): MySQL, or MariaDB before 10.5."""
        shown = ".".join(str(v) for v in version) or "(version unknown)"
        if not mariadb:
            return (f"MySQL {shown} is not supported: it has no INSERT .. RETURNING, which the job relies on; "
                    "use MariaDB 10.5 or newer (or PostgreSQL)")
        if version < MARIADB_OLDEST:
            return f"MariaDB {shown} is too old: MariaDB 10.5 or newer is supported (INSERT .. RETURNING)"
        return None

    def utc_type(self, dialect: Dialect) -> TypeEngine[Any]:
        """Naive UTC in ``DATETIME(6)`` (plain ``DATETIME`` would drop the microseconds)."""
        return dialect.type_descriptor(mysql.DATETIME(fsp=6))

    def utc_value(self, value: dt.datetime) -> Any:
        return value.astimezone(UTC).replace(tzinfo=None)

    def insert(self, table: Table) -> Any:
        return mysql.insert(table)

    def upsert(self, *, conn: Connection, table: Table, rows: Sequence[dict[str, Any]], key: Sequence[str],
               update: Sequence[str], keep_existing: Sequence[str] = ()) -> None:
        """``ON DUPLICATE KEY UPDATE``: the only unique key of these tables is ``key``."""
        if not rows:
            return
        stmt = self.insert(table)
        new = stmt.inserted
        changes = {c: new[c] for c in update} | {c: func.coalesce(table.c[c], new[c]) for c in keep_existing}
        conn.execute(stmt.on_duplicate_key_update(changes or {key[0]: table.c[key[0]]}), list(rows))

    def among(self, column: ColumnElement[Any], values: Sequence[Any]) -> ColumnElement[bool]:
        """A plain ``IN``, expanded by PyMySQL on this side (it has no server-side statements to cache)."""
        return column.in_(bindparam(None, list(values), expanding=True, unique=True))

    def steps_since(self, column: ColumnElement[Any], origin: dt.datetime, step: dt.timedelta) -> ColumnElement[int]:
        """``TIMESTAMPDIFF(MICROSECOND, ..)`` (exact), then ``DIV``: SQLAlchemy's ``//`` is ``FLOOR(a / b)``
        here, and MariaDB rounds a decimal quotient to four places, which can carry it over a boundary."""
        start = bindparam(None, self.utc_value(origin), type_=mysql.DATETIME(fsp=6), unique=True)
        elapsed = func.timestampdiff(literal_column("MICROSECOND"), start, column, type_=BigInteger)
        return elapsed.op("DIV", return_type=BigInteger)(microseconds(step))

    def table_options(self) -> dict[str, str]:
        """InnoDB, utf8mb4, binary collation (SQLAlchemy reads one prefix per dialect name: both)."""
        return {f"{prefix}_{key}": value for prefix in MARIADB for key, value in
                (("engine", "InnoDB"), ("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))}

    def partial_unique_stand_in(self, table: str, *, name: str, flag: str, columns: Sequence[str],
                                condition: str) -> list[str]:
        """A generated column ``flag`` is 1 where the condition holds and NULL elsewhere; a unique key over
        the columns and it then admits any number of rows where it is NULL (NULLs are distinct) and one
        where it is 1. Both statements are safe to run again (``IF NOT EXISTS``)."""
        return [
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {flag} TINYINT "
            f"AS (CASE WHEN {condition} THEN 1 END) PERSISTENT",
            f"CREATE UNIQUE INDEX IF NOT EXISTS {name} ON {table} ({', '.join((*columns, flag))})",
        ]

    @contextlib.contextmanager
    def run_lock(self, engine: Engine, *, url: str, name: str,
                 holder: Callable[[], str]) -> Iterator[None]:
        """``GET_LOCK``, the session's; its names are server-wide, so the name includes the database."""
        key = lock_name(engine.url.database, name)
        with session_lock(engine, url=url, holder=holder, sql=MARIADB_LOCK, key=key):
            yield

    def server_now(self, conn: Connection) -> dt.datetime | None:
        utc: dt.datetime = conn.scalar(text("SELECT UTC_TIMESTAMP(6)"))
        return utc.replace(tzinfo=UTC)

    def error_kind(self, error: exc.DBAPIError) -> ErrorKind:
        """PyMySQL raises OperationalError for a deadlock, a CHECK failure or a bad string as well as for a
        lost server, so errors sort by their code."""
        if not type(error.orig).__module__.startswith("pymysql"):
            return super().error_kind(error)
        args = getattr(error.orig, "args", ())
        code = args[0] if args and isinstance(args[0], int) else 0
        if code in MARIADB_RETRY:
            return "retry"
        if (isinstance(error, exc.InterfaceError) or code < 1000 or 2000 <= code < 3000
                or code in MARIADB_UNREACHABLE):
            return "unreachable"
        return "rejected"

    def table_bytes(self, conn: Connection, tables: Sequence[str]) -> dict[str, int]:
        """``data_length + index_length`` after ``ANALYZE``."""
        for t in tables:
            conn.exec_driver_sql(f"ANALYZE TABLE {t}").all()
        return {t: int(conn.scalar(text(
            "SELECT data_length + index_length FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = :t"), {"t": t}) or 0) for t in tables}

    def database_ddl(self, name: str, template: str | None = None) -> tuple[str, str]:
        assert template is None, "MariaDB has no template databases"
        return f"CREATE DATABASE `{name}`", f"DROP DATABASE IF EXISTS `{name}`"

    def emptying_statements(self, tables: Sequence[str]) -> list[str]:
        return ["SET FOREIGN_KEY_CHECKS = 0", *(f"TRUNCATE TABLE `{t}`" for t in tables), "SET FOREIGN_KEY_CHECKS = 1"]

    def schema_queries(self) -> list[str]:
        return [q.format(schema="DATABASE()") for q in COMMON_SCHEMA_QUERIES] + [
            "SELECT table_name, index_name, column_name, seq_in_index FROM information_schema.statistics "
            "WHERE table_schema = DATABASE() ORDER BY table_name, index_name, seq_in_index"]


def lock_name(database: str | None, application: str = "default") -> str:
    """An application's run lock's name: server-wide, so it names the database (hashed past 64 characters)."""
    name = f"smartcar-etl:{database or ''}" + (f":{application}" if application != "default" else "")
    return name if len(name) <= 64 else f"smartcar-etl:{hashlib.sha256(name.encode()).hexdigest()[:48]}"
