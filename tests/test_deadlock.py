"""A batch that the database rolled back to break a deadlock is run again, never lost (on every database)."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import pymysql
import pytest
from sqlalchemy import Engine, event, text

from etl.db.dialects import dialect_for
from etl.db.store import Store
from etl.errors import one_line
from etl.tracking import track


def deadlock(backend: str) -> Exception:
    """The driver's own error for a transaction the database gave up (a deadlock; SQLite: a busy file)."""
    if backend == "postgresql":
        import psycopg.errors

        return psycopg.errors.DeadlockDetected("deadlock detected")
    if backend == "sqlite":
        busy = sqlite3.OperationalError("database is locked")
        busy.sqlite_errorcode, busy.sqlite_errorname = 5, "SQLITE_BUSY"  # as the module sets them
        return busy
    return pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock; try restarting transaction")


@pytest.mark.parametrize("deadlocks", [1, 2, 3])
def test_a_batch_rolled_back_by_a_deadlock_is_run_again_and_stored_once(
        run_sync: Any, engine: Engine, deadlocks: int, caplog: pytest.LogCaptureFixture) -> None:
    """Up to 3 attempts in all; a batch that loses every one is stored connection by connection.

    SQLite has no deadlocks: there the error is a file still busy after the busy timeout.
    """
    ids = run_sync.fake.populate(3, seed=4)
    track(Store(engine), ids)
    victims: list[str] = []
    backend = dialect_for(engine).name

    @event.listens_for(engine, "before_cursor_execute")
    def deadlock_at_the_counters(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("UPDATE sync_runs SET connections_fetched") and len(victims) < deadlocks:
            victims.append(statement)  # raised where the driver raises it: SQLAlchemy wraps it as for the server's
            raise deadlock(backend)

    with caplog.at_level(logging.WARNING, logger="etl.db.store"):
        result = run_sync(ignore_due=True)
    assert len(victims) == deadlocks and result.counts.fetched == 3 and result.counts.failed == 0
    retried = [r.getMessage() for r in caplog.records if "the database rolled back a batch" in r.getMessage()]
    assert [m.split("(attempt ")[1] for m in retried] == [f"{n})" for n in range(2, min(deadlocks, 2) + 2)]
    assert retried[0] == (f"run {result.run_id}: the database rolled back a batch of 3 "
                          f"({one_line(deadlock(backend))}); running it again (attempt 2)")
    assert ("storing them one by one" in caplog.text) == (deadlocks == 3)
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT COUNT(*) FROM permission_changes")) == conn.scalar(
            text("SELECT COUNT(*) FROM permission_grants")) > 0




def test_a_deadlock_where_nothing_runs_it_again_is_a_database_error_not_an_internal_one(
        run_sync: Any, engine: Engine) -> None:
    from etl.errors import DatabaseError

    ids = run_sync.fake.populate(1, seed=5)
    track(Store(engine), ids)
    backend = dialect_for(engine).name

    @event.listens_for(engine, "before_cursor_execute")
    def deadlock_at_the_run_row(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO sync_runs"):
            raise deadlock(backend)

    with pytest.raises(DatabaseError) as caught:
        run_sync(ignore_due=True)
    assert caught.value.exit_code == 3 and ("deadlock" in str(caught.value).lower() or "locked" in str(caught.value))
