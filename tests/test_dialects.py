"""What differs between the databases: the dialect objects (etl.db.dialects) and what each must do."""

from __future__ import annotations

import ast
import datetime as dt
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import Engine, bindparam, exc, inspect, update
from sqlalchemy.engine import make_url

from etl.db.dialects import MariaDB, PostgreSQL, SQLite, dialect_for, for_url
from etl.db.models import vehicles
from etl.db.store import Store


@pytest.mark.parametrize("db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_postgresql_prepares_what_runs_per_row_and_plans_each_batch_for_its_parameters(engine: Engine) -> None:
    """A generic plan made while the tables were small would scan them whole for each batch as they grow;
    forcing custom plans on the session instead would replan every foreign-key check, one per row."""
    from sqlalchemy import select


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


# -- one object per database, chosen once -------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "etl"
DIALECTS = PACKAGE / "db" / "dialects"  # the only place that may compare database names
NAMES = {"sqlite", "postgresql", "postgres", "mysql", "mariadb"}
NAME_SOURCES = {"get_backend_name", "get_driver_name", "drivername"}  # what a URL calls its database or driver


def _is_name_source(node: ast.AST) -> bool:
    """``<...dialect...>.name``, ``url.drivername`` or ``url.get_backend_name()``: a database's name."""
    if isinstance(node, ast.Call):
        node = node.func
    if not isinstance(node, ast.Attribute):
        return False
    return node.attr in NAME_SOURCES or (node.attr == "name" and "dialect" in ast.unparse(node.value).lower())


def name_comparisons(source: str, where: str) -> list[str]:
    """Places in ``source`` that tell databases apart by name: a literal database name anywhere but as an
    argument of ``with_variant`` (a column type's variant), a comparison with a dialect's or URL's name,
    and SQLAlchemy's own name filter (``execute_if``/``ddl_if`` with ``dialect=``)."""
    tree = ast.parse(source)
    variant_args = {id(a) for node in ast.walk(tree) if isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute) and node.func.attr == "with_variant"
                    for arg in node.args for a in ast.walk(arg)}
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in NAMES
                and id(node) not in variant_args):
            found.append(f"{where}:{node.lineno} names {node.value!r}")
        elif isinstance(node, ast.Compare) and any(_is_name_source(n) for n in [node.left, *node.comparators]):
            found.append(f"{where}:{node.lineno} compares {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("execute_if", "ddl_if") and any(k.arg == "dialect" for k in node.keywords)):
            found.append(f"{where}:{node.lineno} filters by dialect name: {ast.unparse(node.func)}")
    return found


def test_only_the_dialect_objects_compare_database_names() -> None:
    outside = [p for p in sorted(PACKAGE.rglob("*.py")) if DIALECTS not in p.parents]
    found = [hit for p in outside for hit in name_comparisons(p.read_text(), str(p.relative_to(ROOT)))]
    found += name_comparisons((ROOT / "migrations" / "env.py").read_text(), "migrations/env.py")
    assert found == []


def test_the_name_check_finds_what_it_looks_for() -> None:
    sample = (
        'BigId = BigInteger().with_variant(Integer(), "sqlite")\n'  # allowed: a column type's variant
        'Body = LargeBinary().with_variant(LONGBLOB(), *MARIADB)\n'  # allowed
        'if conn.dialect.name == "postgresql": pass\n'
        'if engine.dialect.name in MARIADB: pass\n'
        'if url.get_backend_name() != BACKEND: pass\n'
        'ok = url.drivername.startswith("mysql")\n'
        'BACKENDS = ("sqlite", "MariaDB")\n'
        'index.ddl_if(dialect=PARTIAL)\n'
        'if dialect_for(conn).supports_partial_index: pass\n'  # allowed: a capability
    )
    assert sorted(name_comparisons(sample, "bad.py")) == sorted([
        "bad.py:3 compares conn.dialect.name == 'postgresql'",
        "bad.py:3 names 'postgresql'",
        "bad.py:4 compares engine.dialect.name in MARIADB",
        "bad.py:5 compares url.get_backend_name() != BACKEND",
        "bad.py:6 names 'mysql'",
        "bad.py:7 names 'sqlite'",
        "bad.py:7 names 'MariaDB'",
        "bad.py:8 filters by dialect name: index.ddl_if",
    ])


EXPECTED = {"sqlite": SQLite, "postgresql": PostgreSQL, "mariadb": MariaDB, "mysql": MariaDB}


def test_each_database_object_is_chosen_for_its_engine(engine: Engine) -> None:
    expected = EXPECTED[engine.url.get_backend_name()]
    chosen = dialect_for(engine)
    assert type(chosen) is expected
    with engine.connect() as conn:
        assert dialect_for(conn) is chosen
    assert dialect_for(engine.dialect) is chosen and for_url(engine.url) is chosen
    assert Store(engine).dialect is chosen


def test_a_url_of_another_database_is_refused_naming_what_is_supported() -> None:
    with pytest.raises(ValueError, match=r"unsupported database 'oracle' \(supported: sqlite:///PATH"):
        for_url(make_url("oracle://u@h/x"))
    with pytest.raises(NotImplementedError, match="'oracle'"):
        dialect_for(SimpleNamespace(dialect=SimpleNamespace(name="oracle")))


def _refused(engine: Engine, *statements: str) -> bool:
    """True if the database refuses one of the statements (each in its own transaction)."""
    try:
        for statement in statements:
            with engine.begin() as conn:
                conn.exec_driver_sql(statement)
    except exc.DBAPIError:
        return True
    return False


def test_each_capability_is_what_the_database_does(empty_engine: Engine) -> None:
    """Each named capability, probed on the database itself (an empty one of the test's own)."""
    db = dialect_for(empty_engine)
    assert not _refused(empty_engine, "CREATE TABLE probe (a INTEGER, b INTEGER)")
    partial = not _refused(empty_engine, "CREATE UNIQUE INDEX probe_open ON probe (a) WHERE b IS NULL")
    assert partial is db.supports_partial_index
    if partial:  # and it is partial: one row per ``a`` where b is NULL, any number elsewhere
        assert not _refused(empty_engine, "INSERT INTO probe VALUES (1, 1)", "INSERT INTO probe VALUES (1, 1)",
                            "INSERT INTO probe VALUES (1, NULL)")
        assert _refused(empty_engine, "INSERT INTO probe VALUES (1, NULL)")
    assert _refused(empty_engine, "ALTER TABLE probe ADD CONSTRAINT probe_a CHECK (a > 0)") is db.alters_by_copy
    with empty_engine.connect() as conn:
        with conn.begin() as transaction:
            conn.exec_driver_sql("CREATE TABLE probe_ddl (a INTEGER)")
            transaction.rollback()
        assert (not inspect(conn).has_table("probe_ddl")) is db.transactional_ddl
        now = db.server_now(conn)
        assert (now is not None) is db.has_server_clock
        assert now is None or now.tzinfo == dt.UTC and abs((now - dt.datetime.now(dt.UTC)).total_seconds()) < 600
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        assert hasattr(cursor, "copy") is db.has_copy  # COPY FROM STDIN, through the driver
        cursor.close()
    assert (db.file_of(empty_engine.url) is None) is db.is_server
    if db.is_server:  # a scratch database's statements are the server's own
        create, drop = db.database_ddl(f"etl_test_{uuid.uuid4().hex[:16]}")
        assert not _refused(empty_engine.execution_options(isolation_level="AUTOCOMMIT"), create, drop)


@pytest.mark.parametrize("db_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres),
                                    pytest.param("mariadb", marks=pytest.mark.mariadb)], indirect=True)
def test_statements_run_once_per_row_are_prepared_where_the_database_says_so(engine: Engine) -> None:
    at = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    with engine.connect() as conn:
        conn.execute(vehicles.insert(), [{"id": f"v{n}", "first_seen_at": at, "last_seen_at": at} for n in range(3)])
        conn.execute(update(vehicles).where(vehicles.c.id == bindparam("b_id")).values(model="M"),
                     [{"b_id": f"v{n}"} for n in range(3)])  # one statement, once per row
        if dialect_for(conn).prepares_executemany:
            prepared = conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()
            assert [s for s in prepared if s.startswith("UPDATE vehicles")], prepared
        else:  # no server-side statements to prepare: the driver has no such setting
            assert not hasattr(conn.connection.driver_connection, "prepare_threshold")
        conn.rollback()
