"""SQLAlchemy models of every table; migrations create them, tests check they agree."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    column,
    event,
    text,
)
from sqlalchemy import Connection as SqlConnection
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

from etl.db.dialects import MARIADB, TABLE_OPTIONS, dialect_for, partial_index_where

UTC = dt.UTC


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp, to the microsecond, on every database.

    Each database object says how (``utc_type``, ``utc_value``): PostgreSQL stores ``timestamptz``;
    MariaDB naive UTC in ``DATETIME(6)``, whatever the session's time zone; SQLite, which has no such
    type, naive UTC text, given back its UTC zone when read. Naive datetimes are refused rather than
    guessed at: the machine's time zone never leaks in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect_for(dialect).utc_type(dialect)

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            msg = f"naive datetime {value!r}: timestamps must be timezone-aware"
            raise ValueError(msg)
        return dialect_for(dialect).utc_value(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


ID = String(36)  # canonical lower-case UUID text, readable in SQL on every database
APPLICATION = String(40)  # an application's name (config: lower-case letters, digits, hyphens)
DEFAULT_APPLICATION = "default"  # the single application of a configuration without an applications list
# BIGINT on PostgreSQL; INTEGER on SQLite so that it is the rowid alias and autoincrements.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints stably."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UtcDateTime(), str: Text()}
    __table_args__: Any = TABLE_OPTIONS  # MariaDB: InnoDB, utf8mb4, binary collation (exact comparison)


class User(Base):
    """A Smartcar user seen through at least one connection."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    first_seen_at: Mapped[dt.datetime]
    last_seen_at: Mapped[dt.datetime]


class Vehicle(Base):
    """A vehicle with the latest attributes seen for it."""

    __tablename__ = "vehicles"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    make: Mapped[str | None]
    model: Mapped[str | None]
    year: Mapped[int | None] = mapped_column(Integer)
    mode: Mapped[str | None]
    powertrain_type: Mapped[str | None]
    first_seen_at: Mapped[dt.datetime]
    last_seen_at: Mapped[dt.datetime]


CONNECTION_STATUSES = ("pending", "active", "deleted")


class Connection(Base):
    """One tracked connection id and what was last learnt about it."""

    __tablename__ = "connections"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'active', 'deleted')", name="status"),
        Index(None, "status"),
        Index(None, "user_id"),
        Index(None, "vehicle_id"),
        Index(None, "next_due_at"),
        Index(None, "application", "status"),
        TABLE_OPTIONS,
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    # The Smartcar application the connection belongs to: only its token may ask for it.
    application: Mapped[str] = mapped_column(APPLICATION, server_default=DEFAULT_APPLICATION)
    user_id: Mapped[str | None] = mapped_column(ID, ForeignKey("users.id"))
    vehicle_id: Mapped[str | None] = mapped_column(ID, ForeignKey("vehicles.id"))
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    tracked: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    tracked_at: Mapped[dt.datetime]
    source_created_at: Mapped[dt.datetime | None]
    source_updated_at: Mapped[dt.datetime | None]
    first_seen_at: Mapped[dt.datetime | None]
    last_seen_at: Mapped[dt.datetime | None]
    # Last fetch that gave an answer (200 or 404): what previous_observed_at refers to.
    last_success_at: Mapped[dt.datetime | None]
    last_attempt_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None]
    # Per-connection cadence: when a pass should fetch it next (NULL: now), and how
    # many fetches in a row have failed (failing ones back off, deleted ones wait).
    next_due_at: Mapped[dt.datetime | None]
    consecutive_failures: Mapped[int] = mapped_column(Integer, server_default="0")
    # The connection's latest archive span (``archive_spans.id``, no foreign key: the two tables would
    # refer to each other): what an unchanged observation extends, without a search.
    archive_span_id: Mapped[int | None] = mapped_column(BigId)


OPEN_GRANT_INDEX = "uq_permission_grants_open"
# MariaDB has no partial index: a generated column, 1 while the grant is open, NULL after, with a unique key.
OPEN_GRANT_FLAG = "is_open"
def open_grant_stand_in(dialect: Dialect) -> list[str]:
    """DDL for "one open grant per connection and permission" where there is no partial index (MariaDB's
    generated column and unique key); none elsewhere, where the models' partial index is it."""
    return dialect_for(dialect).partial_unique_stand_in(
        "permission_grants", name=OPEN_GRANT_INDEX, flag=OPEN_GRANT_FLAG, columns=("connection_id", "permission"),
        condition="valid_to IS NULL")


def _has_partial_index(*_args: Any, dialect: Dialect, **_kw: Any) -> bool:
    """``ddl_if``: create the partial index only where the database has them (``open_grant_stand_in`` elsewhere)."""
    return dialect_for(dialect).supports_partial_index
