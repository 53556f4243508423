"""The command line: exit codes and messages, against real databases and the fake API on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from etl.cli import cli
from etl.db.engine import head_revision, make_engine
from etl.db.models import connections, permission_changes
from etl.fakeapi import FakeApi

GOOD = "32c4139a-e4aa-4c6c-b357-3ae9022dbf1b"
OTHER = "a6a425d6-c661-4b21-af7a-d6b75f80f3b0"


class Cli:
    """CliRunner with the environment of one test: its database and the fake API on loopback."""

    def __init__(self, db_url: str, tmp_path: Path, env: dict[str, str] | None = None) -> None:
        self.db_url = db_url
        self.tmp_path = tmp_path
        self.env = {"SMARTCAR_ETL_DATABASE_URL": db_url, "SMARTCAR_ETL_CONFIG": "", **(env or {})}

    def __call__(self, *args: str, input: str | None = None, **env: str) -> Result:
        return CliRunner().invoke(cli, list(args), input=input, env={**self.env, **env}, catch_exceptions=False)


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml of the developer's is picked up


@pytest.fixture
def run(db_url: str, tmp_path: Path, api_server: dict[str, str], fake_api: FakeApi) -> Cli:
    return Cli(db_url, tmp_path, {
        "SMARTCAR_API_BASE_URL": api_server["base_url"], "SMARTCAR_TOKEN_URL": api_server["token_url"],
        "SMARTCAR_CLIENT_ID": fake_api.client_id, "SMARTCAR_CLIENT_SECRET": fake_api.client_secret,
    })


@pytest.fixture
def migrated(run: Cli) -> Cli:
    result = run("db", "upgrade")
    assert result.exit_code == 0, result.output
    return run


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append(prefix + (name,))
        if isinstance(command, click.Group):
            found += _commands(command, prefix + (name,))
    return found


@pytest.mark.parametrize("command", [()] + _commands(cli), ids=lambda c: " ".join(c) or "smartcar-etl")
def test_every_command_has_help_with_an_example(command: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "smartcar-etl" in result.output.split("Example:")[1]


def test_db_upgrade_twice_and_current(run: Cli, db_url: str) -> None:
    before = run("db", "current")
    if db_url.startswith("sqlite"):  # only `db upgrade` creates a SQLite file; the others name it
        assert before.exit_code == 2 and "run `smartcar-etl db upgrade` first to create it" in before.stderr
        assert not Path(db_url.removeprefix("sqlite:///")).exists()
    else:
        assert "none (empty database" in before.output
    first = run("db", "upgrade")
    assert first.exit_code == 0 and f"upgraded from empty to {head_revision()}" in first.output
    second = run("db", "upgrade")
    assert second.exit_code == 0 and f"already at revision {head_revision()}" in second.output
    assert run("db", "current").output.strip() == f"{head_revision()} (latest)"


def test_add_refuses_invalid_ids_naming_value_and_position(migrated: Cli) -> None:
    result = migrated("connections", "add", GOOD, "not-a-uuid", "{" + OTHER + "}")
    assert result.exit_code == 2
    assert "argument 2: 'not-a-uuid' is not a connection id" in result.stderr
    assert f"argument 3: '{{{OTHER}}}'" in result.stderr
    assert json.loads(migrated("connections", "list", "--format", "json").stdout) == []


def test_import_file_with_comments_and_a_bad_line(migrated: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "ids.txt"
    bad.write_text(f"# ids from the app\n{GOOD}\n\n{OTHER.upper()}  # upper case is fine\n12345\n")
    result = migrated("connections", "import", str(bad))
    assert result.exit_code == 2 and f"{bad}, line 5: '12345' is not a connection id" in result.stderr
    assert json.loads(migrated("connections", "list", "--format", "json").stdout) == []
    good = tmp_path / "good.txt"
    good.write_text(f"# ids\n{GOOD}\n\n{OTHER.upper()}  # upper case is fine\n{GOOD}\n")
    result = migrated("connections", "import", str(good))
    assert result.exit_code == 0 and "2 added, 0 tracked again, 0 already tracked" in result.stdout
    listed = json.loads(migrated("connections", "list", "--format", "json").stdout)
    assert [r["connection_id"] for r in listed] == sorted([GOOD, OTHER])
    assert {r["status"] for r in listed} == {"pending"}


def test_import_from_stdin(migrated: Cli) -> None:
    result = migrated("connections", "import", "-", input=f"{GOOD}\nbad value\n")
    assert result.exit_code == 2 and "stdin, line 2: 'bad value'" in result.stderr
    result = migrated("connections", "import", "-", input=f"{GOOD}\n")
    assert result.exit_code == 0 and "1 added" in result.stdout


def test_sync_list_untrack_round_trip(migrated: Cli, fake_api: FakeApi, db_url: str) -> None:
    ids = fake_api.populate(3, seed=1)
    assert migrated("connections", "add", *ids).exit_code == 0
    result = migrated("sync")
    assert result.exit_code == 0, result.output
    assert "3 fetched" in result.stdout and "0 failed" in result.stdout
    csv_out = migrated("connections", "list", "--format", "csv").stdout.splitlines()
    assert csv_out[0] == ("application,connection_id,status,tracked,user_id,vehicle_id,permissions,"
                          "last_success_at,last_attempt_at,last_error")
    assert len(csv_out) == 4 and all(",active," in line for line in csv_out[1:])
    table = migrated("connections", "list").stdout
    assert "connection_id" in table.splitlines()[0] and ids[0] in table
    result = migrated("connections", "untrack", ids[0], GOOD)
    assert result.exit_code == 0 and "1 untracked" in result.stdout and f"{GOOD} is not a known" in result.stderr
    assert ids[0] not in migrated("connections", "list").stdout
    assert ids[0] in migrated("connections", "list", "--all").stdout
    assert "0 planned" in migrated("sync").stdout  # nothing is due again yet
    result = migrated("sync", "--all")
    assert "2 planned" in result.stdout
    engine = make_engine(db_url)
    with engine.connect() as conn:  # history of the untracked connection stays
        assert conn.scalar(select(func.count()).select_from(permission_changes)
                           .where(permission_changes.c.connection_id == ids[0])) > 0
    engine.dispose()
    assert migrated("connections", "add", ids[0]).stdout.startswith("0 added, 1 tracked again")


def test_sync_exit_1_when_a_connection_fails(migrated: Cli, fake_api: FakeApi) -> None:
    ids = fake_api.populate(3, seed=2)
    fake_api.connections[ids[1]].broken = "no_user"
    migrated("connections", "add", *ids)
    result = migrated("sync")
    assert result.exit_code == 1 and "partial" in result.stdout and "1 failed" in result.stdout
    assert f"connection {ids[1]} failed: malformed" in result.stderr
    listed = {r["connection_id"]: r for r in json.loads(migrated("connections", "list", "--format", "json").stdout)}
    assert "relationships.user is missing" in listed[ids[1]]["last_error"]


def test_sync_exit_3_when_credentials_are_refused(migrated: Cli, fake_api: FakeApi, db_url: str) -> None:
    ids = fake_api.populate(2, seed=3)
    migrated("connections", "add", *ids)
    result = migrated("sync", SMARTCAR_CLIENT_SECRET="a-wrong-but-real-looking-secret")
    assert result.exit_code == 3
    assert "aborted" in result.stderr and "HTTP 401" in result.stderr and "invalid_client" in result.stderr
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert set(conn.scalars(select(connections.c.status))) == {"pending"}
        assert conn.scalar(select(func.count()).select_from(permission_changes)) == 0
    engine.dispose()


def test_sync_exit_2_without_credentials_or_migrations(run: Cli) -> None:
    result = run("sync")
    assert result.exit_code == 2 and "run `smartcar-etl db upgrade` first" in result.stderr
    run("db", "upgrade")
    result = run("sync", SMARTCAR_CLIENT_ID="", SMARTCAR_CLIENT_SECRET="")
    assert result.exit_code == 2 and "no API credentials" in result.stderr


def test_bad_config_exits_2_naming_the_key(run: Cli, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("api:\n  concurrency: many\n")
    result = run("--config", str(config), "sync")
    assert result.exit_code == 2 and "api.concurrency" in result.stderr
    result = run("sync", SMARTCAR_API_BASE_URL="http://10.0.0.1/v3")
    assert result.exit_code == 2 and "SMARTCAR_API_BASE_URL: plain http://" in result.stderr


def test_unknown_option_is_usage_error() -> None:
    result = CliRunner().invoke(cli, ["sync", "--bogus"])
    assert result.exit_code == 2 and "No such option" in result.output


@pytest.mark.parametrize("url", ["postgresql+psycopg://postgres:pw-not-shown@127.0.0.1:1/nothing",
                                 "mariadb+pymysql://root:pw-not-shown@127.0.0.1:1/nothing"])
def test_database_unreachable_exits_3(tmp_path: Path, url: str) -> None:
    run = Cli(url, tmp_path)
    for args in (["db", "upgrade"], ["connections", "add", GOOD]):
        result = run(*args)
        assert result.exit_code == 3, result.output
        assert f"database {url.replace(':pw-not-shown', ':***')}" in result.stderr
        assert "pw-not-shown" not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("db_url", [pytest.param("mariadb", marks=pytest.mark.mariadb)], indirect=True)
def test_a_wrong_mariadb_password_exits_3_and_leaves_the_database_alone(db_url: str, tmp_path: Path) -> None:
    Cli(db_url, tmp_path)("db", "upgrade")
    Cli(db_url, tmp_path)("connections", "add", GOOD)
    wrong = make_url(db_url).set(password="pw-not-shown").render_as_string(hide_password=False)
    result = Cli(wrong, tmp_path)("sync")
    assert result.exit_code == 3, result.output
    assert "Access denied" in result.stderr and "pw-not-shown" not in result.output
    listed = Cli(db_url, tmp_path)("connections", "list", "--format", "json")
    assert [r["connection_id"] for r in json.loads(listed.stdout)] == [GOOD]


def test_sqlite_folder_missing_exits_3(tmp_path: Path) -> None:
    result = Cli(f"sqlite:///{tmp_path}/no/such/dir/etl.db", tmp_path)("db", "upgrade")
    assert result.exit_code == 3 and "does not exist" in result.stderr


def test_json_logs_are_json_lines_with_run_id(migrated: Cli, fake_api: FakeApi) -> None:
    migrated("connections", "add", *fake_api.populate(2, seed=4))
    result = migrated("--log-format", "json", "sync")
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    summary = [entry for entry in lines if entry.get("status") == "succeeded"]
    assert len(summary) == 1 and summary[0]["run_id"] == 1 and "duration_seconds" in summary[0]
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in lines)


def test_fake_api_refuses_a_non_loopback_host() -> None:
    result = CliRunner().invoke(cli, ["fake-api", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "not a loopback address" in result.output


def test_demo_runs_and_reports(tmp_path: Path) -> None:
    runner = CliRunner()
    database = tmp_path / "demo.db"
    result = runner.invoke(cli, ["demo", "--database", str(database), "--connections", "12", "--passes", "3"])
    assert result.exit_code == 0, result.output
    assert "Permission changes after the first pass:" in result.stdout
    assert "Current permissions per vehicle:" in result.stdout
    assert result.stdout.count("pass ") >= 3 and "revoked" in result.stdout
    again = runner.invoke(cli, ["demo", "--database", str(database), "--passes", "1"])
    assert again.exit_code == 0  # an earlier demo database is replaced
    other = tmp_path / "precious.db"
    other.write_bytes(b"not a demo database")
    refused = runner.invoke(cli, ["demo", "--database", str(other)])
    assert refused.exit_code == 2 and other.read_bytes() == b"not a demo database"


def test_python_m_etl_end_to_end_in_a_subprocess(migrated: Cli, fake_api: FakeApi, tmp_path: Path) -> None:
    ids = fake_api.populate(4, seed=5)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(ids))
    env: dict[str, Any] = {**os.environ, **migrated.env}
    for args, code in ((["connections", "import", str(ids_file)], 0), (["sync"], 0), (["sync", "--all"], 0)):
        done = subprocess.run([sys.executable, "-m", "etl", *args], env=env, capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)
        assert done.returncode == code, done.stderr
    assert "4 fetched, 0 changed" in done.stdout

