"""Migrations own the schema: every contract table and column, idempotent, equal to the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from etl.db.engine import current_revision, head_revision, upgrade
from etl.db.models import Base, compared_objects

CONTRACT = {
    "users": {"id", "first_seen_at", "last_seen_at"},
    "vehicles": {"id", "make", "model", "year", "mode", "powertrain_type", "first_seen_at", "last_seen_at"},
    "connections": {"id", "user_id", "vehicle_id", "status", "source_created_at", "source_updated_at",
                    "first_seen_at", "last_seen_at", "last_attempt_at", "last_error"},
    "permission_grants": {"connection_id", "permission", "valid_from", "valid_to"},
    "permission_changes": {"id", "connection_id", "permission", "change", "observed_at",
                           "previous_observed_at", "source_updated_at", "run_id"},
    "sync_runs": {"id", "trigger", "started_at", "finished_at", "status"},
    "fetch_errors": {"id", "run_id", "connection_id", "occurred_at", "kind", "http_status", "detail"},
}


def test_upgrade_creates_every_contract_table_and_column(empty_engine: Engine) -> None:
    assert current_revision(empty_engine) is None
    before, after = upgrade(empty_engine)
    assert (before, after) == (None, head_revision())
    inspector = inspect(empty_engine)
    for table, columns in CONTRACT.items():
        have = {c["name"] for c in inspector.get_columns(table)}
        assert columns <= have, f"{table} lacks {columns - have}"


def test_upgrade_twice_is_a_no_op(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    assert upgrade(empty_engine) == (head_revision(), head_revision())
    assert current_revision(empty_engine) == head_revision()


def test_models_and_migrations_agree(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    with empty_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "compare_type": True, "include_object": compared_objects(empty_engine.dialect)})
        assert compare_metadata(context, Base.metadata) == []


def test_timestamps_are_timezone_aware_columns(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    columns = {c["name"]: c for c in inspect(empty_engine).get_columns("permission_grants")}
    kind = str(columns["valid_from"]["type"]).upper()
    if empty_engine.dialect.name == "postgresql":
        assert columns["valid_from"]["type"].timezone is True, kind  # timestamptz
    else:
        assert kind == "DATETIME"


def test_open_grants_are_unique_per_connection_and_permission(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    indexes = {i["name"]: i for i in inspect(empty_engine).get_indexes("permission_grants")}
    assert indexes["uq_permission_grants_open"]["unique"]


def test_upgrading_an_existing_database_keeps_its_rows(empty_engine: Engine) -> None:
    import datetime as dt

    from alembic import command
    from sqlalchemy import text

    from etl.db.engine import alembic_config

    with empty_engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
        conn.execute(text("INSERT INTO connections (id, status, tracked, tracked_at) "
                          "VALUES ('32c4139a-e4aa-4c6c-b357-3ae9022dbf1b', 'pending', true, :t)"),
                     {"t": dt.datetime(2026, 3, 1, tzinfo=dt.UTC) if empty_engine.dialect.name == "postgresql"
                      else "2026-03-01 00:00:00.000000"})
    assert current_revision(empty_engine) == "0001"
    upgrade(empty_engine)
    with empty_engine.connect() as conn:
        row = conn.execute(text("SELECT id, status, consecutive_failures, next_due_at FROM connections")).one()
    assert tuple(row) == ("32c4139a-e4aa-4c6c-b357-3ae9022dbf1b", "pending", 0, None)
