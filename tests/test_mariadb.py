"""What MariaDB needs that the other two do not: each trap of the issue, tried on the real server.

The rest of the suite runs on MariaDB as on SQLite and PostgreSQL (the ``db_url`` fixture);
these tests are about the differences: URLs, the server check, the session, the schema's
stand-ins (microseconds, exact comparison, the open-grant key, the reserved word), the run
lock's name, how driver errors sort, and migrations that fail part-way (the retry of a batch after
a deadlock is in test_deadlock.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import Engine, event, exc, inspect, select, text
from sqlalchemy.engine import make_url

from etl.cli import cli
from etl.db import dialects
from etl.db.dialects.mariadb import lock_name
from etl.db.engine import alembic_config, current_revision, head_revision, make_engine, upgrade
from etl.db.models import permission_grants
from etl.db.scratch import scratch_database
from etl.db.store import Store
from etl.errors import LockHeld
from etl.tracking import track
from tests.conftest import T0, admin_url

mariadb_only = pytest.mark.parametrize("db_url", [pytest.param("mariadb", marks=pytest.mark.mariadb)], indirect=True)
CID = "32c4139a-e4aa-4c6c-b357-3ae9022dbf1b"


# -- URLs and servers (no server needed) -------------------------------------------------------------

@pytest.mark.parametrize(("given", "driver"), [
    ("mysql://etl@db/etl", "mysql+pymysql"),
    ("mariadb://etl@db/etl", "mariadb+pymysql"),
    ("mysql+pymysql://etl@db/etl", "mysql+pymysql"),
    ("mariadb+pymysql://etl:pw@db:3307/etl?charset=utf8mb4", "mariadb+pymysql"),
])
def test_mysql_and_mariadb_urls_are_read_with_pymysql(given: str, driver: str) -> None:
    url = make_url(dialects.normalise_url(given))
    assert url.drivername == driver
    assert (url.host, url.database) == ("db", "etl")


def test_another_mysql_driver_is_refused_naming_what_is_supported() -> None:
    with pytest.raises(ValueError, match=r"unsupported driver 'mysqldb' for mysql \(supported: .*MariaDB 10\.5\+"):
        dialects.normalise_url("mysql+mysqldb://etl@db/etl")


@pytest.mark.parametrize(("info", "refused"), [
    ("8.0.36", "MySQL 8.0.36 is not supported: it has no INSERT .. RETURNING"),
    ("5.5.5-10.4.33-MariaDB-1:10.4.33+maria~ubu2004", "MariaDB 10.4.33 is too old: MariaDB 10.5 or newer"),
    ("5.5.5-10.5.0-MariaDB", None),
    ("5.5.5-10.11.19-MariaDB-0+deb12u1", None),
    ("11.4.2-MariaDB", None),
])
def test_the_server_check_accepts_mariadb_10_5_and_newer_only(info: str, refused: str | None) -> None:
    mariadb, version = dialects.MariaDB.server_version(info)
    reason = dialects.MariaDB.refuse_server(mariadb=mariadb, version=version)
    assert reason == refused if refused is None else reason is not None and reason.startswith(refused)
    # Only the MariaDB object checks the server it reaches (a PostgreSQL 8.0 is not taken for MySQL).
    assert [type(d).__name__ for d in dialects.DATABASES if hasattr(d, "refuse_server")] == ["MariaDB"]


def test_the_run_lock_name_holds_the_database_and_fits_the_server_limit() -> None:
    assert lock_name("etl") == "smartcar-etl:etl"
    long = lock_name("x" * 64)
    assert len(long) <= 64 and long != lock_name("y" * 64)


# -- the server check, end to end ---------------------------------------------------------------------

@contextlib.contextmanager
def announcing(version: bytes) -> Iterator[int]:
    """A TCP proxy to the MariaDB test server that rewrites the version its greeting announces.

    Everything else passes through untouched, so the client talks to the real server that claims
    to be another one (no MySQL server is available here).
    """
    target = make_url(admin_url("mariadb"))
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    opened: list[socket.socket] = []
    pipes: list[threading.Thread] = []

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            server = socket.create_connection((target.host or "127.0.0.1", target.port or 3306), timeout=10)
            opened.extend((client, server))
            header = server.recv(4, socket.MSG_WAITALL)
            payload = server.recv(int.from_bytes(header[:3], "little"), socket.MSG_WAITALL)
            end = payload.index(b"\0", 1)  # protocol version byte, then the NUL-terminated version string
            payload = payload[:1] + version + payload[end:]
            client.sendall(len(payload).to_bytes(3, "little") + header[3:4] + payload)
            for a, b in ((client, server), (server, client)):
                pipes.append(threading.Thread(target=pipe, args=(a, b), daemon=True))
                pipes[-1].start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()
        for end in opened:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
        for piping in pipes:
            piping.join(timeout=10)
        for end in opened:
            end.close()


@mariadb_only
@pytest.mark.parametrize(("announced", "named"), [(b"8.0.36", "MySQL 8.0.36 is not supported"),
                                                  (b"5.5.5-10.4.7-MariaDB", "MariaDB 10.4.7 is too old")])
def test_db_upgrade_refuses_mysql_and_old_mariadb_with_exit_2_and_writes_nothing(
        db_url: str, announced: bytes, named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with announcing(announced) as port:
        proxied = make_url(db_url).set(drivername="mysql", host="127.0.0.1", port=port)
        env = {"SMARTCAR_ETL_DATABASE_URL": proxied.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
        result = CliRunner().invoke(cli, ["db", "upgrade"], env=env)
    assert result.exit_code == 2, result.output
    assert named in result.stderr and "MariaDB 10.5 or newer" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    engine = make_engine(db_url)
    try:
        assert inspect(engine).get_table_names() == []  # nothing was created
    finally:
        engine.dispose()


@mariadb_only
def test_the_same_server_announced_as_itself_is_accepted_through_the_proxy(db_url: str) -> None:
    with announcing(b"5.5.5-10.11.19-MariaDB-proxied") as port:
        engine = make_engine(make_url(db_url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False))
        try:
            assert upgrade(engine) == (None, head_revision())
        finally:
            engine.dispose()


@mariadb_only
def test_a_plain_mysql_url_works_end_to_end_on_mariadb(db_url: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    plain = make_url(db_url).set(drivername="mysql").render_as_string(hide_password=False)
    env = {"SMARTCAR_ETL_DATABASE_URL": plain, "SMARTCAR_ETL_CONFIG": ""}
    first, second = (CliRunner().invoke(cli, ["db", "upgrade"], env=env) for _ in range(2))
    assert first.exit_code == 0 and "upgraded from empty to" in first.stdout, first.output
    assert second.exit_code == 0 and "already at revision" in second.stdout, second.output
    added = CliRunner().invoke(cli, ["connections", "add", CID], env=env)
    checked = CliRunner().invoke(cli, ["check"], env=env)
    assert added.exit_code == 0 and checked.exit_code == 0, added.output + checked.output


# -- the session and the schema -----------------------------------------------------------------------

@mariadb_only
def test_every_session_is_utf8mb4_binary_utc_and_strict(engine: Engine) -> None:
    with engine.connect() as conn:
        zone, mode, charset, collation, isolation = conn.execute(text(
            "SELECT @@session.time_zone, @@session.sql_mode, @@character_set_connection, "
            "@@collation_connection, @@session.tx_isolation")).one()
    assert zone == "+00:00"
    assert {"STRICT_TRANS_TABLES", "STRICT_ALL_TABLES", "NO_ZERO_DATE"} <= set(mode.split(","))
    assert (charset, collation, isolation) == ("utf8mb4", "utf8mb4_bin", "READ-COMMITTED")


@mariadb_only
def test_every_table_compares_exactly_whatever_the_database_default(engine: Engine) -> None:
    with engine.connect() as conn:
        default = conn.scalar(text("SELECT @@collation_database"))
        tables = {name: collation for name, collation in conn.execute(text(
            "SELECT table_name, table_collation FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' AND table_name <> 'alembic_version'"))}
    assert default != "utf8mb4_bin"  # the test database is the server's default: the tables say otherwise
    assert len(tables) == 12 and set(tables.values()) == {"utf8mb4_bin"}


@mariadb_only
def test_permission_names_differing_only_in_case_are_two_grants(engine: Engine) -> None:
    from etl.api.documents import ConnectionRecord, VehicleAttributes
    from etl.db.batch import store_batch
    from etl.outcomes import Fetched

    track(Store(engine), [CID], now=lambda: T0)
    record = ConnectionRecord(connection_id=CID, user_id=CID, vehicle_id=CID, vehicle=VehicleAttributes(),
                              permissions=frozenset({"read_location", "READ_LOCATION"}))
    with engine.begin() as conn:
        counts = store_batch(conn=conn, run_id=None, outcomes=[Fetched(CID, T0, record)])
    g = permission_grants.c
    with engine.connect() as conn:
        held = set(conn.scalars(select(g.permission).where(g.connection_id == CID, g.valid_to.is_(None))))
        exact = conn.scalar(select(g.permission).where(g.permission == "READ_LOCATION"))
    assert counts.granted == 2 and held == {"read_location", "READ_LOCATION"} and exact == "READ_LOCATION"


@mariadb_only
def test_microseconds_and_utc_survive_whatever_the_reading_session_zone(engine: Engine) -> None:
    when = dt.datetime(2026, 3, 1, 23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    track(Store(engine), [CID], now=lambda: when)
    with engine.connect() as conn:
        conn.execute(text("SET time_zone = '+05:00'"))  # a reader in another zone sees the same UTC value
        raw = conn.scalar(text("SELECT CAST(tracked_at AS CHAR) FROM connections"))
        conn.rollback()
    assert raw == "2026-03-02 04:59:59.999999"
    assert Store(engine).owners([CID]) == {CID: "default"}
    with engine.connect() as conn:
        now = dialects.dialect_for(conn).server_now(conn)
    assert now is not None and now.tzinfo == dt.UTC
    assert abs((now - dt.datetime.now(dt.UTC)).total_seconds()) < 60


@mariadb_only
@pytest.mark.corrupts_history  # grants without their changes
def test_one_open_grant_per_connection_and_permission_is_a_unique_key(engine: Engine) -> None:
    track(Store(engine), [CID], now=lambda: T0)
    columns = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("permission_grants") if i["unique"]}
    assert columns["uq_permission_grants_open"] == ["connection_id", "permission", "is_open"]

    def grant(start: int, end: int | None) -> None:
        with engine.begin() as conn:
            conn.execute(permission_grants.insert().values(
                connection_id=CID, permission="read_vin", valid_from=T0 + dt.timedelta(seconds=start),
                valid_to=None if end is None else T0 + dt.timedelta(seconds=end)))

    grant(0, 1)
    grant(2, 3)  # closed intervals: any number
    grant(4, None)
    with pytest.raises(exc.IntegrityError, match="uq_permission_grants_open"):
        grant(5, None)  # a second open one
    with engine.begin() as conn:  # the generated column follows valid_to
        conn.execute(permission_grants.update().where(permission_grants.c.valid_to.is_(None))
                     .values(valid_to=T0 + dt.timedelta(seconds=5)))
    grant(5, None)


# -- the run lock ----------------------------------------------------------------------------------------

@mariadb_only
def test_the_run_lock_is_per_database_not_per_server(engine: Engine) -> None:
    with scratch_database(admin_url("mariadb")) as other_url:
        other = make_engine(other_url)
        try:
            upgrade(other)
            with Store(engine).lock(), Store(other).lock():  # two databases on one server: two locks
                with pytest.raises(LockHeld), Store(make_engine(engine.url)).lock():
                    pass  # the same database from another session: held
        finally:
            other.dispose()


# -- driver errors, sorted by code --------------------------------------------------------------------------

def _error(engine: Engine, statement: str, **params: Any) -> exc.DBAPIError:
    with pytest.raises(exc.DBAPIError) as caught, engine.begin() as conn:
        conn.execute(text(statement), params)
    return caught.value


@mariadb_only
def test_refused_rows_sort_as_rejected_not_as_an_unreachable_database(engine: Engine) -> None:
    track(Store(engine), [CID], now=lambda: T0)
    at = T0.replace(tzinfo=None)
    refused = {
        1406: _error(engine, "UPDATE connections SET status = :s", s="x" * 17),  # too long: strict, not truncated
        4025: _error(engine, "UPDATE connections SET status = 'gone'"),  # CHECK constraint
        1366: _error(engine, "UPDATE connections SET consecutive_failures = 'many'"),
        1062: _error(engine, "INSERT INTO connections (id, tracked_at) VALUES (:i, :t)", i=CID, t=at),
        1452: _error(engine, "INSERT INTO connections (id, tracked_at, user_id) VALUES (:i, :t, 'nobody')",
                     i=str(uuid.uuid4()), t=at),
    }
    for code, error in refused.items():
        assert error.orig.args[0] == code, error
        assert dialects.dialect_for(engine).error_kind(error) == "rejected", error
    assert isinstance(refused[4025], exc.OperationalError)  # PyMySQL's class alone would say "unreachable"


@mariadb_only
def test_a_lost_or_refused_server_sorts_as_unreachable(db_url: str) -> None:
    for url in (make_url(db_url).set(database="etl_test_no_such_database"), make_url(db_url).set(port=1)):
        engine = make_engine(url.render_as_string(hide_password=False))
        try:
            with pytest.raises(exc.DBAPIError) as caught, engine.connect():
                pass
        finally:
            engine.dispose()
        assert dialects.dialect_for(engine).error_kind(caught.value) == "unreachable", caught.value


@mariadb_only
def test_deadlocks_and_lock_timeouts_sort_as_worth_a_retry(engine: Engine) -> None:
    ids = sorted(str(uuid.uuid4()) for _ in range(2))
    track(Store(engine), ids, now=lambda: T0)
    first, second = engine.connect(), engine.connect()
    try:
        for conn in (first, second):
            conn.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
            conn.commit()
        lock = "UPDATE connections SET consecutive_failures = consecutive_failures + 1 WHERE id = :i"
        first.execute(text(lock), {"i": ids[0]})
        with pytest.raises(exc.OperationalError) as waited:
            second.execute(text(lock), {"i": ids[0]})  # waits 1 s, then gives up
        assert waited.value.orig.args[0] == 1205 and dialects.dialect_for(engine).error_kind(waited.value) == "retry"
        second.rollback()
        second.execute(text(lock), {"i": ids[1]})
        crossed: list[BaseException] = []

        def take_second_row() -> None:
            try:
                first.execute(text(lock), {"i": ids[1]})
            except exc.DBAPIError as error:
                crossed.append(error)

        waiter = threading.Thread(target=take_second_row)
        waiter.start()
        try:
            second.execute(text(lock), {"i": ids[0]})
        except exc.DBAPIError as error:
            crossed.append(error)
        waiter.join()
        codes = {e.orig.args[0]: e for e in crossed if isinstance(e, exc.DBAPIError)}
        assert 1213 in codes, crossed  # one of the two is the deadlock's victim
        assert dialects.dialect_for(engine).error_kind(codes[1213]) == "retry"
    finally:
        first.close()
        second.close()


# -- migrations that fail part-way --------------------------------------------------------------------------

@mariadb_only
@pytest.mark.parametrize("fail_at", ["CREATE TABLE permission_grants", "ALTER TABLE connections ADD COLUMN "
                                     "consecutive_failures", "CREATE VIEW permission_change_log"])
def test_an_upgrade_that_failed_part_way_completes_when_run_again(empty_engine: Engine, fail_at: str) -> None:
    """DDL commits at once on MariaDB: what ran before the failure stays, and the rerun must not trip on it."""
    failed: list[str] = []

    def fail_once(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if " ".join(statement.split()).startswith(fail_at) and not failed:
            failed.append(statement)
            raise pymysql.err.OperationalError(2013, "Lost connection to server during query")

    event.listen(empty_engine, "before_cursor_execute", fail_once)
    with pytest.raises(Exception, match="Lost connection"):
        upgrade(empty_engine)
    assert failed
    half = set(inspect(empty_engine).get_table_names())
    assert "users" in half  # the first tables were committed by the server
    assert current_revision(empty_engine) != head_revision()
    assert upgrade(empty_engine)[1] == head_revision()
    assert current_revision(empty_engine) == head_revision()
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from etl.db.models import Base, compared_objects

    with empty_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "compare_type": True, "include_object": compared_objects(empty_engine.dialect)})
        assert compare_metadata(context, Base.metadata) == []
        assert {v for (v,) in conn.execute(text(
            "SELECT table_name FROM information_schema.views WHERE table_schema = DATABASE()"))} == {
            "current_permissions", "connection_overview", "permission_change_log", "archive_versions",
            "connection_coverage"}


@mariadb_only
def test_downgrade_to_nothing_and_up_again(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    with empty_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert set(inspect(empty_engine).get_table_names()) <= {"alembic_version"}
    assert upgrade(empty_engine) == (None, head_revision())
