"""What differs between the databases: the dialect objects (etl.db.dialects) and what each must do."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine


@pytest.mark.parametrize("db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_postgresql_prepares_what_runs_per_row_and_plans_each_batch_for_its_parameters(engine: Engine) -> None:
    """A generic plan made while the tables were small would scan them whole for each batch as they grow;
    forcing custom plans on the session instead would replan every foreign-key check, one per row."""
    import datetime as dt

    from sqlalchemy import bindparam, select, update

    from etl.db.dialects import dialect_for
    from etl.db.models import vehicles

    at = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    ids = [f"v{n:05d}" for n in range(500)]
    with engine.begin() as conn:  # a small table, never analysed: as in a first backfill
        conn.execute(vehicles.insert(), [{"id": i, "first_seen_at": at, "last_seen_at": at} for i in ids])
    for _ in range(2):  # the connection the test made, and a new one after dispose: set up the same way
        with engine.connect() as conn:
            conn.rollback()  # what the pool does at check-in
            among = dialect_for(conn).among
            for n in range(16):  # past psycopg's default threshold (prepared at the fifth)
                conn.execute(select(vehicles.c.id).where(among(vehicles.c.id, ids[n * 30:n * 30 + 100]))).all()
            conn.execute(update(vehicles).where(vehicles.c.id == bindparam("b_id")).values(model="M"),
                         [{"b_id": i} for i in ids[:3]])
            prepared = conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()
            assert not [s for s in prepared if s.startswith("SELECT vehicles.id")], prepared  # planned each time
            assert [s for s in prepared if s.startswith("UPDATE vehicles")], prepared  # parsed once for its rows
            source = conn.exec_driver_sql("SELECT source FROM pg_settings WHERE name = 'plan_cache_mode'").scalar()
            assert source != "session", source  # not set by the job: foreign-key checks keep their cached plans
        engine.dispose()
