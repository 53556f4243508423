"""`sync` end to end: fake API over MockTransport, real store, SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from etl.context import Seams
from etl.db.models import Base, connections, fetch_errors, permission_changes, sync_runs
from etl.db.store import Store
from etl.errors import ConfigError, NotMigratedError, SyncAborted
from etl.fakeapi import FakeApi
from etl.sync import sync
from etl.tracking import track
from tests.conftest import Clock, Runner, make_config


def snapshot(engine: Engine, *, skip: tuple[str, ...] = ("sync_runs", "rate_budgets")) -> dict[str, list[Any]]:
    """Every row of every table (but ``skip``), for before/after comparisons.

    The runs and the rate budget are bookkeeping: every request takes from the budget, whatever its answer.
    """
    with engine.connect() as conn:
        return {
            name: sorted(map(tuple, conn.execute(select(table))), key=repr)
            for name, table in Base.metadata.tables.items() if name not in skip
        }


def world(fake: FakeApi, engine: Engine, count: int = 6) -> list[str]:
    ids = fake.populate(count, seed=3)
    track(Store(engine), ids)
    return ids


def test_a_pass_stores_every_connection_and_records_the_run(run_sync: Runner, engine: Engine) -> None:
    ids = world(run_sync.fake, engine)
    result = run_sync()
    assert (result.status, result.exit_code, result.counts.fetched) == ("succeeded", 0, 6)
    assert result.requests == 6
    with engine.connect() as conn:
        run = conn.execute(select(sync_runs)).one()
        assert (run.status, run.trigger, run.connections_planned, run.connections_fetched) == (
            "succeeded", "sync", 6, 6)
        assert run.permissions_granted == conn.scalar(select(func.count()).select_from(permission_changes))
        assert run.finished_at is not None and run.requests == 6
        assert set(conn.scalars(select(connections.c.status))) == {"active"}
    assert sorted(ids) == sorted(c for c in run_sync.fake.connections)


def test_second_pass_records_only_the_changes(run_sync: Runner, engine: Engine) -> None:
    ids = world(run_sync.fake, engine)
    run_sync()
    run_sync.fake.set_permissions(ids[0], ["read_vin"])
    run_sync.fake.remove(ids[1])
    result = run_sync()
    assert (result.counts.changed, result.counts.deleted) == (2, 1)
    with engine.connect() as conn:
        statuses = dict(conn.execute(select(connections.c.id, connections.c.status)).all())
        run_changes = conn.execute(
            select(permission_changes.c.connection_id, permission_changes.c.change)
            .where(permission_changes.c.run_id == result.run_id)).all()
    assert statuses[ids[1]] == "deleted"
    assert {c for c, _ in run_changes} == {ids[0], ids[1]}
    assert {ch for c, ch in run_changes if c == ids[1]} == {"revoked"}
    third = run_sync()
    assert (third.counts.changed, third.counts.granted, third.counts.revoked) == (0, 0, 0)
    assert third.planned == 5  # deleted ones wait for --all


def test_all_rechecks_deleted_connections_and_notices_a_return(run_sync: Runner, engine: Engine) -> None:
    ids = world(run_sync.fake, engine, count=2)
    run_sync.fake.remove(ids[0])
    run_sync()
    run_sync.fake.restore(ids[0])
    assert run_sync().planned == 1
    result = run_sync(ignore_due=True)
    assert (result.planned, result.counts.changed) == (2, 1)
    with engine.connect() as conn:
        assert conn.scalar(select(connections.c.status).where(connections.c.id == ids[0])) == "active"


def test_404_is_fetched_once(run_sync: Runner, engine: Engine) -> None:
    missing = "00000000-0000-4000-8000-00000000000a"
    track(Store(engine), [missing])
    result = run_sync()
    assert (result.exit_code, result.counts.deleted) == (0, 1)
    assert run_sync.fake.count("GET", f"/v3/connections/{missing}") == 1 and run_sync.sleeps == []


def test_malformed_document_is_a_failed_fetch_and_the_run_completes(run_sync: Runner, engine: Engine) -> None:
    ids = world(run_sync.fake, engine)
    run_sync.fake.connections[ids[2]].broken = "bad_permission"
    result = run_sync()
    assert (result.status, result.exit_code) == ("partial", 1)
    assert (result.counts.fetched, result.counts.failed) == (5, 1)
    with engine.connect() as conn:
        error = conn.execute(select(fetch_errors)).one()
        row = conn.execute(select(connections).where(connections.c.id == ids[2])).one()
        assert conn.scalar(select(sync_runs.c.connections_failed)) == 1
    assert (error.connection_id, error.kind, error.run_id) == (ids[2], "malformed", result.run_id)
    assert "permissions" in error.detail and "control character" in error.detail
    assert row.status == "pending" and row.user_id is None and "malformed" in row.last_error


def test_retries_exhausted_leave_a_fetch_error_and_keep_what_was_stored(run_sync: Runner, engine: Engine) -> None:
    ids = world(run_sync.fake, engine, count=3)
    run_sync()
    before = snapshot(engine)
    run_sync.fake.set_permissions(ids[0], [])
    run_sync.fake.fail_next(503, match=ids[0], times=50)
    result = run_sync()
    assert (result.status, result.counts.failed) == ("partial", 1)
    assert run_sync.fake.count("GET", f"/v3/connections/{ids[0]}") == 1 + 5
    after = snapshot(engine)
    assert after["permission_grants"] == before["permission_grants"]
    assert after["permission_changes"] == before["permission_changes"]
    assert len(after["fetch_errors"]) == 1


def test_every_connection_failing_is_a_failed_run(run_sync: Runner, engine: Engine) -> None:
    world(run_sync.fake, engine, count=2)
    run_sync.fake.fail_next(400, match="/v3/", times=2)
    result = run_sync()
    assert (result.status, result.exit_code) == ("failed", 1)


@pytest.mark.parametrize("fault", [
    {"status": 401, "match": "/oauth2/token"},  # credentials refused
    {"status": 430, "match": "/v3/"},  # billing
    {"status": 403, "match": "/v3/"},
])
def test_authentication_or_billing_failure_aborts_and_changes_no_row(
    run_sync: Runner, engine: Engine, fault: dict[str, Any]
) -> None:
    ids = world(run_sync.fake, engine)
    run_sync()
    run_sync.fake.set_permissions(ids[0], [])
    run_sync.fake.expire_tokens()
    before = snapshot(engine)
    run_sync.fake.fail_next(times=100, **fault)
    with pytest.raises(SyncAborted) as caught:
        run_sync()
    assert caught.value.exit_code == 3 and str(fault["status"]) in str(caught.value)
    assert snapshot(engine) == before
    with engine.connect() as conn:
        last = conn.execute(select(sync_runs).order_by(sync_runs.c.id.desc())).first()
    assert last is not None and last.status == "aborted" and last.finished_at is not None
    assert str(fault["status"]) in last.error


def test_abort_mid_run_keeps_earlier_batches_and_stops(fake_api: FakeApi, engine: Engine, clock: Clock) -> None:
    ids = world(fake_api, engine, count=40)
    config = make_config(fake_api, engine.url.render_as_string(hide_password=False), concurrency=1)
    config = replace(config, sync=replace(config.sync, batch_size=10))
    fake_api.fail_next(430, match=sorted(ids)[25])
    import httpx

    with pytest.raises(SyncAborted):
        sync(config, Store(engine),
             seams=Seams(transport=httpx.MockTransport(fake_api.handle), sleep=lambda s: None, now=clock))
    with engine.connect() as conn:
        active = conn.scalar(select(func.count()).where(connections.c.status == "active"))
        run = conn.execute(select(sync_runs)).one()
    assert active == 20 and run.connections_fetched == 20  # two whole batches, nothing after
    assert fake_api.count("GET", "/v3/connections/") <= 26 + 1


def test_sync_refuses_an_unmigrated_database(fake_api: FakeApi, empty_engine: Engine) -> None:
    config = make_config(fake_api, empty_engine.url.render_as_string(hide_password=False))
    with pytest.raises(NotMigratedError, match="db upgrade") as caught:
        sync(config, Store(empty_engine))
    assert caught.value.exit_code == 2


def test_sync_without_credentials_is_a_config_error(fake_api: FakeApi, engine: Engine) -> None:
    config = make_config(fake_api, "sqlite://", client_id=None, client_secret=None)
    with pytest.raises(ConfigError, match="SMARTCAR_CLIENT_ID"):
        sync(config, Store(engine))


def test_many_connections_in_several_batches(fake_api: FakeApi, engine: Engine, clock: Clock) -> None:
    import httpx

    ids = world(fake_api, engine, count=250)
    config = make_config(fake_api, "unused")
    config = replace(config, sync=replace(config.sync, batch_size=64))
    result = sync(config, Store(engine), seams=Seams(transport=httpx.MockTransport(fake_api.handle), now=clock))
    assert result.counts.fetched == 250
    with engine.connect() as conn:
        held = conn.execute(text(
            "SELECT connection_id, permission FROM permission_grants WHERE valid_to IS NULL")).all()
    expected = {(c, p) for c in ids for p in fake_api.connections[c].permissions}
    assert set(map(tuple, held)) == expected


def test_an_unexpected_error_closes_the_run_as_aborted_and_propagates(
    fake_api: FakeApi, engine: Engine, clock: Clock
) -> None:
    import httpx

    world(fake_api, engine, count=5)

    def failing(request: httpx.Request) -> httpx.Response:  # the run has started: fail while fetching
        if "/connections/" in request.url.path:
            raise RuntimeError("boom")
        return fake_api.handle(request)

    config = make_config(fake_api, "unused")
    with pytest.raises(RuntimeError, match="boom"):
        sync(config, Store(engine), seams=Seams(transport=httpx.MockTransport(failing), now=clock))
    with engine.connect() as conn:
        run = conn.execute(select(sync_runs)).one()
    assert (run.status, run.error) == ("aborted", "RuntimeError: boom")
