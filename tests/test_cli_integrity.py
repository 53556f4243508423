"""The command line against hostile values: times out of range, a Date header of year 0001, and a
`demo --database` pointed at somebody else's file."""

from __future__ import annotations

import datetime as dt
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from etl.cli import cli
from etl.clock import http_date
from etl.context import Seams
from etl.db.demofile import MARKER_TABLE
from etl.db.store import Store
from etl.doctor import diagnose
from tests.conftest import Runner
from tests.test_cli import GOOD, Cli
from tests.test_deploy import fake_with_date, sqlite_only

UTC = dt.UTC


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml of the developer's is picked up


def invoke(engine: Engine, *args: str) -> Result:
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
    return CliRunner().invoke(cli, list(args), env=env)


# -- issue 11: times on the command line ------------------------------------------------------------

TIME_OPTIONS = {
    "--as-of": ("report", "permissions", "--as-of"),
    "--since": ("report", "changes", "--since"),
    "--until": ("report", "changes", "--since", "2026-03-01", "--until"),
    "archive --as-of": ("archive", "show", GOOD, "--as-of"),
}
HOSTILE_TIMES = {
    "year 10000 in UTC": "9999-12-31T23:59:59-23:59",
    "year 0 in UTC": "0001-01-01T00:00:00+01:00",
    "10 KB": "2026-03-01T00:00:00" + "0" * 10_000,
    "10 KB of letters": "x" * 10_240,
}


@sqlite_only
@pytest.mark.parametrize("value", HOSTILE_TIMES.values(), ids=HOSTILE_TIMES.keys())
@pytest.mark.parametrize("where", TIME_OPTIONS.values(), ids=TIME_OPTIONS.keys())
def test_a_time_out_of_range_or_huge_is_exit_2_naming_the_option(engine: Engine, where: tuple[str, ...],
                                                                  value: str) -> None:
    result = invoke(engine, *where, value)
    assert result.exit_code == 2, result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(f"Error: Invalid value for '{where[-1]}': ") and "internal error" not in result.output
    assert len(error) < 200 and len(result.output) < 400
    if len(value) < 100:
        assert f"'{value}' is outside the years 1-9999 in UTC" in error
    else:
        assert f"({len(value):,} characters) is not an ISO-8601 time" in error


def test_the_first_and_last_instants_in_utc_are_read_on_every_database(engine: Engine) -> None:
    first, last = "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999+00:00"
    for args in (("report", "permissions", "--as-of", first), ("report", "permissions", "--as-of", last),
                 ("report", "changes", "--since", first, "--until", last)):
        result = invoke(engine, *args, "--format", "json")
        assert (result.exit_code, result.stdout.strip()) == (0, "[]"), result.output
    shown = invoke(engine, "archive", "show", GOOD, "--as-of", last)
    assert shown.exit_code == 1 and f"nothing for connection {GOOD} by 9999-12-31T23:59:59.999999+00:00" in shown.output


# -- issue 13: doctor reads the API's Date strictly ---------------------------------------------------

NOW = dt.datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(("header", "expected"), [
    ("Sun, 01 Mar 2026 10:00:30 GMT", dt.datetime(2026, 3, 1, 10, 0, 30, tzinfo=UTC)),
    ("Mon, 01 Jan 0001 00:00:00 GMT", dt.datetime(1, 1, 1, tzinfo=UTC)),  # not 2001
    ("Fri, 31 Dec 9999 23:59:59 GMT", dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ("Sun, 01 Mar 26 10:00:00 GMT", None),  # a two-digit year
    ("Sunday, 01-Mar-26 10:00:00 GMT", None),  # RFC 850's obsolete form
    ("Mon, 01 Mar 2026 10:00:00 GMT", None),  # 1 March 2026 is a Sunday
    ("Sun, 01 Mar 2026 10:00:00 +0100", None),  # only GMT
    ("Sat, 01 Jan 0000 00:00:00 GMT", None),
    ("Sun, 29 Feb 2026 10:00:00 GMT", None),
    ("Sun, 01 Mar 2026 10:00:00 GMT\n", NOW), ("", None), (None, None), ("Sun, 01 Mar 2026 10:00:00 GMT" * 400, None),
])
def test_http_date_is_imf_fixdate_read_strictly(header: str | None, expected: dt.datetime | None) -> None:
    assert http_date(header) == expected


@sqlite_only
@pytest.mark.parametrize(("date", "status", "detail"), [
    ("Mon, 01 Jan 0001 00:00:00 GMT",
     "warning", f"this machine's clock is {(NOW - dt.datetime(1, 1, 1, tzinfo=UTC)).total_seconds():.0f}s ahead of"),
    ("Sun, 01 Mar 26 10:00:00 GMT", "warning", "the API's Date header is missing or unreadable: 'Sun, 01 Mar 26"),
    ("Mon, 01 Mar 2026 10:00:00 GMT", "warning", "the API's Date header is missing or unreadable: 'Mon, 01 Mar"),
    ("Sun, 01 Mar 2026 10:00:00 +0100", "warning", "the API's Date header is missing or unreadable: 'Sun, 01 Mar"),
    ("Sun, 01 Mar 2026 10:00:30 GMT", "ok", "within 60s of the API's (-30.0s)"),
])
def test_doctor_reads_the_year_of_the_apis_date_as_written(run_sync: Runner, engine: Any, date: str, status: str,
                                                           detail: str) -> None:
    config = run_sync.config
    seams = Seams(transport=fake_with_date(run_sync.fake, date), now=lambda: NOW)
    report = diagnose(lambda: config, lambda: Store(engine), seams=seams, env={})
    clock = next(c for c in report.checks if c.name == "clock")
    assert (clock.status, report.exit_code) == (status, 0) and clock.detail.startswith(detail), clock.detail


# -- issue 14: demo --database replaces only a database the demo made ---------------------------------

def demo(database: Path | str, *more: str) -> Result:
    return CliRunner().invoke(cli, ["demo", "--database", str(database), "--connections", "4", "--passes", "1",
                                    *more], env={"SMARTCAR_ETL_CONFIG": ""})


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.is_symlink()}


