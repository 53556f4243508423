"""Every field the store writes is asserted, and every status `classify` sorts.

These close the gaps a mutation run found (mutants that survived because no
test read the field or checked the error's kind).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, select

from etl.api.answers import classify
from etl.api.documents import ConnectionRecord, VehicleAttributes
from etl.cadence import Cadence
from etl.db.batch import MAX_ERROR_TEXT, error_text, store_batch
from etl.db.models import connections, users, vehicles
from etl.db.store import Store
from etl.errors import ApiError, FatalApiError, MalformedDocumentError, RetriableApiError
from etl.outcomes import Failed, Fetched, Gone
from etl.tracking import track
from tests.conftest import T0

USER = "1e258add-fb21-4293-b9ab-cf8a61f7a880"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def new_id() -> str:
    return str(uuid.uuid4())


def record(cid: str, *, vehicle_id: str | None = None, created: dt.datetime | None = None,
           updated: dt.datetime | None = None, **vehicle: Any) -> ConnectionRecord:
    return ConnectionRecord(connection_id=cid, user_id=USER, vehicle_id=vehicle_id or new_id(),
                            permissions=frozenset(["read_vin"]), vehicle=VehicleAttributes(**vehicle),
                            source_created_at=created, source_updated_at=updated)


def store(engine: Engine, *outcomes: Any, started: dt.datetime | None = None) -> Any:
    with engine.begin() as conn:
        return store_batch(conn=conn, run_id=None, outcomes=list(outcomes), cadence=Cadence(),
                           pass_started_at=started)


def row(engine: Engine, cid: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(connections).where(connections.c.id == cid)).one()


@pytest.mark.parametrize("status", [400, 405, 409, 410, 422, 451])
def test_other_4xx_statuses_raise_a_plain_api_error_with_status_and_kind(status: int) -> None:
    with pytest.raises(ApiError) as caught:
        classify(httpx.Response(status, json={"errors": [{"code": "x", "detail": "no"}]}), path="/p")
    error = caught.value
    assert type(error) is ApiError
    assert (error.status, error.kind, error.code, error.detail) == (status, "http", "x", "no")


@pytest.mark.parametrize("status, kind, cls", [
    (401, "auth", FatalApiError), (403, "forbidden", FatalApiError), (430, "billing", FatalApiError),
    (429, "rate_limited", RetriableApiError), (500, "server", RetriableApiError), (503, "server", RetriableApiError),
])
def test_statuses_that_stop_or_retry_are_sorted_with_their_kind(status: int, kind: str, cls: type) -> None:
    with pytest.raises(cls) as caught:
        classify(httpx.Response(status), path="/p")
    assert (caught.value.status, caught.value.kind) == (status, kind)


@pytest.mark.parametrize("response", [
    httpx.Response(200), httpx.Response(404, json={"errors": [{"status": "404", "code": "not_found"}]})])
def test_200_and_smartcars_404_are_answers(response: httpx.Response) -> None:
    assert classify(response, path="/p") is None


def test_connection_source_and_seen_fields_are_written(engine: Engine) -> None:
    cid = new_id()
    track(Store(engine), [cid], now=lambda: T0)
    created, updated = at(-86400), at(-3600)
    store(engine, Fetched(cid, at(1), record(cid, created=created, updated=updated, model="Model 3")), started=at(0))
    first = row(engine, cid)
    assert (first.source_created_at, first.source_updated_at) == (created, updated)
    assert (first.first_seen_at, first.last_seen_at, first.last_success_at, first.last_attempt_at) == (
        at(1), at(1), at(1), at(1))
    assert first.next_due_at == at(0) + dt.timedelta(minutes=15) * 0.9
    store(engine, Fetched(cid, at(2), record(cid, vehicle_id=first.vehicle_id, created=created, updated=at(2))))
    second = row(engine, cid)
    assert (second.first_seen_at, second.last_seen_at, second.last_attempt_at, second.source_updated_at) == (
        at(1), at(2), at(2), at(2))
    with engine.connect() as conn:
        assert conn.scalar(select(vehicles.c.model).where(vehicles.c.id == first.vehicle_id)) is None
    store(engine, Fetched(cid, at(3), record(cid, vehicle_id=first.vehicle_id, model="Model Y")))
    with engine.connect() as conn:
        assert conn.scalar(select(vehicles.c.model).where(vehicles.c.id == first.vehicle_id)) == "Model Y"


def test_a_404_after_failures_clears_the_error_and_the_failure_count(engine: Engine) -> None:
    cid = new_id()
    track(Store(engine), [cid], now=lambda: T0)
    store(engine, Fetched(cid, at(1), record(cid)))
    error = RetriableApiError(path="/p", status=503, kind="server")
    store(engine, Failed(cid, at(2), error))
    store(engine, Failed(cid, at(3), error))
    failing = row(engine, cid)
    assert (failing.consecutive_failures, failing.next_due_at) == (2, at(3) + dt.timedelta(minutes=10))
    store(engine, Gone(cid, at(4)))
    gone = row(engine, cid)
    assert (gone.status, gone.last_error, gone.consecutive_failures) == ("deleted", None, 0)
    assert (gone.last_success_at, gone.last_attempt_at) == (at(4), at(4))
    assert gone.next_due_at == at(4) + dt.timedelta(days=1)


def test_long_error_texts_are_clipped_when_stored(engine: Engine) -> None:
    cid = new_id()
    track(Store(engine), [cid], now=lambda: T0)
    error = MalformedDocumentError(path="/p", status=200, detail="x" * 2000)
    assert len(error_text(error)) == MAX_ERROR_TEXT and error_text(error).endswith("…")
    short = MalformedDocumentError(path="/p", status=200, detail="short")
    assert error_text(short) == str(short)
    store(engine, Failed(cid, at(1), error))
    assert row(engine, cid).last_error == error_text(error)


def test_an_observation_at_exactly_the_previous_success_is_moved_after_it(engine: Engine) -> None:
    cid = new_id()
    track(Store(engine), [cid], now=lambda: T0)
    store(engine, Fetched(cid, at(5), record(cid)))
    vehicle_id = row(engine, cid).vehicle_id
    store(engine, Fetched(cid, at(5), record(cid, vehicle_id=vehicle_id)))  # the same instant: the clock stood still
    assert row(engine, cid).last_success_at == at(5) + dt.timedelta(microseconds=1)
    store(engine, Fetched(cid, at(9), record(cid, vehicle_id=vehicle_id)))  # later: kept as it is
    assert row(engine, cid).last_success_at == at(9)


def test_a_malformed_listing_item_first_seen_is_pending_with_its_failure_counted(engine: Engine) -> None:
    cid = new_id()  # never tracked: the listing showed it, already malformed
    error = MalformedDocumentError(path="/connections", status=200, detail="bad")
    store(engine, Failed(cid, at(1), error))
    first = row(engine, cid)
    assert (first.status, first.tracked, first.consecutive_failures) == ("pending", True, 1)
    assert first.next_due_at == at(1) + dt.timedelta(minutes=5) and first.last_error == error_text(error)


def test_one_user_two_vehicles_in_one_batch_each_vehicle_has_its_own_first_seen(engine: Engine) -> None:
    first_id, second_id = new_id(), new_id()
    track(Store(engine), [first_id, second_id], now=lambda: T0)
    v1, v2 = new_id(), new_id()
    store(engine, Fetched(first_id, at(1), record(first_id, vehicle_id=v1)),
          Fetched(second_id, at(2), record(second_id, vehicle_id=v2)))
    with engine.connect() as conn:
        seen = dict(conn.execute(select(vehicles.c.id, vehicles.c.first_seen_at)).all())
        user = conn.execute(select(users)).one()
    assert seen == {v1: at(1), v2: at(2)}
    assert (user.first_seen_at, user.last_seen_at) == (at(1), at(1))  # kept to the day (batch.seen_day)


def full_row(engine: Engine, cid: str) -> dict[str, Any]:
    return dict(row(engine, cid)._mapping)


@contextlib.contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL the engine sends inside the block."""
    sent: list[str] = []

    def record_sql(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        sent.append(sql.upper())

    event.listen(engine, "before_cursor_execute", record_sql)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record_sql)