CHANGES = ("granted", "revoked")
# What kind of change (``permission_changes.kind``): a first observation's grants, a later grant or revocation,
# a revocation because the connection went away, a grant because it came back. NULL: older rows that neither
# the rows nor the archive could tell.
CHANGE_KINDS = ("first_seen", "granted", "revoked", "disconnected", "reconnected")


class PermissionGrant(Base):
    """One continuous interval in which a connection held a permission."""

    __tablename__ = "permission_grants"
    __table_args__ = (
        # At most one open interval per connection and permission (elsewhere: ``open_grant_stand_in``).
        Index(OPEN_GRANT_INDEX, "connection_id", "permission", unique=True,
              **partial_index_where("valid_to IS NULL")).ddl_if(callable_=_has_partial_index),
        Index(None, "permission", "valid_from"),
        CheckConstraint("valid_to IS NULL OR valid_to > valid_from", name="interval"),
        TABLE_OPTIONS,
    )

    connection_id: Mapped[str] = mapped_column(ID, ForeignKey("connections.id"), primary_key=True)
    permission: Mapped[str] = mapped_column(String(100), primary_key=True)
    valid_from: Mapped[dt.datetime] = mapped_column(primary_key=True)
    valid_to: Mapped[dt.datetime | None]


class SyncRun(Base):
    """One run of sync, backfill or a daemon pass, with its counters."""

    __tablename__ = "sync_runs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('running', 'succeeded', 'partial', 'failed', 'aborted')", name="status"
        ),
        Index(None, "started_at"),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    trigger: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(String(16))
    connections_planned: Mapped[int] = mapped_column(Integer, server_default="0")
    connections_fetched: Mapped[int] = mapped_column(Integer, server_default="0")
    connections_changed: Mapped[int] = mapped_column(Integer, server_default="0")
    connections_deleted: Mapped[int] = mapped_column(Integer, server_default="0")
    connections_failed: Mapped[int] = mapped_column(Integer, server_default="0")
    permissions_granted: Mapped[int] = mapped_column(Integer, server_default="0")
    permissions_revoked: Mapped[int] = mapped_column(Integer, server_default="0")
    requests: Mapped[int] = mapped_column(Integer, server_default="0")
    # Descriptive fields (vehicle attributes, source times) stored as NULL: the API sent a value no column holds.
    fields_nulled: Mapped[int] = mapped_column(Integer, server_default="0")
    # Due connections left for the next pass because this one would have run past its --max-duration.
    connections_deferred: Mapped[int] = mapped_column(Integer, server_default="0")
    # Wall time the run's requests waited for the rate limit.
    rate_limit_wait_seconds: Mapped[float] = mapped_column(Float, server_default="0")
    # 404s of active or pending connections that the mass-deletion guard did not store (sync.max_deleted_share).
    deletions_held: Mapped[int] = mapped_column(Integer, server_default="0")
    error: Mapped[str | None]
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None]
    application: Mapped[str] = mapped_column(APPLICATION, server_default=DEFAULT_APPLICATION)


class PermissionChange(Base):
    """Append-only log of every permission granted or revoked."""

    __tablename__ = "permission_changes"
    __table_args__ = (
        CheckConstraint(column("change").in_(CHANGES), name="change"),  # `change`: reserved on MariaDB
        Index(None, "connection_id", "permission", "observed_at"),
        Index(None, "observed_at"),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    connection_id: Mapped[str] = mapped_column(ID, ForeignKey("connections.id"))
    permission: Mapped[str] = mapped_column(String(100))
    change: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str | None] = mapped_column(String(16))  # CHANGE_KINDS
    observed_at: Mapped[dt.datetime]
    previous_observed_at: Mapped[dt.datetime | None]
    source_updated_at: Mapped[dt.datetime | None]
    run_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("sync_runs.id"))


class Backfill(Base):
    """A backfill and its checkpoint, so that an interrupted one can resume.

    An ids-file backfill resumes with the ids not attempted since it started
    (``connections.last_attempt_at``); a listing backfill resumes at ``next_page``.
    """

    __tablename__ = "backfills"
    __table_args__ = (
        CheckConstraint("kind IN ('ids', 'all')", name="kind"),
        CheckConstraint("status IN ('running', 'done', 'abandoned')", name="status"),
        Index(None, "kind", "fingerprint", "status"),
        TABLE_OPTIONS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(8))
    source: Mapped[str]
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of the sorted ids, or "listing"
    total: Mapped[int | None] = mapped_column(Integer)
    next_page: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(String(16))
    last_run_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("sync_runs.id"))
    application: Mapped[str] = mapped_column(APPLICATION, server_default=DEFAULT_APPLICATION)


