"""History rules of the contract, through the real store, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from etl.api.documents import ConnectionRecord, VehicleAttributes
from etl.db.batch import store_batch
from etl.db.models import connections, fetch_errors, permission_changes, permission_grants, users, vehicles
from etl.db.store import Store
from etl.errors import RetriableApiError
from etl.outcomes import Failed, Fetched, Gone, Outcome
from etl.tracking import track
from tests.conftest import T0, max_examples

USER = "1e258add-fb21-4293-b9ab-cf8a61f7a880"
VEHICLE = "a6a425d6-c661-4b21-af7a-d6b75f80f3b0"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def record(cid: str, permissions: list[str], **vehicle: Any) -> ConnectionRecord:
    return ConnectionRecord(
        connection_id=cid, user_id=USER, vehicle_id=VEHICLE, permissions=frozenset(permissions),
        vehicle=VehicleAttributes(**vehicle), source_updated_at=T0,
    )


def store(engine: Engine, *outcomes: Outcome) -> Any:
    with engine.begin() as conn:
        return store_batch(conn=conn, run_id=None, outcomes=list(outcomes))


def changes(engine: Engine, cid: str) -> list[tuple[str, str, dt.datetime, dt.datetime | None]]:
    pc = permission_changes.c
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            select(pc.change, pc.permission, pc.observed_at, pc.previous_observed_at)
            .where(pc.connection_id == cid).order_by(pc.id))]


def grants(engine: Engine, cid: str) -> list[tuple[str, dt.datetime, dt.datetime | None]]:
    g = permission_grants.c
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            select(g.permission, g.valid_from, g.valid_to).where(g.connection_id == cid)
            .order_by(g.valid_from, g.permission))]


def held_at(engine: Engine, cid: str, when: dt.datetime) -> set[str]:
    g = permission_grants.c
    with engine.connect() as conn:
        return set(conn.scalars(select(g.permission).where(
            g.connection_id == cid, g.valid_from <= when, (g.valid_to.is_(None)) | (g.valid_to > when))))


@pytest.fixture
def cid(engine: Engine) -> str:
    new = str(uuid.uuid4())
    track(Store(engine), [new], now=lambda: T0)
    return new


def test_first_fetch_grants_each_permission_and_opens_grants(engine: Engine, cid: str) -> None:
    counts = store(engine, Fetched(cid, at(1), record(cid, ["read_odometer", "read_location"])))
    assert (counts.granted, counts.revoked, counts.changed) == (2, 0, 1)
    assert changes(engine, cid) == [
        ("granted", "read_location", at(1), None), ("granted", "read_odometer", at(1), None)]
    assert grants(engine, cid) == [("read_location", at(1), None), ("read_odometer", at(1), None)]
    with engine.connect() as conn:
        row = conn.execute(select(connections).where(connections.c.id == cid)).one()
        assert (row.status, row.user_id, row.vehicle_id, row.first_seen_at) == ("active", USER, VEHICLE, at(1))
        assert conn.scalar(select(users.c.first_seen_at)) == at(1)


def test_same_state_again_writes_nothing_whatever_the_order_or_duplicates(engine: Engine, cid: str) -> None:
    store(engine, Fetched(cid, at(1), record(cid, ["a_x", "b_y"])))
    before = changes(engine, cid), grants(engine, cid)
    for n, perms in enumerate([["b_y", "a_x"], ["a_x", "a_x", "b_y", "b_y"], ["a_x", "b_y"]], start=2):
        counts = store(engine, Fetched(cid, at(n), record(cid, perms)))
        assert (counts.granted, counts.revoked, counts.changed) == (0, 0, 0)
    assert (changes(engine, cid), grants(engine, cid)) == before


def test_added_and_removed_permission_records_exactly_that(engine: Engine, cid: str) -> None:
    store(engine, Fetched(cid, at(1), record(cid, ["keep", "drop"])))
    store(engine, Fetched(cid, at(2), record(cid, ["keep", "new"])))
    assert changes(engine, cid)[2:] == [("granted", "new", at(2), at(1)), ("revoked", "drop", at(2), at(1))]
    assert grants(engine, cid) == [
        ("drop", at(1), at(2)), ("keep", at(1), None), ("new", at(2), None)]


def test_404_revokes_everything_and_a_return_is_a_first_fetch_again(engine: Engine, cid: str) -> None:
    store(engine, Fetched(cid, at(1), record(cid, ["p1", "p2"])))
    counts = store(engine, Gone(cid, at(2)))
    assert (counts.deleted, counts.revoked) == (1, 2)
    with engine.connect() as conn:
        assert conn.scalar(select(connections.c.status).where(connections.c.id == cid)) == "deleted"
    assert held_at(engine, cid, at(3)) == set()
    assert store(engine, Gone(cid, at(3))).revoked == 0  # still gone: nothing more
    store(engine, Fetched(cid, at(4), record(cid, ["p2"])))
    assert changes(engine, cid)[-1] == ("granted", "p2", at(4), at(3))
    assert grants(engine, cid) == [("p1", at(1), at(2)), ("p2", at(1), at(2)), ("p2", at(4), None)]
    with engine.connect() as conn:
        assert conn.scalar(select(connections.c.status).where(connections.c.id == cid)) == "active"


def test_failed_fetch_changes_only_attempt_and_error(engine: Engine, cid: str) -> None:
    store(engine, Fetched(cid, at(1), record(cid, ["p1"], make="Tesla")))
    with engine.connect() as conn:
        before = conn.execute(select(connections).where(connections.c.id == cid)).one()._asdict()
    error = RetriableApiError(path=f"/connections/{cid}", status=503, reason="Service Unavailable", kind="server")
    counts = store(engine, Failed(cid, at(2), error))
    assert counts.failed == 1
    with engine.connect() as conn:
        after = conn.execute(select(connections).where(connections.c.id == cid)).one()._asdict()
        assert conn.scalar(select(func.count()).select_from(fetch_errors)) == 0  # run_id None: no run row
    assert after.pop("last_attempt_at") == at(2)
    assert "HTTP 503" in after.pop("last_error")
    assert after.pop("consecutive_failures") == 1 and after.pop("next_due_at") == at(2) + dt.timedelta(minutes=5)
    for bookkeeping in ("last_attempt_at", "last_error", "consecutive_failures", "next_due_at"):
        before.pop(bookkeeping)
    assert after == before
    assert grants(engine, cid) == [("p1", at(1), None)]
    store(engine, Fetched(cid, at(3), record(cid, ["p1"])))
    with engine.connect() as conn:
        assert conn.scalar(select(connections.c.last_error).where(connections.c.id == cid)) is None


def test_vehicle_keeps_latest_attributes(engine: Engine, cid: str) -> None:
    store(engine, Fetched(cid, at(1), record(cid, [], make="Tesla", model="Model S", year=2020)))
    store(engine, Fetched(cid, at(2), record(cid, [], make="Tesla", model="Model S", year=2021)))
    with engine.connect() as conn:
        row = conn.execute(select(vehicles)).one()
    # last_seen_at is kept to the day: on the first day, the first sighting
    assert (row.make, row.year, row.first_seen_at, row.last_seen_at) == ("Tesla", 2021, at(1), at(1))


def test_timestamps_keep_microseconds_in_utc(engine: Engine, cid: str) -> None:
    when = dt.datetime(2026, 3, 1, 23, 59, 59, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    store(engine, Fetched(cid, when, record(cid, ["p"])))
    stored = grants(engine, cid)[0][1]
    assert stored == when and stored.tzinfo == dt.UTC and stored.microsecond == 123456


# -- the property ------------------------------------------------------------------------------

PERMS = ["read_location", "READ_LOCATION", "read_odometer", "read_vin", "control_charge"]  # case matters
step = st.one_of(
    st.tuples(st.just("fetch"), st.lists(st.sampled_from(PERMS), max_size=6)),  # order, duplicates
    st.tuples(st.just("gone"), st.none()),
    st.tuples(st.just("fail"), st.none()),
)


def test_history_matches_observations_on_random_sequences(engine: Engine) -> None:
    """For random observation sequences of a few connections, stored in shared batches:

    - at every observation time, the open grants equal the last successful observation;
    - every interval is matched by a `granted` change and, if closed, a `revoked` one;
    - repeating an observation writes nothing.

    Observation times carry microseconds, and permissions differ only in case (``READ_LOCATION``):
    a database that dropped the one or folded the other would fail it.
    """

    @settings(max_examples=max_examples(engine, on_sqlite=40), deadline=None)
    @given(histories=st.lists(st.lists(step, min_size=1, max_size=10), min_size=1, max_size=3))
    def one_example(histories: list[Any]) -> None:
        ids = [str(uuid.uuid4()) for _ in histories]
        track(Store(engine), ids, now=lambda: T0)
        # A real run row, so that failures also write fetch_errors.
        run_id = Store(engine).start_run(trigger="sync", planned=len(ids), at=T0)[0]
        truth: dict[str, list[tuple[dt.datetime, frozenset[str]]]] = {i: [] for i in ids}
        error = RetriableApiError(path="/connections/x", status=500, kind="server")
        for tick in range(max(len(h) for h in histories)):
            batch: list[Outcome] = []
            when = at(tick + 1) + dt.timedelta(microseconds=123457)
            for cid, history in zip(ids, histories, strict=True):
                if tick >= len(history):
                    continue
                kind, perms = history[tick]
                if kind == "fetch":
                    batch.append(Fetched(cid, when, record(cid, perms)))
                    truth[cid].append((when, frozenset(perms)))
                elif kind == "gone":
                    batch.append(Gone(cid, when))
                    truth[cid].append((when, frozenset()))
                else:
                    batch.append(Failed(cid, when, error))
            with engine.begin() as conn:
                store_batch(conn=conn, run_id=run_id, outcomes=batch)
            counts_before = _row_counts(engine)
            # Repeat every successful observation a moment later: nothing may be written.
            repeat = [o for o in batch if not isinstance(o, Failed)]
            with engine.begin() as conn:
                counts = store_batch(conn=conn, run_id=run_id, outcomes=[_later(o) for o in repeat])
            assert (counts.granted, counts.revoked) == (0, 0)
            assert _row_counts(engine) == counts_before
            for cid in ids:
                if truth[cid]:
                    assert held_at(engine, cid, when) == set(truth[cid][-1][1])

        for cid in ids:
            observed = truth[cid]
            # Between observations the held set is the last successful observation's.
            for i, (t, perms) in enumerate(observed):
                nxt = observed[i + 1][0] if i + 1 < len(observed) else t + dt.timedelta(microseconds=1000)
                probe = t + (nxt - t) / 2
                assert held_at(engine, cid, probe) == set(perms)
            if observed:
                assert held_at(engine, cid, observed[0][0] - dt.timedelta(microseconds=1)) == set()
            _assert_intervals_match_changes(engine, cid)

    one_example()


def _later(o: Outcome) -> Outcome:
    bump = dt.timedelta(microseconds=100)
    if isinstance(o, Fetched):
        return Fetched(o.connection_id, o.observed_at + bump, o.record)
    return Gone(o.connection_id, o.observed_at + bump)


def _row_counts(engine: Engine) -> tuple[int, ...]:
    with engine.connect() as conn:
        return tuple(conn.scalar(select(func.count()).select_from(t)) or 0
                     for t in (permission_grants, permission_changes, fetch_errors))


def _assert_intervals_match_changes(engine: Engine, cid: str) -> None:
    made = changes(engine, cid)
    granted = {(p, t) for c, p, t, _ in made if c == "granted"}
    revoked = {(p, t) for c, p, t, _ in made if c == "revoked"}
    intervals = grants(engine, cid)
    assert {(p, f) for p, f, _ in intervals} == granted
    assert {(p, t) for p, _, t in intervals if t is not None} == revoked
    assert len(granted) + len(revoked) == len(made)  # no duplicate change rows


def test_fetch_errors_rows_belong_to_the_run(engine: Engine, cid: str) -> None:
    run_id = Store(engine).start_run(trigger="sync", planned=1, at=T0)[0]
    error = RetriableApiError(path=f"/connections/{cid}", status=502, kind="server")
    with engine.begin() as conn:
        store_batch(conn=conn, run_id=run_id, outcomes=[Failed(cid, at(1), error)])
    with engine.connect() as conn:
        row = conn.execute(select(fetch_errors)).one()
    assert (row.run_id, row.connection_id, row.kind, row.http_status) == (run_id, cid, "server", 502)


def test_a_clock_that_steps_back_never_makes_an_interval_run_backwards(engine: Engine, cid: str) -> None:
    store(engine, Fetched(cid, at(10), record(cid, ["p1"])))
    store(engine, Fetched(cid, at(5), record(cid, ["p2"])))  # the clock went back 5 s
    later = at(10) + dt.timedelta(microseconds=1)
    assert grants(engine, cid) == [("p1", at(10), later), ("p2", later, None)]
    assert changes(engine, cid)[-2:] == [("granted", "p2", later, at(10)), ("revoked", "p1", later, at(10))]
