"""An unchanged pass writes no user, vehicle, grant, change or archive row (counted by triggers, on all three
databases).

Users' and vehicles' ``last_seen_at`` is kept to the day: a row is written when
something in it changed, or when it was last seen more than a day before.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from sqlalchemy import Engine, text

from etl.db.dialects import dialect_for
from tests.conftest import Runner

COUNTED = ("users", "vehicles", "permission_grants", "permission_changes", "archive_bodies", "archive_spans")


def count_writes(engine: Engine) -> None:
    """Log every insert, update and delete on the counted tables into ``write_log`` (test-only DDL)."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE write_log (tbl VARCHAR(40), op VARCHAR(10))"))
        if engine.dialect.name == "postgresql":
            conn.execute(text("CREATE FUNCTION log_write() RETURNS trigger AS $$ BEGIN "
                              "INSERT INTO write_log VALUES (TG_TABLE_NAME, TG_OP); RETURN NULL; END $$ "
                              "LANGUAGE plpgsql"))
        for table in COUNTED:
            for op in ("INSERT", "UPDATE", "DELETE"):
                if engine.dialect.name == "postgresql":
                    conn.execute(text(f"CREATE TRIGGER log_{table}_{op} AFTER {op} ON {table} "
                                      "FOR EACH ROW EXECUTE FUNCTION log_write()"))
                elif dialect_for(engine).name == "mariadb":
                    conn.execute(text(f"CREATE TRIGGER log_{table}_{op} AFTER {op} ON {table} "
                                      f"FOR EACH ROW INSERT INTO write_log VALUES ('{table}', '{op}')"))
                else:
                    conn.execute(text(f"CREATE TRIGGER log_{table}_{op} AFTER {op} ON {table} "
                                      f"BEGIN INSERT INTO write_log VALUES ('{table}', '{op}'); END"))


def writes(engine: Engine) -> Counter[tuple[str, str]]:
    """The writes logged since the last call (and forget them)."""
    with engine.begin() as conn:
        logged = Counter((tbl, op.upper()) for tbl, op in conn.execute(text("SELECT tbl, op FROM write_log")))
        conn.execute(text("DELETE FROM write_log"))
    return logged


def test_an_unchanged_pass_writes_no_user_vehicle_grant_change_or_archive_row(run_sync: Runner, engine: Engine) -> None:
    ids = run_sync.fake.populate(20, seed=9)
    from etl.db.store import Store
    from etl.tracking import track

    track(Store(engine), ids)
    count_writes(engine)
    first = run_sync(ignore_due=True)
    written = writes(engine)
    assert first.counts.fetched == 20 and written[("users", "INSERT")] > 0
    assert written[("archive_bodies", "INSERT")] == written[("archive_spans", "INSERT")] == 20
    for _ in range(2):  # the same world again, a schedule interval later: nothing worth writing
        assert run_sync(ignore_due=True).counts.fetched == 20
        assert writes(engine) == Counter()
    run_sync.fake.connections[ids[0]].vehicle["make"] = "Renamed"  # one vehicle changes: one row
    run_sync(ignore_due=True)
    assert writes(engine) == Counter({("vehicles", "UPDATE"): 1, ("archive_bodies", "INSERT"): 1,
                                      ("archive_spans", "INSERT"): 1, ("archive_spans", "UPDATE"): 1})  # the end
    run_sync(advance=dt.timedelta(days=1, minutes=1), ignore_due=True)  # last seen a day ago: to the day
    day_later = writes(engine)
    assert day_later[("users", "UPDATE")] > 0 and day_later[("vehicles", "UPDATE")] == 20
    assert not any(table.startswith(("permission", "archive")) for table, _ in day_later)


def test_a_vehicle_is_written_once_a_day_and_keeps_the_day_it_was_last_seen(engine: Engine) -> None:
    import uuid

    from sqlalchemy import select

    from etl.db.models import vehicles
    from etl.db.store import Store
    from etl.outcomes import Fetched
    from tests.conftest import T0
    from tests.test_store_fields import record

    store, cid, vehicle = Store(engine), str(uuid.uuid4()), str(uuid.uuid4())
    store.track([cid], at=T0)
    run_id, started = store.start_run(trigger="sync", planned=1, at=T0)
    writer = store.batch_writer(run_id, pass_started_at=started)

    def seen(at: dt.datetime) -> dt.datetime:
        writer.write([Fetched(cid, at, record(cid, vehicle_id=vehicle, make="Kia"))])
        with engine.connect() as conn:
            return conn.scalar(select(vehicles.c.last_seen_at))  # type: ignore[no-any-return]

    assert seen(T0) == T0  # the first day: the first sighting itself (T0 is 12:00 UTC)
    midnight = (T0 + dt.timedelta(days=1)).replace(hour=0, minute=0)
    assert seen(midnight - dt.timedelta(microseconds=1)) == T0  # later the same day: not written
    assert seen(midnight) == midnight  # a new day: written, as that day
    assert seen(midnight + dt.timedelta(hours=23, minutes=59)) == midnight
    assert seen(midnight + dt.timedelta(days=3, hours=5, seconds=7, microseconds=8)) == midnight + dt.timedelta(days=3)


def test_the_day_a_vehicle_was_last_seen_is_the_utc_day_whatever_the_machines_zone(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from etl.db.batch import seen_day
    from tests.conftest import T0

    monkeypatch.setenv("TZ", "Asia/Tokyo")  # 02:00 UTC is 11:00 there, 23:00 UTC the next day's 08:00
    time.tzset()
    try:
        late = T0.replace(hour=23)
        assert seen_day(T0 - dt.timedelta(days=2), late) == late.replace(hour=0)
        assert seen_day(T0 - dt.timedelta(days=2), T0.replace(hour=2)) == T0.replace(hour=0)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
