"""What every part of the Store stands on: the engine, its database object, and one helper per kind of
transaction that translates the driver's errors (``etl.db.engine.translate_errors``)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

from sqlalchemy import Connection, Engine, true
from sqlalchemy.sql.elements import ColumnElement

from etl.db.dialects import IMMEDIATE, Database, dialect_for
from etl.db.engine import safe_url, translate_errors


class Transactions:
    """The engine of one database, and its transactions: the base of the Store's parts."""

    def __init__(self, engine: Engine, *, archive: bool = True) -> None:
        self.engine = engine
        self.dialect: Database = dialect_for(engine)
        self.url = safe_url(engine.url.render_as_string())
        self.archive = archive  # batches archive their documents (config ``archive.enabled``)
        self._future_seen: set[str] = set()  # budget keys whose row was found updated in the future (logged once)
        self.application: str | None = None  # None: every application (reports, rebuild); see ``scoped``

    def scoped(self, application: str) -> Self:
        """The same store (engine, pool) for one application: its per-application verbs read and write only
        that application's connections, runs, backfills and lock."""
        view = copy.copy(self)
        view.application = application
        return view

    def mine(self, column: Any) -> ColumnElement[bool]:
        """``column`` (an ``application`` column) is this store's application; always true when unscoped."""
        return column == self.application if self.application is not None else true()

    @property
    def writing_as(self) -> str:
        """The application that rows written through this store belong to."""
        from etl.db.models import DEFAULT_APPLICATION

        return self.application or DEFAULT_APPLICATION

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reading; driver errors of the database itself become DatabaseError."""
        with translate_errors(self.engine), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self, *, retried: bool = False) -> Iterator[Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite: the write lock from the start);
        ``retried``: the caller runs it again if the database gives it up (``translate_errors``)."""
        with translate_errors(self.engine, retried=retried), self.engine.connect() as conn:
            conn.execution_options(**{IMMEDIATE: True})
            with conn.begin():
                yield conn
