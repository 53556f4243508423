"""`rebuild` derives the same history from the archive as the live passes built (on every database)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, select

from etl.cli import cli
from etl.db.models import Base, connections, permission_changes, permission_grants
from etl.db.rebuild import KEPT, snapshot
from etl.db.store import Store
from etl.errors import ConfigError
from etl.tracking import track
from tests.conftest import Runner, max_examples

PERMS = ["read_location", "READ_LOCATION", "read_odometer", "read_vin"]
USERS = [str(uuid.uuid4()) for _ in range(2)]  # connections share users, as people have several cars
step = st.one_of(
    st.tuples(st.just("permissions"), st.lists(st.sampled_from(PERMS), max_size=5)),  # order, duplicates
    st.tuples(st.just("make"), st.sampled_from(["Kia", "Tesla"])),
    st.tuples(st.just("gone"), st.none()),
    st.tuples(st.just("back"), st.none()),
    st.tuples(st.just("fail"), st.none()),
    st.tuples(st.just("rejected"), st.none()),
    st.tuples(st.just("same"), st.none()),
    st.tuples(st.just("off"), st.none()),  # the tick's pass runs with archive.enabled off
)


def state(engine: Engine) -> tuple[Any, ...]:
    """Everything rebuild derives, and the connection columns it must keep."""
    with engine.connect() as conn:
        kept = sorted(tuple(r) for r in conn.execute(select(connections.c.id, *(connections.c[k] for k in KEPT))))
        return snapshot(conn), kept


def live(run_sync: Runner, histories: list[list[tuple[str, Any]]]) -> None:
    """Drive the fake API through the steps, one sync pass per tick, as cron would."""
    fake = run_sync.fake
    ids = []
    for n, _ in enumerate(histories):
        cid = str(uuid.uuid4())
        fake.add(connection_id=cid, user_id=USERS[n % 2], permissions=["read_vin"])
        ids.append(cid)
    track(Store(run_sync.engine), ids)
    for tick in range(max(len(h) for h in histories)):
        off = any(h[tick][0] == "off" for h in histories if tick < len(h))
        for cid, history in zip(ids, histories, strict=True):
            conn = fake.connections.get(cid)
            if conn is not None:
                conn.broken = None
            if tick >= len(history):
                continue
            kind, value = history[tick]
            if kind == "permissions" and conn is not None:
                conn.permissions = list(value)
                conn.updated_at = f"2026-02-{tick + 1:02d}T00:00:00Z"
            elif kind == "make" and conn is not None:
                conn.vehicle["make"] = value
            elif kind == "gone" and conn is not None:
                fake.remove(cid)
            elif kind == "back" and cid not in fake.connections:
                fake.restore(cid)
            elif kind == "fail":
                fake.fail_next(500, match=cid, times=run_sync.config.retry.max_attempts)
            elif kind == "rejected" and conn is not None:
                conn.broken = "bad_permission"
        run_sync(advance=dt.timedelta(hours=7), ignore_due=True, archive=not off)  # passes cross days


def test_rebuild_reproduces_every_table_also_after_the_history_was_emptied(run_sync: Runner, engine: Engine) -> None:
    @settings(max_examples=max_examples(engine, on_sqlite=20), deadline=None)
    @given(histories=st.lists(st.lists(step, min_size=1, max_size=6), min_size=1, max_size=3))
    @example(histories=[[("back", None), ("off", None), ("permissions", [])]])  # previous sighting not archived
    @example(histories=[[("back", None), ("off", None), ("rejected", None)]])  # a refusal stood for a success
    def one_example(histories: list[list[tuple[str, Any]]]) -> None:
        with engine.begin() as conn:  # each example from an empty database: one refused cannot hide the next
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(delete(table))
        live(run_sync, histories)
        built = state(engine)
        try:
            result = Store(engine).rebuild()
        except ConfigError:  # what the archive does not hold cannot be rebuilt: refused, nothing changed
            assert any(kind == "off" for history in histories for kind, _ in history)
            assert state(engine) == built
            return
        assert not result.differs, (result.removed, result.added)
        assert state(engine) == built
        with engine.begin() as conn:  # emptied by hand
            conn.execute(delete(permission_changes))
            conn.execute(delete(permission_grants))
        Store(engine).rebuild()
        assert state(engine) == built

    one_example()


def test_rebuild_is_refused_naming_connections_the_archive_does_not_cover(run_sync: Runner, engine: Engine,
                                                                         tmp_path: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ids = run_sync.fake.populate(3, seed=11)
    track(Store(engine), ids)
    run_sync(ignore_due=True)
    without = run_sync.fake.populate(1, seed=12)
    track(Store(engine), without)
    run_sync(advance=dt.timedelta(0), archive=False)  # at once, with the archive off: only the new one is due
    before = state(engine)
    monkeypatch.chdir(tmp_path)
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
    for args in (["rebuild"], ["rebuild", "--dry-run"]):
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 2, result.output
        assert without[0] in result.stderr and "archive.enabled" in result.stderr
        assert not any(i in result.stderr for i in ids)  # the three archived before are covered
    assert state(engine) == before


def test_rebuild_dry_run_counts_what_differs_and_changes_nothing(run_sync: Runner, engine: Engine, tmp_path: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ids = run_sync.fake.populate(4, seed=13)
    track(Store(engine), ids)
    run_sync(ignore_due=True)
    run_sync.fake.set_permissions(ids[0], ["read_vin"])
    run_sync(ignore_due=True)
    built = state(engine)
    with engine.begin() as conn:
        conn.execute(delete(permission_changes).where(permission_changes.c.connection_id == ids[0]))
    damaged = state(engine)
    monkeypatch.chdir(tmp_path)
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
    dry = CliRunner().invoke(cli, ["rebuild", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    missing = sum(1 for row in built[0]["permission_changes"].elements() if row[0] == ids[0])
    assert f"permission_changes: 0 rows removed, {missing} added" in dry.stdout and missing > 1
    assert "users: 0 rows removed, 0 added" in dry.stdout and "dry run: nothing was changed" in dry.stdout
    assert state(engine) == damaged
    done = CliRunner().invoke(cli, ["rebuild"], env=env)
    assert done.exit_code == 0 and "rebuilt" in done.stdout
    assert state(engine) == built


def test_a_parser_fix_reaches_the_past_through_rebuild(run_sync: Runner, engine: Engine,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser changed in a controlled way: too strict for a while (permission names of 12 characters at
    most; makes of 3), then fixed. What it refused or nulled meanwhile comes back from the archive."""
    from etl.api import documents
    from etl.db.models import sync_runs, vehicles

    fake = run_sync.fake
    cid = fake.add(permissions=["read_location", "read_vin"], vehicle={"make": "Tesla", "model": "Model 3",
                                                                       "year": 2022, "mode": "live",
                                                                       "powertrainType": "BEV"}).id
    track(Store(engine), [cid])
    with monkeypatch.context() as bug:
        bug.setattr(documents, "MAX_PERMISSION_LENGTH", 12)  # "read_location" has 13
        refused = run_sync(ignore_due=True)
        bug.setattr(documents, "MAX_PERMISSION_LENGTH", 100)
        bug.setattr(documents, "MAX_TEXT_LENGTH", 3)  # "Tesla", "Model 3", "live" do not fit: stored as NULL
        nulled = run_sync(ignore_due=True)
    assert refused.counts.failed == 1 and nulled.counts.nulled == 3
    with engine.connect() as conn:
        first_run = conn.scalar(select(sync_runs.c.id).order_by(sync_runs.c.id).limit(1))
        assert conn.execute(select(vehicles.c.make, vehicles.c.model, vehicles.c.mode)).one() == (None, None, None)
        assert {(r.permission, r.run_id) for r in conn.execute(select(permission_changes))} == {
            ("read_location", first_run + 1), ("read_vin", first_run + 1)}  # seen first by the second run

    result = Store(engine).rebuild()  # the fixed parser, over the archive
    assert result.differs and result.still_rejected == 0
    with engine.connect() as conn:
        assert conn.execute(select(vehicles.c.make, vehicles.c.model, vehicles.c.mode)).one() == (
            "Tesla", "Model 3", "live")
        changes = {(r.permission, r.change, r.run_id) for r in conn.execute(select(permission_changes))}
        granted_at = set(conn.scalars(select(permission_grants.c.valid_from)))
        first_seen = conn.scalar(select(connections.c.first_seen_at))
    assert changes == {("read_location", "granted", first_run), ("read_vin", "granted", first_run)}
    assert granted_at == {first_seen} and first_seen is not None  # from the refused document's time