@pytest.mark.parametrize("started", [True, False], ids=["in a pass", "on its own"])
@pytest.mark.parametrize("shared_time", [True, False], ids=["a listing page", "one time each"])
def test_a_connection_seen_again_as_stored_has_exactly_its_times_refreshed(
        engine: Engine, shared_time: bool, started: bool) -> None:
    """Both ways of refreshing: one UPDATE per shared time (a page), or one executemany (ids); no upsert."""
    cids = [new_id() for _ in range(8)]
    records = {c: record(c, make="Kia", created=at(-100), updated=at(-50)) for c in cids}
    track(Store(engine), cids)
    store(engine, *(Fetched(c, at(1), records[c]) for c in cids), started=at(0))
    before = {c: full_row(engine, c) for c in cids}
    later = [at(3600) if shared_time else at(3600 + i) for i in range(len(cids))]
    with statements(engine) as sent:
        store(engine, *(Fetched(c, t, records[c]) for c, t in zip(cids, later, strict=True)),
              started=at(3599) if started else None)
    assert not [sql for sql in sent if sql.startswith("INSERT INTO CONNECTIONS")]
    assert len([sql for sql in sent if sql.startswith("UPDATE CONNECTIONS")]) == 1
    for c, t in zip(cids, later, strict=True):
        after = full_row(engine, c)
        assert after["last_seen_at"] == after["last_success_at"] == after["last_attempt_at"] == t
        assert after["next_due_at"] == Cadence().after_success(at(3599) if started else t)
        unchanged = {k: v for k, v in after.items()
                     if k not in ("last_seen_at", "last_success_at", "last_attempt_at", "next_due_at")}
        assert unchanged == {k: v for k, v in before[c].items() if k in unchanged}
        assert after["first_seen_at"] == at(1)


