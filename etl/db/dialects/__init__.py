"""What differs between the supported databases: one object per database, chosen once.

``dialect_for(engine_or_connection)`` gives the ``SQLite``, ``PostgreSQL`` or ``MariaDB`` object
(``etl.db.dialects.base.Database``): the upsert, bulk insert and ``IN`` a list, the partial unique index
(MariaDB's stand-in), the run lock, error sorting, the server clock, table sizes, URL normalising and
scratch databases. Where code must branch it asks a named capability (``supports_partial_index``,
``has_server_clock``, ``has_copy``, ``prepares_executemany``, ``transactional_ddl``, ``alters_by_copy``,
``is_server``), never the database's name: only this package compares names. A new database is one
new class, added to ``DATABASES``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from etl.db.dialects.base import IMMEDIATE, SUPPORTED_URLS, Database, ErrorKind
from etl.db.dialects.mariadb import MARIADB, MariaDB
from etl.db.dialects.postgresql import PostgreSQL
from etl.db.dialects.sqlite import SQLite

__all__ = [
    "DATABASES", "IMMEDIATE", "MARIADB", "SUPPORTED_URLS", "TABLE_OPTIONS", "Database", "ErrorKind", "MariaDB",
    "PostgreSQL", "SQLite", "dialect_for", "for_url", "normalise_url", "partial_index_where",
]

DATABASES: tuple[Database, ...] = (SQLite(), PostgreSQL(), MariaDB())
# SQLAlchemy's dialect name (the URL's scheme) -> the database object.
_BY_BACKEND: dict[str, Database] = {backend: db for db in DATABASES for backend in db.backends}


def dialect_for(source: Any) -> Database:
    """The database object for an engine, a connection or a SQLAlchemy dialect (anything with a dialect)."""
    name = getattr(getattr(source, "dialect", source), "name", None)
    try:
        return _BY_BACKEND[name]  # type: ignore[index]
    except KeyError:
        msg = f"unsupported database dialect {name!r}"
        raise NotImplementedError(msg) from None


def for_url(url: URL) -> Database:
    """The database object for a URL (before any engine exists); ValueError naming what is supported."""
    try:
        return _BY_BACKEND[url.get_backend_name()]
    except KeyError:
        msg = f"unsupported database {url.get_backend_name()[:40]!r} (supported: {SUPPORTED_URLS})"
        raise ValueError(msg) from None


def normalise_url(text: str) -> str:
    """The URL with its driver made explicit where needed; ValueError naming what is supported otherwise."""
    try:
        url: URL = make_url(text)
    except ArgumentError:
        msg = f"not a SQLAlchemy database URL (supported: {SUPPORTED_URLS})"
        raise ValueError(msg) from None
    if url.drivername.partition("+")[0] == "postgres":  # Heroku's and libpq's spelling; SQLAlchemy dropped it
        url = url.set(drivername="postgresql" + url.drivername[len("postgres"):])
    return for_url(url).normalise(url, text)


def partial_index_where(condition: str) -> dict[str, Any]:
    """Keyword arguments that make an ``Index`` partial (``WHERE condition``) on every database that has
    partial indexes; the index must then be created only there (``supports_partial_index``)."""
    return {key: value for db in DATABASES for key, value in db.index_where(condition).items()}


# Keyword arguments every table takes (MariaDB: InnoDB, utf8mb4, binary collation, so ids and permission
# names compare exactly, as on the other two).
TABLE_OPTIONS: dict[str, str] = {key: value for db in DATABASES for key, value in db.table_options().items()}
