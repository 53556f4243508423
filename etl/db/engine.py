"""Engines, connection checks and migrations for the configured database."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from etl.db.dialects import is_unreachable
from etl.errors import DatabaseError, NoDatabaseError, NotMigratedError, one_line

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str, *, create: bool = True, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout on every connection.

    Without ``create``, a SQLite file that does not exist is an error (exit 2,
    naming ``db upgrade``) instead of being created empty.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database).expanduser().resolve()
            if not path.parent.is_dir():
                raise DatabaseError(url=safe_url(url), reason=f"folder {path.parent} does not exist")
            if not create and not path.exists():
                raise NoDatabaseError(url=safe_url(url))
        kwargs.setdefault("connect_args", {"timeout": 30})
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA foreign_keys = ON")
                if database not in ("", ":memory:"):
                    # WAL stays set in the file once set; a read-only file keeps the mode it has.
                    with contextlib.suppress(sqlite3.OperationalError):
                        cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
            finally:
                cursor.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


@contextmanager
def translate_errors(engine: Engine) -> Iterator[None]:
    """Turn errors of the database itself (cannot connect, not a database) into DatabaseError (exit 3)."""
    try:
        yield
    except exc.DBAPIError as error:
        if not is_unreachable(error):
            raise  # one statement's data was refused: the caller decides what that costs
        reason = one_line(error).split(": ", 1)[-1] or type(error).__name__
        raise DatabaseError(url=safe_url(engine.url.render_as_string()), reason=reason) from error


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    """An Alembic config pointing at the bundled migrations, optionally bound to a connection."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration revision shipped with this code."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's migration revision, or None for an empty database."""
    with translate_errors(engine), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Apply every migration; return (revision before, revision after). Idempotent."""
    with translate_errors(engine):
        before = current_revision(engine)
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        return before, head_revision()


def require_migrated(engine: Engine) -> None:
    """Raise NotMigratedError unless the database is at the newest revision."""
    with translate_errors(engine):
        current = current_revision(engine)
    head = head_revision()
    if current != head:
        raise NotMigratedError(url=safe_url(engine.url.render_as_string()), current=current, head=head)


def null_pool_engine(url: str) -> Engine:
    """An engine that keeps no connections open, for migrations run from the alembic CLI."""
    return make_engine(url, poolclass=NullPool)