class RateBudget(Base):
    """The API's token bucket for one application (keyed by client id), shared by every process of the job.

    ``tokens`` may be negative: a 429 with Retry-After empties the bucket for that long.
    """

    __tablename__ = "rate_budgets"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    capacity: Mapped[float] = mapped_column(Float)
    per_second: Mapped[float] = mapped_column(Float)
    tokens: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[dt.datetime]


class ApplicationFiring(Base):
    """The latest firing of an application's schedule that a daemon took: each firing runs in one daemon.

    A daemon claims a firing with a conditional update (``last_firing_at`` older than the firing); the one
    whose update changed the row runs it, the others skip it.
    """

    __tablename__ = "application_firings"

    application: Mapped[str] = mapped_column(APPLICATION, primary_key=True)
    last_firing_at: Mapped[dt.datetime]
    claimed_by: Mapped[str | None]  # host and pid of the daemon that took it
    claimed_at: Mapped[dt.datetime | None]


class FetchError(Base):
    """One connection that failed in one run."""

    __tablename__ = "fetch_errors"
    __table_args__ = (Index(None, "run_id"), Index(None, "connection_id", "occurred_at"), TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(BigId, ForeignKey("sync_runs.id"))
    connection_id: Mapped[str] = mapped_column(ID, ForeignKey("connections.id"))
    occurred_at: Mapped[dt.datetime]
    kind: Mapped[str] = mapped_column(String(16))
    http_status: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None]


class ArchiveBody(Base):
    """One distinct document of one connection, as the API sent it: the ``data`` resource in canonical JSON
    (sorted keys, no ``links``), zlib-compressed when that makes it smaller.

    ``rejected``: validation refused it when it arrived (``rebuild`` validates it again).
    """

    __tablename__ = "archive_bodies"
    __table_args__ = (UniqueConstraint("connection_id", "digest"), TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    connection_id: Mapped[str] = mapped_column(ID, ForeignKey("connections.id"))
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of the canonical JSON, hex
    compressed: Mapped[bool] = mapped_column(Boolean)
    body: Mapped[bytes] = mapped_column(LargeBinary().with_variant(mysql.LONGBLOB(), *MARIADB))
    size: Mapped[int] = mapped_column(Integer)  # bytes of canonical JSON
    rejected: Mapped[bool] = mapped_column(Boolean)


class ArchiveSpan(Base):
    """A run of identical observations of one connection: the same body (NULL: the API answered 404)
    from ``first_seen_at`` to ``last_seen_at``; ``run_id`` is the run that saw it first."""

    __tablename__ = "archive_spans"
    __table_args__ = (Index(None, "connection_id", "first_seen_at"), TABLE_OPTIONS)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    connection_id: Mapped[str] = mapped_column(ID, ForeignKey("connections.id"))
    body_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("archive_bodies.id"))
    first_seen_at: Mapped[dt.datetime]
    last_seen_at: Mapped[dt.datetime]
    run_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("sync_runs.id"))


users: Table = Base.metadata.tables["users"]
vehicles: Table = Base.metadata.tables["vehicles"]
connections: Table = Base.metadata.tables["connections"]
permission_grants: Table = Base.metadata.tables["permission_grants"]
permission_changes: Table = Base.metadata.tables["permission_changes"]
sync_runs: Table = Base.metadata.tables["sync_runs"]
fetch_errors: Table = Base.metadata.tables["fetch_errors"]
backfills: Table = Base.metadata.tables["backfills"]
rate_budgets: Table = Base.metadata.tables["rate_budgets"]
archive_bodies: Table = Base.metadata.tables["archive_bodies"]
archive_spans: Table = Base.metadata.tables["archive_spans"]
application_firings: Table = Base.metadata.tables["application_firings"]

def compared_objects(dialect: Dialect) -> Callable[..., bool]:
    """Alembic's ``include_object`` for comparing these models with a database of this dialect.

    Where there is no partial index (MariaDB) it leaves out the stand-in for it (the generated column and
    its unique key), which models cannot declare for one database only; a test checks it instead.
    """
    def include(_object: object, name: str | None, type_: str, _reflected: bool, _compare_to: object) -> bool:
        stand_in = (type_ == "column" and name == OPEN_GRANT_FLAG) or (type_ == "index" and name == OPEN_GRANT_INDEX)
        return not (stand_in and not dialect_for(dialect).supports_partial_index)

    return include


@event.listens_for(permission_grants, "after_create")
def _create_open_grant_stand_in(target: Table, connection: SqlConnection, **_kw: object) -> None:
    """create_all() makes the stand-in where there is no partial index, as migration 0001 does."""
    for statement in open_grant_stand_in(connection.dialect):
        connection.exec_driver_sql(statement)
