"""Hostile files, configuration and databases at the command line: a clear error, never a traceback."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from etl.cli import cli
from etl.db.models import sync_runs
from etl.errors import ConfigError
from etl.files import read_lines
from etl.tracking import ids_from_file
from tests.test_cli import GOOD, OTHER, Cli

SECRET = "a-real-looking-client-secret-42"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def invoke(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> Result:
    """The CLI as a user runs it: exceptions are not caught by the runner, so a traceback would fail the test."""
    result = CliRunner().invoke(cli, list(args), env={"SMARTCAR_ETL_CONFIG": "", **(env or {})},
                                input=io.BytesIO(stdin) if stdin is not None else None, catch_exceptions=False)
    # A traceback may only stand inside a JSON log record (its "exception" field), never as lines of its own.
    plain = [line for line in result.output.splitlines() if not line.startswith("{")]
    assert not any("Traceback" in line for line in plain), result.output
    return result


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


# -- numbers and durations ----------------------------------------------------


# -- files: secrets, config, ids -----------------------------------------------


def test_a_config_file_not_utf8_or_too_large_exits_2_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes("sync:\n  strategy: ids\n".encode("utf-16"))
    result = invoke("--config", str(path), "status")
    assert result.exit_code == 2 and f"config file {path}: is not UTF-8 text (line 1" in result.stderr
    path.write_bytes(b"# " + b"x" * (1024 * 1024))
    result = invoke("--config", str(path), "status")
    assert result.exit_code == 2 and "is larger than 1048576 bytes" in result.stderr
    path.write_text("a: " + "[" * 5000)
    result = invoke("--config", str(path), "status")
    assert result.exit_code == 2 and "cannot read YAML" in result.stderr


@pytest.mark.parametrize("url, driver", [
    ("postgresql+psycopg2://u@localhost/x", "psycopg2"), ("postgresql+asyncpg://u@localhost/x", "asyncpg"),
    ("sqlite+aiosqlite:///x.db", "aiosqlite"), ("oracle://u@h/x", "oracle"), ("mysql+mysqldb://u@h/x", "mysql"),
])
def test_an_unsupported_driver_exits_2_naming_the_supported_ones(url: str, driver: str) -> None:
    result = invoke("status", env={"SMARTCAR_ETL_DATABASE_URL": url})
    assert result.exit_code == 2 and driver in result.stderr
    assert "sqlite:///PATH, postgresql://, postgresql+psycopg://" in result.stderr


def test_a_sqlite_file_that_is_not_a_database_exits_3_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"this is not a database, just text " * 200)
    for command in (["status"], ["db", "current"], ["sync"], ["db", "upgrade"], ["check"]):
        result = invoke(*command, env={"SMARTCAR_ETL_DATABASE_URL": f"sqlite:///{tmp_path / 'junk.db'}"})
        assert result.exit_code == 3, (command, result.output)
        assert result.stderr.count("\n") == 1 and "not a database" in result.stderr


def test_only_db_upgrade_creates_a_sqlite_file(tmp_path: Path) -> None:
    env = {"SMARTCAR_ETL_DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}"}
    for command in (["status"], ["db", "current"], ["connections", "list"], ["report", "fleet"], ["check"]):
        result = invoke(*command, env=env)
        assert result.exit_code == 2 and "run `smartcar-etl db upgrade` first" in result.stderr, command
        assert not (tmp_path / "new.db").exists()
    assert invoke("db", "upgrade", env=env).exit_code == 0 and (tmp_path / "new.db").exists()


@pytest.fixture
def sqlite_cli(tmp_path: Path) -> Cli:
    run = Cli(f"sqlite:///{tmp_path / 'etl.db'}", tmp_path)
    assert run("db", "upgrade").exit_code == 0
    return run


def test_import_accepts_a_byte_order_mark_and_names_lines_that_are_not_utf8(sqlite_cli: Cli, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\r\n" + OTHER.encode() + b"\n")
    result = sqlite_cli("connections", "import", str(ids))
    assert result.exit_code == 0 and "2 added" in result.output
    ids.write_bytes(f"{GOOD}\n".encode() + b"caf\xe9\n")
    result = sqlite_cli("connections", "import", str(ids))
    assert result.exit_code == 2 and f"{ids}, line 2: not UTF-8 text" in result.stderr
    ids.write_bytes(f"{GOOD}\n{OTHER}\n".encode("utf-16"))
    result = invoke("connections", "import", str(ids), env=sqlite_cli.env)
    assert result.exit_code == 2 and f"{ids}, line 1: not UTF-8 text" in result.stderr


def test_import_clips_long_values_and_caps_the_list_of_errors(sqlite_cli: Cli, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("x" * 5_000_000 + "\n" + "\n".join(f"bad-{n}" for n in range(1000)) + "\n")
    result = sqlite_cli("connections", "import", str(ids))
    assert result.exit_code == 2
    assert len(result.stderr) < 2000 and "… and 991 more" in result.stderr
    assert f"{ids}, line 1: 'xxxx" in result.stderr and "characters)" in result.stderr


def test_import_refuses_what_is_not_a_regular_file_but_reads_stdin(sqlite_cli: Cli) -> None:
    result = invoke("connections", "import", "/dev/zero", env=sqlite_cli.env)
    assert result.exit_code == 2 and "/dev/zero: is not a regular file" in result.stderr
    result = invoke("connections", "import", "-", env=sqlite_cli.env, stdin=f"{GOOD}\n".encode())
    assert result.exit_code == 0 and "1 added" in result.output


def test_id_files_have_a_size_limit_that_admits_a_million_ids() -> None:
    million = 1_000_000 * (len(GOOD) + 1)
    assert million < 256 * 1024 * 1024
    lines = list(read_lines(io.BytesIO(f"{GOOD}\n".encode() * 3), where="f", limit=3 * 37))
    assert [text for _, text in lines] == [f"{GOOD}\n"] * 3
    with pytest.raises(ConfigError, match="f: is larger than"):
        list(read_lines(io.BytesIO(f"{GOOD}\n".encode() * 3), where="f", limit=3 * 37 - 1))


def test_ids_with_a_trailing_newline_are_refused_everywhere(sqlite_cli: Cli, tmp_path: Path) -> None:
    result = sqlite_cli("connections", "add", GOOD + "\n")
    assert result.exit_code == 2 and "argument 1" in result.stderr
    result = sqlite_cli("connections", "untrack", GOOD + "\n")
    assert result.exit_code == 2
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{GOOD}\n  {OTHER}  # spaces and a comment are fine in a file\n")
    assert ids_from_file(str(ids)) == [GOOD, OTHER]


# -- internal errors, logs, pipes ------------------------------------------------


def test_an_internal_error_is_one_line_exit_3_and_a_json_log_record(
    sqlite_cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import etl.tracking

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(etl.tracking, "track", broken)  # a bug inside the library, not an HTTP fake
    result = invoke("--log-format", "json", "connections", "add", GOOD, env=sqlite_cli.env)
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert [line for line in lines if not line.startswith("{")] == [
        "Error: internal error (KeyError: 'a bug'); the run, if any, is recorded as aborted"]
    assert records[-1]["level"] == "ERROR" and "KeyError" in records[-1]["exception"]
    text = invoke("connections", "add", GOOD, env=sqlite_cli.env)  # text logs: no traceback lines either
    assert text.exit_code == 3 and len(text.stderr.strip().splitlines()) == 2 and "Traceback" not in text.stderr


def test_a_read_only_database_can_still_be_read(sqlite_cli: Cli, tmp_path: Path) -> None:
    assert sqlite_cli("connections", "add", GOOD).exit_code == 0
    read_only = f"sqlite:///file:{tmp_path / 'etl.db'}?mode=ro&uri=true"
    for command in (["status"], ["check"], ["report", "fleet"], ["connections", "list"]):
        result = invoke(*command, env={"SMARTCAR_ETL_DATABASE_URL": read_only})
        assert result.exit_code == 0, (command, result.stderr)
    assert GOOD in invoke("connections", "list", env={"SMARTCAR_ETL_DATABASE_URL": read_only}).output


def test_a_reader_that_stops_early_is_not_an_error(sqlite_cli: Cli, tmp_path: Path) -> None:
    many = tmp_path / "many.txt"
    many.write_text("".join(f"{n:08x}-0000-4000-8000-000000000000\n" for n in range(3000)))
    assert sqlite_cli("connections", "import", str(many)).exit_code == 0
    process = subprocess.Popen([sys.executable, "-m", "etl", "connections", "list"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env={**os.environ, **sqlite_cli.env}, cwd=tmp_path)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.readline()
    process.stdout.close()  # like `| head -1`
    stderr = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(60) == 0 and stderr == ""


def test_debug_logging_shows_each_request(sqlite_cli: Cli, api_server: dict[str, str], fake_api: object) -> None:
    from etl.fakeapi import FakeApi

    assert isinstance(fake_api, FakeApi)
    conn = fake_api.add()
    assert sqlite_cli("connections", "add", conn.id).exit_code == 0
    env = {"SMARTCAR_API_BASE_URL": api_server["base_url"], "SMARTCAR_TOKEN_URL": api_server["token_url"],
           "SMARTCAR_CLIENT_ID": fake_api.client_id, "SMARTCAR_CLIENT_SECRET": fake_api.client_secret}
    result = sqlite_cli("--log-level", "debug", "sync", **env)
    assert result.exit_code == 0
    assert f"GET /connections/{conn.id}: HTTP 200" in result.stderr and "stored a batch of 1" in result.stderr
    assert fake_api.client_secret not in result.stderr


def test_an_aborted_run_records_what_it_planned(sqlite_cli: Cli, api_server: dict[str, str], fake_api: object,
                                                tmp_path: Path) -> None:
    from etl.fakeapi import FakeApi

    assert isinstance(fake_api, FakeApi)
    ids = [fake_api.add().id for _ in range(3)]
    assert sqlite_cli("connections", "add", *ids).exit_code == 0
    fake_api.fail_next(403, times=10)
    env = {"SMARTCAR_API_BASE_URL": api_server["base_url"], "SMARTCAR_TOKEN_URL": api_server["token_url"],
           "SMARTCAR_CLIENT_ID": fake_api.client_id, "SMARTCAR_CLIENT_SECRET": fake_api.client_secret}
    result = sqlite_cli("sync", **env)
    assert result.exit_code == 3
    connection = sqlite3.connect(tmp_path / "etl.db")
    try:
        planned, status = connection.execute(
            select(sync_runs.c.connections_planned, sync_runs.c.status).compile(
                compile_kwargs={"literal_binds": True}).string).fetchone()
    finally:
        connection.close()
    assert (planned, status) == (3, "aborted")


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "61"])
def test_fake_api_latency_is_a_finite_number_in_range(value: str) -> None:
    result = invoke("fake-api", "--port", "0", "--latency", value)
    assert result.exit_code == 2 and "--latency" in result.output


@pytest.mark.parametrize("value", ["nan/2", "120/inf", "0/2", "120"])
def test_fake_api_rate_limit_is_two_finite_positive_numbers(value: str) -> None:
    result = invoke("fake-api", "--port", "0", "--rate-limit", value)
    assert result.exit_code == 2 and "--rate-limit" in result.output
