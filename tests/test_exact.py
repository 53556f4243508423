"""Exact messages, log records, limits and counters of the five areas under mutation testing.

Each test reads a value that an operator relies on (the text of an error, a
warning's fields, a run's counters) exactly, at the edge of its limit.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from etl.api.answers import redact
from etl.api.documents import (
    MAX_PERMISSIONS,
    OutOfRange,
    decode_json,
    parse_connection,
)
from etl.api.retry import RetryPolicy
from etl.cadence import Cadence
from etl.db.batch import MAX_ERROR_TEXT, error_text
from etl.db.models import backfills, connections, fetch_errors, permission_changes, sync_runs, vehicles
from etl.db.store import BatchWriter, Store
from etl.errors import MalformedDocumentError, RetriableApiError
from etl.outcomes import Fetched, Gone
from tests.conftest import T0
from tests.test_hostile import GOOD, _document
from tests.test_store_fields import record

# -- documents -----------------------------------------------------------------------------------


def _malformed(body: Any) -> MalformedDocumentError:
    with pytest.raises(MalformedDocumentError) as caught:
        parse_connection(body, expected_id=GOOD, path="/connections/x")
    return caught.value


@pytest.mark.parametrize("body, detail", [
    ({"nodata": 1}, "body has no data member"),
    ([], "body has no data member"),
    ({"data": []}, "data is not an object"),
    (_document(id=[1, 2]), "data.id is not a UUID: list"),
    (_document(id=None), "data.id is not a UUID: None"),
    (_document(id="x" * 70), "data.id is not a UUID: '" + "x" * 58 + "…"),
    (_document(type="vehicle"), "data.type is 'vehicle', expected 'connection'"),
    (_document(type=None), "data.type is None, expected 'connection'"),
    (_document(attributes={}), "data.attributes.permissions is missing"),
    (_document(attributes__permissions="read_vin"), "data.attributes.permissions is not an array"),
    (_document(attributes__permissions=["a\x00b"]),
     "data.attributes.permissions holds a value that has a control character: 'a\\x00b'"),
    (_document(relationships__user__data__id="nope"), "data.relationships.user.data.id is not a UUID: 'nope'"),
    (_document(relationships__user="flat"), "data.relationships.user is not an object"),
])
def test_malformed_documents_say_exactly_what_is_wrong(body: Any, detail: str) -> None:
    error = _malformed(body)
    assert (error.detail, error.status, error.path, error.kind) == (detail, 200, "/connections/x", "malformed")


def test_a_value_of_exactly_sixty_characters_is_shown_whole() -> None:
    assert _malformed(_document(id="y" * 58)).detail == "data.id is not a UUID: '" + "y" * 58 + "'"
    assert _malformed(_document(id="z" * 59)).detail == "data.id is not a UUID: '" + "z" * 58 + "…"


def test_the_limits_are_inclusive() -> None:
    body = _document(attributes__permissions=["read_vin"] * MAX_PERMISSIONS)
    assert parse_connection(body, expected_id=GOOD, path="/p").permissions == {"read_vin"}
    assert decode_json(b"[" + b"9" * 30 + b"]") == [int("9" * 30)]
    assert isinstance(decode_json(b"[" + b"9" * 31 + b"]")[0], OutOfRange)
    assert decode_json(b"[-" + b"9" * 30 + b"]") == [-int("9" * 30)]


def test_decode_json_says_why() -> None:
    with pytest.raises(ValueError) as deep:
        decode_json(b"[" * 50_000)
    with pytest.raises(ValueError) as broken:
        decode_json(b"{")
    assert (str(deep.value), str(broken.value)) == ("body is nested too deeply", "body is not JSON")


def test_source_times_are_utc_whatever_the_machines_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        created = parse_connection(_document(meta__createdAt="2024-01-01T08:00:00+02:00"), expected_id=GOOD,
                                   path="/p").source_created_at
    finally:
        monkeypatch.undo()
        time.tzset()
    assert created is not None and created.tzinfo is dt.UTC and created.hour == 6


def test_mode_and_model_are_read() -> None:
    body = _document(attributes__vehicle={"make": "Kia", "model": "EV6", "mode": "simulated", "powertrainType": "BEV"})
    vehicle = parse_connection(body, expected_id=GOOD, path="/p").vehicle
    assert (vehicle.make, vehicle.model, vehicle.mode, vehicle.powertrain_type) == ("Kia", "EV6", "simulated", "BEV")


@pytest.mark.parametrize("change, field, problem", [
    ({"attributes__vehicle__year": 10000}, "data.attributes.vehicle.year", "is 10000, outside 1886-9999"),
    ({"attributes__vehicle": "flat"}, "data.attributes.vehicle", "is not an object"),
    ({"attributes__vehicle__make": "a\tb"}, "data.attributes.vehicle.make", "has a control character: 'a\\tb'"),
    ({"meta__createdAt": "2024-01-01T00:00:00"}, "data.meta.createdAt", "has no time zone: '2024-01-01T00:00:00'"),
    ({"meta__createdAt": "x" * 64}, "data.meta.createdAt", "is not an ISO-8601 time: '" + "x" * 58 + "…"),
    ({"meta__createdAt": "x" * 65}, "data.meta.createdAt", "is '" + "x" * 58 + "…, expected an ISO-8601 time"),
    ({"meta__updatedAt": 7}, "data.meta.updatedAt", "is 7, expected an ISO-8601 time"),
    ({"meta__createdAt": "0999-12-31T23:59:59Z"}, "data.meta.createdAt",
     "is outside the years 1000-9999 in UTC: '0999-12-31T23:59:59Z'"),
])
def test_a_field_stored_as_null_is_logged_with_the_connection_and_the_field(
    change: dict[str, Any], field: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="etl.api.documents"):
        record_ = parse_connection(_document(**change), expected_id=GOOD, path="/p")
    (entry,) = caplog.records
    assert entry.getMessage() == f"connection {GOOD}: {field} {problem}; stored as NULL"
    assert (entry.connection_id, entry.field) == (GOOD, field)  # type: ignore[attr-defined]
    assert record_.nulled == (field,)


# -- retry policy ---------------------------------------------------------------------------------


def test_retries_and_giving_up_are_logged_exactly(caplog: pytest.LogCaptureFixture) -> None:
    elapsed = [0.0]
    policy = RetryPolicy(max_attempts=4, initial_backoff=2.0, jitter=lambda: 1.0, deadline=5.0,
                         sleep=lambda s: elapsed.__setitem__(0, elapsed[0] + s), clock=lambda: elapsed[0])

    def attempt() -> str:
        raise RetriableApiError(path="/p", status=503, kind="server")

    with caplog.at_level(logging.INFO, logger="etl.api.retry"), pytest.raises(RetriableApiError):
        policy.call(attempt)
    assert [r.getMessage() for r in caplog.records] == [
        "server HTTP 503 on /p; retrying in 2.0s (attempt 2 of 4)",
        "server HTTP 503 on /p; giving up: a retry in 4.0s would pass the retry deadline of 5s",
    ]


def test_a_shared_start_makes_calls_share_one_deadline() -> None:
    now = [100.0]
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=5, initial_backoff=1.0, jitter=lambda: 1.0, deadline=10.0,
                         sleep=sleeps.append, clock=lambda: now[0])

    def attempt() -> str:
        raise RetriableApiError(path="/p", status=503)

    with pytest.raises(RetriableApiError):
        policy.call(attempt, started=91.5)  # 8.5 s of the deadline are gone: a 1 s wait would still fit
    assert sleeps == [1.0]  # the next wait (2 s) would end after the deadline


# -- redaction --------------------------------------------------------------------------------------


def test_a_secret_with_a_space_and_a_slash_is_redacted_in_every_encoding() -> None:
    secret = "a b/c"  # quote_plus: a+b%2Fc; quote(safe=""): a%20b%2Fc
    assert redact("x a+b%2Fc y a%20b%2Fc z a b/c", [secret]) == "x [redacted] y [redacted] z [redacted]"


# -- the batch store ----------------------------------------------------------------------------------


def test_error_texts_of_exactly_the_limit_are_kept_whole() -> None:
    error = MalformedDocumentError(path="/p", status=200, detail="x")
    padding = MAX_ERROR_TEXT - len(str(error))
    exact = MalformedDocumentError(path="/p", status=200, detail="x" * (1 + padding))
    assert len(str(exact)) == MAX_ERROR_TEXT and error_text(exact) == str(exact)


def test_changes_record_the_source_time_and_runs_count_everything(engine: Engine) -> None:
    store = Store(engine)
    gone, changed = str(uuid.uuid4()), str(uuid.uuid4())
    store.track([gone, changed], at=T0)
    run_id, started = store.start_run(trigger="sync", planned=2, at=T0)
    writer = store.batch_writer(run_id, pass_started_at=started)
    updated = T0 - dt.timedelta(days=1)
    first = [Fetched(c, T0 + dt.timedelta(seconds=1), record(c, updated=updated)) for c in (gone, changed)]
    writer.write(first)
    later = replace(first[1].record, permissions=frozenset())  # the connection's one permission is revoked
    writer.write([Gone(gone, T0 + dt.timedelta(seconds=2)), Fetched(changed, T0 + dt.timedelta(seconds=2), later)])
    with engine.connect() as conn:
        run = conn.execute(select(sync_runs)).one()
        sources = set(conn.scalars(select(permission_changes.c.source_updated_at)
                                   .where(permission_changes.c.change == "granted")))
    assert (run.connections_fetched, run.connections_changed, run.connections_deleted) == (3, 4, 1)
    assert (run.permissions_granted, run.permissions_revoked) == (2, 2)
    assert sources == {updated}
    with engine.connect() as conn:
        assert set(conn.scalars(select(permission_changes.c.run_id))) == {run_id}


def test_a_writer_uses_its_cadence_and_the_pass_start(engine: Engine) -> None:
    store = Store(engine)
    cid = str(uuid.uuid4())
    store.track([cid], at=T0)
    run_id, _ = store.start_run(trigger="sync", planned=1, at=T0)
    cadence = Cadence(interval=dt.timedelta(hours=1))
    started = T0 - dt.timedelta(minutes=5)
    store.batch_writer(run_id, cadence=cadence, pass_started_at=started).write(
        [Fetched(cid, T0 + dt.timedelta(seconds=1), record(cid))])
    with engine.connect() as conn:
        due = conn.scalar(select(connections.c.next_due_at).where(connections.c.id == cid))
    assert due == started + dt.timedelta(minutes=54)


def _refuse_make(engine: Engine, make: str) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text(f"CREATE TRIGGER refuse BEFORE INSERT ON vehicles WHEN NEW.make = '{make}' "
                              "BEGIN SELECT RAISE(ABORT, 'poison refused'); END"))
        else:
            conn.execute(text(f"ALTER TABLE vehicles ADD CONSTRAINT refuse_poison CHECK (make <> '{make}')"))


def _backfill_writer(store: Store, ids: list[str], *, next_page: int) -> tuple[int, BatchWriter, list[int]]:
    """A backfill run over ``ids`` and its batch writer, whose checkpoint gives ``next_page`` and counts its calls."""
    from etl.backfill import Source

    store.track(ids, at=T0)
    backfill = store.open_backfill(Source(name="f", ids=ids), resume=False, at=T0)
    run_id, started = store.start_run(trigger="backfill", planned=len(ids), at=T0)
    calls: list[int] = []

    def checkpoint() -> tuple[int, int | None]:
        calls.append(1)
        return backfill.id, next_page

    return run_id, store.batch_writer(run_id, pass_started_at=started, checkpoint=checkpoint), calls


def test_a_refused_batch_is_stored_one_by_one_with_one_checkpoint(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    _refuse_make(engine, "Poison")
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    run_id, writer, checkpoints = _backfill_writer(Store(engine), [good, bad], next_page=7)
    at = T0 + dt.timedelta(seconds=1)
    with caplog.at_level(logging.WARNING, logger="etl.db.store"):
        counts = writer.write([Fetched(good, at, record(good)), Fetched(bad, at, record(bad, make="Poison"))])
    assert (counts.fetched, counts.failed) == (1, 1) and checkpoints == [1]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith(f"run {run_id}: the database refused a batch of 2 (")
    assert messages[0].endswith("); storing them one by one") and "poison" in messages[0].lower()
    assert messages[1].startswith(f"connection {bad}: rejected on /connections/{bad}: the database refused it: ")
    assert "poison" in messages[1].lower()
    assert (caplog.records[1].run_id, caplog.records[1].connection_id) == (run_id, bad)  # type: ignore[attr-defined]
    with engine.connect() as conn:
        row = conn.execute(select(backfills.c.next_page, backfills.c.last_run_id)).one()
        error = conn.execute(select(fetch_errors.c.kind, fetch_errors.c.detail)).one()
    assert tuple(row) == (7, run_id)
    assert error.kind == "rejected" and f"on /connections/{bad}" in error.detail and "poison" in error.detail.lower()


def test_a_normal_batch_records_its_checkpoint_once(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    cid = str(uuid.uuid4())
    run_id, writer, calls = _backfill_writer(Store(engine), [cid], next_page=3)
    with caplog.at_level(logging.WARNING):
        writer.write([Fetched(cid, T0 + dt.timedelta(seconds=1), record(cid))])
    with engine.connect() as conn:
        assert tuple(conn.execute(select(backfills.c.next_page, backfills.c.last_run_id)).one()) == (3, run_id)
    assert calls == [1] and caplog.records == []  # stored as one batch: nothing was refused


def test_a_connection_first_seen_in_a_listing_is_stored_tracked_with_its_vehicle(engine: Engine) -> None:
    store = Store(engine)
    run_id, started = store.start_run(trigger="sync", planned=2, at=T0)
    first, second, vehicle = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    t1, t2 = T0 + dt.timedelta(seconds=1), T0 + dt.timedelta(seconds=2)
    attributes = {"make": "Kia", "model": "EV6", "mode": "live", "powertrain_type": "BEV"}
    store.batch_writer(run_id, pass_started_at=started).write([  # never tracked before: as from a listing
        Fetched(second, t2, record(second, vehicle_id=vehicle, **attributes)),
        Fetched(first, t1, record(first, vehicle_id=vehicle, **attributes)),
    ])
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(connections))}
        car = conn.execute(select(vehicles)).one()
    assert rows[first].tracked is True and rows[first].tracked_at == t1 and rows[second].tracked is True
    # one vehicle seen twice in a batch: the earliest is its first sighting, and on that day its last too
    assert (car.first_seen_at, car.last_seen_at) == (t1, t1)
    assert (car.make, car.model, car.mode, car.powertrain_type) == ("Kia", "EV6", "live", "BEV")


def test_a_clock_that_steps_back_is_logged_with_the_times(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(engine)
    cid = str(uuid.uuid4())
    store.track([cid], at=T0)
    run_id, started = store.start_run(trigger="sync", planned=1, at=T0)
    writer = store.batch_writer(run_id, pass_started_at=started)
    later, earlier = T0 + dt.timedelta(seconds=9), T0 + dt.timedelta(seconds=5)
    vehicle = str(uuid.uuid4())
    writer.write([Fetched(cid, later, record(cid, vehicle_id=vehicle))])
    with caplog.at_level(logging.WARNING, logger="etl.db.batch"):
        writer.write([Fetched(cid, earlier, record(cid, vehicle_id=vehicle))])
    (entry,) = caplog.records
    assert entry.getMessage() == (f"clock is behind the previous observation of {cid} ({earlier} <= {later}); "
                                  f"using {later} + 1 µs")
