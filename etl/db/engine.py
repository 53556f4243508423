"""Engines, connection checks and migrations for the configured database."""

from __future__ import annotations

import functools
import importlib.resources
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, exc
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from etl.db.dialects import dialect_for, for_url
from etl.errors import DatabaseError, NoDatabaseError, NotMigratedError, one_line

log = logging.getLogger(__name__)


def migrations_path() -> str:
    """Where the migrations are: the package ``etl.migrations`` (the top-level ``migrations/`` of a checkout).

    A source tree used without installing (``PYTHONPATH=.``) has no such package:
    then ``migrations/`` beside ``etl/``.
    """
    try:
        return str(importlib.resources.files("etl.migrations"))
    except ModuleNotFoundError:
        return str(Path(__file__).resolve().parents[2] / "migrations")


# Query parameters that carry a secret: libpq's password and sslpassword, PyMySQL's passwd, and the like.
SECRET_PARAMETER = re.compile("pass|pwd|secret|token", re.IGNORECASE)


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages and logs: its user's, and any in its query."""
    parsed = make_url(url)
    hidden = {name: "***" for name in parsed.query if SECRET_PARAMETER.search(name)}
    shown = parsed.update_query_dict(hidden).render_as_string(hide_password=True)
    return shown.replace("=%2A%2A%2A", "=***")  # the query is rendered URL-encoded


def make_engine(url: str, *, create: bool = True, **kwargs: Any) -> Engine:
    """Create an engine set up for its database (``Database.configure``).

    Without ``create``, a SQLite file that does not exist is an error (exit 2,
    naming ``db upgrade``) instead of being created empty.
    """
    parsed = make_url(url)
    database = for_url(parsed)
    path = database.file_of(parsed)
    if path is not None:
        try:
            folder, exists = path.parent.is_dir(), path.exists()
        except OSError as error:  # a name too long for the file system
            raise DatabaseError(url=safe_url(url), reason=f"cannot use the file: {error.strerror}") from None
        if not folder:
            raise DatabaseError(url=safe_url(url), reason=f"folder {path.parent} does not exist")
        if not create and not exists:
            raise NoDatabaseError(url=safe_url(url))
    engine = create_engine(url, **{**database.engine_options(parsed), **kwargs})
    database.configure(engine)
    return engine


@contextmanager
def translate_errors(engine: Engine, *, retried: bool = False) -> Iterator[None]:
    """Turn errors of the database itself (cannot connect, not a database) into DatabaseError (exit 3).

    A transaction the database gave up (a deadlock, a busy SQLite file) is one too, unless the caller
    runs it again (``retried``: the batch writer), which then sees the driver's error.
    """
    try:
        yield
    except exc.DBAPIError as error:
        kind = dialect_for(engine).error_kind(error)
        if kind == "rejected" or (kind == "retry" and retried):
            raise  # one statement's data was refused: the caller decides what that costs
        reason = one_line(error).split(": ", 1)[-1] or type(error).__name__
        raise DatabaseError(url=safe_url(engine.url.render_as_string()), reason=reason) from error


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    """An Alembic config pointing at the bundled migrations, optionally bound to a connection."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", migrations_path())
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def head_revision() -> str:
    """The newest migration revision shipped with this code.

    Read once a process: the migrations this code expects do not change while it runs, and reading
    them (every script file) before each of a daemon's passes cost more than the pass's own queries.
    """
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's migration revision, or None for an empty database.

    Read without SQLAlchemy's statement cache: Alembic builds its version table anew for every
    ``MigrationContext``, and a ``Table``'s cache key is the object itself, so every call would add an
    entry (and keep the table alive) until the cache's LRU limit. The daemon asks before every pass.
    """
    with translate_errors(engine), engine.connect() as conn:
        return MigrationContext.configure(conn.execution_options(compiled_cache=None)).get_current_revision()


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