@pytest.mark.parametrize("change", ["user", "vehicle", "updated", "created", "failing", "deleted"])
def test_a_connection_not_as_stored_is_written_whole(engine: Engine, change: str) -> None:
    """What the refresh would leave wrong goes through the upsert: ids, source times, failures, status."""
    cid = new_id()
    first = record(cid, make="Kia", created=at(-100), updated=at(-50))
    track(Store(engine), [cid])
    store(engine, Fetched(cid, at(1), first), started=at(0))
    again = first
    if change == "user":
        again = ConnectionRecord(**{**first.__dict__, "user_id": new_id()})
    elif change == "vehicle":
        again = ConnectionRecord(**{**first.__dict__, "vehicle_id": new_id()})
    elif change == "updated":
        again = record(cid, vehicle_id=first.vehicle_id, make="Kia", created=at(-100), updated=at(-10))
    elif change == "created":
        again = record(cid, vehicle_id=first.vehicle_id, make="Kia", created=at(-90), updated=at(-50))
    elif change == "failing":
        store(engine, Failed(cid, at(2), RetriableApiError(path="/c", status=503, kind="http")), started=at(0))
    else:
        store(engine, Gone(cid, at(2)), started=at(0))
    store(engine, Fetched(cid, at(3600), again), started=at(3599))
    after = full_row(engine, cid)
    assert (after["user_id"], after["vehicle_id"]) == (again.user_id, again.vehicle_id)
    assert (after["source_created_at"], after["source_updated_at"]) == (
        again.source_created_at, again.source_updated_at)
    assert (after["status"], after["consecutive_failures"], after["last_error"]) == ("active", 0, None)
    assert after["last_seen_at"] == after["last_success_at"] == at(3600)
