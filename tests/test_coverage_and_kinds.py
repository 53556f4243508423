"""What the mirror does not know (connections that existed before they were first observed) and what kind of
change each change is (first observation, grant, revocation, disconnection, return), on every database."""

from __future__ import annotations

import datetime as dt
import importlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select, text, update

from etl.cli import cli
from etl.db.models import CHANGE_KINDS, permission_changes
from etl.db.store import Store
from etl.reports import changes_between, coverage_note, permissions_at
from etl.tracking import track
from tests.conftest import Runner

FILLS = importlib.import_module("migrations.versions.0011_change_kinds_and_coverage").FILLS
CREATED = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)  # the fake's createdAt


def kinds(engine: Engine) -> list[tuple[str, str, str, str | None]]:
    pc = permission_changes.c
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            select(pc.connection_id, pc.permission, pc.change, pc.kind).order_by(pc.id))]


def story(run_sync: Runner, engine: Engine) -> list[str]:
    """Two connections: a first pass; a grant and a revocation; a disconnection; a return."""
    fake = run_sync.fake
    ids = fake.populate(2, seed=31)
    for cid in ids:
        fake.set_permissions(cid, ["read_location", "read_odometer"])
    track(Store(engine), ids, now=run_sync.clock)
    run_sync(ignore_due=True)
    fake.set_permissions(ids[0], ["read_location", "read_vin"])  # grants read_vin, revokes read_odometer
    run_sync(ignore_due=True)
    fake.remove(ids[1])  # the user disconnects
    run_sync(ignore_due=True)
    fake.restore(ids[1])  # and comes back
    run_sync(ignore_due=True)
    return ids


def test_every_change_has_its_kind(run_sync: Runner, engine: Engine) -> None:
    a, b = story(run_sync, engine)
    assert kinds(engine) == [
        (a, "read_location", "granted", "first_seen"), (a, "read_odometer", "granted", "first_seen"),
        (b, "read_location", "granted", "first_seen"), (b, "read_odometer", "granted", "first_seen"),
        (a, "read_vin", "granted", "granted"), (a, "read_odometer", "revoked", "revoked"),
        (b, "read_location", "revoked", "disconnected"), (b, "read_odometer", "revoked", "disconnected"),
        (b, "read_location", "granted", "reconnected"), (b, "read_odometer", "granted", "reconnected"),
    ]
    assert {r["kind"] for r in changes_between(engine, CREATED)} == set(CHANGE_KINDS)


def test_rebuild_writes_the_same_kinds(run_sync: Runner, engine: Engine) -> None:
    story(run_sync, engine)
    before = kinds(engine)
    Store(engine).rebuild()
    assert kinds(engine) == before


def test_the_migration_fills_past_kinds_where_the_rows_and_the_archive_tell(run_sync: Runner,
                                                                           engine: Engine) -> None:
    story(run_sync, engine)
    before = kinds(engine)
    with engine.begin() as conn:
        conn.execute(update(permission_changes).values(kind=None))  # as rows written before the column
        for kind, condition in FILLS:
            conn.execute(text(f"UPDATE permission_changes SET kind = '{kind}' WHERE kind IS NULL AND {condition}"))
    assert kinds(engine) == before


def test_without_the_archive_the_migration_leaves_what_it_cannot_tell_null(run_sync: Runner,
                                                                          engine: Engine) -> None:
    fake = run_sync.fake
    [cid] = fake.populate(1, seed=32)
    fake.set_permissions(cid, ["read_location"])
    track(Store(engine), [cid], now=run_sync.clock)
    run_sync(ignore_due=True, archive=False)
    fake.set_permissions(cid, [])
    run_sync(ignore_due=True, archive=False)
    with engine.begin() as conn:
        conn.execute(update(permission_changes).values(kind=None))
        for kind, condition in FILLS:
            conn.execute(text(f"UPDATE permission_changes SET kind = '{kind}' WHERE kind IS NULL AND {condition}"))
    assert [k[2:] for k in kinds(engine)] == [("granted", "first_seen"), ("revoked", None)]


def test_a_connection_that_existed_before_it_was_first_observed_is_unknown_then(run_sync: Runner,
                                                                               engine: Engine) -> None:
    fake = run_sync.fake
    seen, later = fake.populate(2, seed=33)
    track(Store(engine), [seen], now=run_sync.clock)
    run_sync(ignore_due=True)
    first = run_sync.clock.now
    track(Store(engine), [later], now=run_sync.clock)
    run_sync(ignore_due=True, advance=dt.timedelta(days=3))
    between = first + dt.timedelta(days=1)  # `later` existed (createdAt 1 January) but was not observed yet
    rows = permissions_at(engine, between)
    assert {(r["connection_id"], r["known"]) for r in rows} == {(seen, True), (later, False)}
    assert [r["permission"] for r in rows if not r["known"]] == [None]
    assert all(not r["known"] for r in permissions_at(engine, first - dt.timedelta(days=1)))
    assert permissions_at(engine, CREATED - dt.timedelta(seconds=1)) == []  # before createdAt: not listed
    note = coverage_note(engine, between)
    assert note.startswith(f"history from {first:%Y-%m-%dT%H:%MZ}; 1 connection(s) existed")
    with engine.begin() as conn:  # a connection whose createdAt is unknown is not listed as unknown; said so
        conn.execute(text("UPDATE connections SET source_created_at = NULL WHERE id = :id"), {"id": later})
    assert {r["connection_id"] for r in permissions_at(engine, between)} == {seen}
    assert "1 connection(s) first observed later have no createdAt" in coverage_note(engine, between)
    with engine.connect() as conn:  # the same facts, for SQL by hand
        view = dict(conn.execute(text("SELECT connection_id, observed_from FROM connection_coverage")).all())
    assert set(view) == {seen, later} and view[seen] is not None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_table_ends_with_the_coverage_line_and_json_carries_known(run_sync: Runner, engine: Engine,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    [cid] = run_sync.fake.populate(1, seed=34)
    track(Store(engine), [cid], now=run_sync.clock)
    run_sync(ignore_due=True)
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
    args = ["report", "permissions", "--as-of", "2026-01-02"]
    table = CliRunner().invoke(cli, args, env=env)
    assert table.exit_code == 0, table.output
    assert "1 connection(s) existed at that time before they were first observed" in table.stdout.splitlines()[-1]
    as_json = json.loads(CliRunner().invoke(cli, [*args, "--format", "json"], env=env).stdout)
    assert [(r["connection_id"], r["known"], r["permission"]) for r in as_json] == [(cid, False, None)]
    csv = CliRunner().invoke(cli, [*args, "--format", "csv"], env=env).stdout.splitlines()
    assert csv[0].endswith(",known") and len(csv) == 2  # no footer in CSV