def test_demo_refuses_a_migrated_database_with_tracked_connections_and_no_runs(tmp_path: Path) -> None:
    prod = tmp_path / "prod.db"
    run = Cli(f"sqlite:///{prod}", tmp_path)
    (tmp_path / "ids.txt").write_text(GOOD + "\n")
    assert run("db", "upgrade").exit_code == 0 and run("connections", "import", "ids.txt").exit_code == 0
    before = files(tmp_path)
    result = demo(prod)
    assert result.exit_code == 2
    assert f"--database: {prod} exists and is not a demo database; choose another path" in result.output
    assert files(tmp_path) == before
    listed = run("connections", "list", "--format", "json")
    assert listed.exit_code == 0 and GOOD in listed.stdout


@pytest.mark.parametrize("target", ["missing.db", "prod.db"])
def test_demo_refuses_a_symbolic_link_and_creates_nothing_through_it(tmp_path: Path, target: str) -> None:
    if target == "prod.db":
        assert Cli(f"sqlite:///{tmp_path / target}", tmp_path)("db", "upgrade").exit_code == 0
    link = tmp_path / "link.db"
    link.symlink_to(tmp_path / target)
    before = files(tmp_path)
    result = demo(link)
    assert result.exit_code == 2
    assert f"--database: {link} is a symbolic link, which the demo does not follow" in result.output
    assert files(tmp_path) == before and link.is_symlink() and (target == "prod.db") == (tmp_path / target).exists()


@pytest.mark.parametrize("main", ["a migrated database", "none"])
def test_demo_keeps_siblings_that_belong_to_no_demo_database(tmp_path: Path, main: str) -> None:
    database = tmp_path / "other.db"
    if main == "a migrated database":
        assert Cli(f"sqlite:///{database}", tmp_path)("db", "upgrade").exit_code == 0
    for suffix in ("-wal", "-shm", ".lock"):
        Path(f"{database}{suffix}").write_bytes(f"not yours {suffix}".encode())
    before = files(tmp_path)
    result = demo(database)
    assert result.exit_code == 2 and f"--database: {database}" in result.output, result.output
    assert files(tmp_path) == before


def test_demo_replaces_its_own_database_proven_by_its_marker(tmp_path: Path) -> None:
    database = tmp_path / "demo.db"
    first = demo(database)
    assert first.exit_code == 0, first.output
    with closing(sqlite3.connect(database)) as db:
        assert db.execute(f"SELECT count(*) FROM {MARKER_TABLE}").fetchone() == (1,)
        runs = db.execute("SELECT count(*) FROM sync_runs").fetchone()
    Path(f"{database}-wal").write_bytes(b"")  # a journal of its own goes with it
    again = demo(database)
    assert again.exit_code == 0, again.output
    with closing(sqlite3.connect(database)) as db:
        assert db.execute("SELECT count(*) FROM sync_runs").fetchone() == runs  # replaced, not added to
        db.execute("INSERT INTO sync_runs (trigger, started_at, status) VALUES ('sync', '2026-03-01', 'succeeded')")
        db.commit()
    used = demo(database)  # a real run since: no longer only the demo's
    assert used.exit_code == 2 and "exists and is not a demo database" in used.output


def test_demo_replaces_a_database_of_an_older_demo_without_the_marker(tmp_path: Path) -> None:
    database = tmp_path / "demo.db"
    assert demo(database).exit_code == 0
    with closing(sqlite3.connect(database)) as db:
        db.execute(f"DROP TABLE {MARKER_TABLE}")  # what demo made before it wrote the marker: demo runs only
        db.commit()
    assert demo(database).exit_code == 0
    with closing(sqlite3.connect(database)) as db:
        db.execute("DELETE FROM sync_runs")
        db.execute(f"DROP TABLE {MARKER_TABLE}")
        db.commit()
    refused = demo(database)  # no marker and no demo run: nothing proves the demo made it
    assert refused.exit_code == 2 and "exists and is not a demo database" in refused.output


# -- other hostile option values ------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("daemon", "--cron", "x" * 10_000),
    ("daemon", "--cron", "1-" + "9" * 2_000 + " * * * *"),
    ("daemon", "--cron", "*/" + "9" * 300 + " * * * *"),
    ("fake-api", "--host", "x" * 10_000),
], ids=["cron of 10 KB", "cron with a 2,000-digit number", "cron step of 300 digits", "host of 10 KB"])
def test_a_huge_option_value_is_exit_2_naming_it_clipped(args: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, list(args), env={"SMARTCAR_ETL_CONFIG": ""})
    assert result.exit_code == 2 and args[1] in result.output, result.output
    assert len(result.output) < 400 and "internal error" not in result.output


def test_a_sqlite_file_name_too_long_is_one_clipped_line_not_an_internal_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / ('x' * 10_000)}"
    result = CliRunner().invoke(cli, ["status"], env={"SMARTCAR_ETL_DATABASE_URL": url, "SMARTCAR_ETL_CONFIG": ""})
    assert result.exit_code == 3 and "internal error" not in result.output
    assert "cannot use the file: File name too long" in result.output and len(result.output) < 400
