"""What an operator types, writes and reads: misconfiguration is never green, output is safe to paste, ship and
open, secrets and config files are bounded, durations and times read as people write them."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from etl.cli import cli
from etl.cli.base import Instant
from etl.context import Seams
from etl.db.store import Store
from etl.logs import TextFormatter
from etl.output import render
from etl.tracking import track
from tests.conftest import T0, Runner

GOOD = "32c4139a-e4aa-4c6c-b357-3ae9022dbf1b"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml of the developer's, and ./smartcar_etl.db lands here


def invoke(*args: str, obj: Any = None, **env: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"SMARTCAR_ETL_CONFIG": "", **env}, obj=obj)


def sqlite_env(tmp_path: Path) -> dict[str, str]:
    """A migrated SQLite database of the test's own."""
    env = {"SMARTCAR_ETL_DATABASE_URL": f"sqlite:///{tmp_path}/etl.db"}
    assert invoke("db", "upgrade", **env).exit_code == 0
    return env


# -- A1: a variable that sets nothing is warned about by every command -----------------------------------------

@pytest.mark.parametrize("command", [("db", "upgrade"), ("status",), ("config", "show"), ("connections", "list")])
def test_a_misspelt_variable_is_warned_about_by_every_command_without_its_value(command: tuple[str, ...]) -> None:
    assert invoke("db", "upgrade").exit_code == 0  # ./smartcar_etl.db, where the typo's run goes
    result = invoke(*command, SMARTCAR_ETL_DATABSE_URL="postgresql://etl:hunter2@db.example/etl")
    assert result.exit_code == 0, result.output
    assert "SMARTCAR_ETL_DATABSE_URL (did you mean SMARTCAR_ETL_DATABASE_URL?)" in result.stderr
    assert result.stderr.count("SMARTCAR_ETL_DATABSE_URL") == 1  # once a command
    assert "hunter2" not in result.output and "db.example" not in result.output


def test_the_warning_clips_an_odd_name_and_leaves_kubernetes_service_links_alone() -> None:
    odd = "SMARTCAR_ETL_" + "X" * 300 + "\x1b[2J"
    result = invoke("config", "show", **{odd: "value-not-shown", "SMARTCAR_ETL_SERVICE_HOST": "10.0.0.1",
                                         "SMARTCAR_ETL_PORT_443_TCP_ADDR": "10.0.0.1"})
    assert result.exit_code == 0
    [warning] = [line for line in result.stderr.splitlines() if "not settings" in line]
    assert "\x1b" not in result.stderr and "…" in warning and len(warning) < 300
    assert "SERVICE_HOST" not in warning and "PORT_443" not in warning and "value-not-shown" not in result.output


def test_a_misspelt_variable_is_named_beside_the_error_it_may_have_caused() -> None:
    result = invoke("status", SMARTCAR_ETL_API_CONCURRENCY="lots", SMARTCAR_ETL_DATBASE_URL="x")
    assert result.exit_code == 2
    assert "SMARTCAR_ETL_DATBASE_URL (did you mean SMARTCAR_ETL_DATABASE_URL?)" in result.stderr


# -- A2: database URLs people write --------------------------------------------------------------------------------


def test_postgres_is_read_as_postgresql_with_psycopg() -> None:
    result = invoke("config", "show", "--format", "json", SMARTCAR_ETL_DATABASE_URL="postgres://etl:pw@db.example/etl")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["settings"]["database.url"]["value"]
    assert shown == "postgresql+psycopg://etl:***@db.example/etl"


# -- B: output that is safe to paste, ship and open ----------------------------------------------------------------

def test_json_results_are_one_line(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path)
    imported = CliRunner().invoke(cli, ["connections", "import", "-"], input=f"{GOOD}\n",
                                  env={"SMARTCAR_ETL_CONFIG": "", **env})
    assert imported.exit_code == 0, imported.output
    for command in (("config", "show", "--format", "json"), ("status", "--format", "json"),
                    ("db", "current", "--format", "json"), ("connections", "list", "--format", "json"),
                    ("report", "fleet", "--format", "json"), ("check", "--format", "json")):
        result = invoke(*command, **env)
        assert result.exit_code == 0, (command, result.output)
        assert result.stdout.endswith("\n") and result.stdout.count("\n") == 1, command
        assert json.loads(result.stdout) is not None
    [listed] = json.loads(invoke("connections", "list", "--format", "json", **env).stdout)
    assert listed["connection_id"] == GOOD


def test_a_json_array_streams_in_pieces_and_is_one_line() -> None:
    from etl.output import render_chunks  # new: pieces written as they are, no newline between them

    consumed: list[int] = []

    def rows() -> Any:
        for n in range(5000):
            consumed.append(n)
            yield {"id": n, "at": T0}

    chunks = render_chunks(rows(), ("id", "at"), "json")
    first = next(chunks)
    assert first == '[{"id": 0, "at": "2026-03-01T12:00:00+00:00"}' and len(consumed) == 1
    text = first + "".join(chunks)
    assert text.count("\n") == 1 and text.endswith("]\n") and len(json.loads(text)) == 5000
    assert "".join(render_chunks([], ("id",), "json")) == "[]\n"


def test_csv_neutralises_text_cells_a_spreadsheet_would_run_as_a_formula() -> None:
    rows = [{"make": '=HYPERLINK("http://evil.example","x")', "model": "+1", "note": "-2", "who": "@SUM(A1)",
             "tab": "\tx", "cr": "\rx", "n": -5, "f": -0.5, "plain": "Tesla", "inner": "a\rb"}]
    columns = tuple(rows[0])
    assert render(rows, columns, "csv").splitlines()[1].startswith('"\'=HYPERLINK(""http://evil.example"",')
    [header, cells] = list(csv.reader(io.StringIO(render(rows, columns, "csv"), newline="")))
    assert cells == ["'=HYPERLINK(\"http://evil.example\",\"x\")", "'+1", "'-2", "'@SUM(A1)", "'\tx", "'\rx",
                     "-5", "-0.5", "Tesla", "a\rb"]  # a lone carriage return is quoted: no forged row


def test_tables_and_text_logs_escape_bidi_overrides_line_separators_and_controls() -> None:
    rows = [{"make": "Tesla\u202eLIVE", "model": "a\u2028b\u2066c\u200fd\u061ce", "note": "\x1b[2Jx\ny\x85"}]
    table = render(rows, ("make", "model", "note"))
    assert "Tesla\\u202eLIVE" in table and "a\\u2028b\\u2066c\\u200fd\\u061ce" in table
    assert "\\x1b[2Jx\\ny\\x85" in table and len(table.splitlines()) == 3
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]", table)
    record = logging.makeLogRecord({"msg": "make %s", "args": ("Tesla\u202eLIVE\u2029\r\nforged line",),
                                    "levelname": "INFO", "name": "etl"})
    line = TextFormatter().format(record)
    assert "\n" not in line and "\u202e" not in line and "\u2029" not in line
    assert line.endswith("make Tesla\\u202eLIVE\\u2029\\r\\nforged line")


def test_reports_of_hostile_api_text_are_safe_in_every_format(run_sync: Runner, engine: Engine) -> None:
    fake = run_sync.fake
    conn = fake.add(permissions=["read_vin"], vehicle={
        "make": '=HYPERLINK("http://evil.example","x")', "model": "Model\u202eS", "year": 2024, "mode": "live",
        "powertrainType": "BEV"})
    track(Store(engine), [conn.id])
    run_sync(ignore_due=True)
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False)}
    at = (run_sync.clock.now + dt.timedelta(minutes=1)).isoformat()
    csv_out = invoke("report", "permissions", "--as-of", at, "--format", "csv", **env)
    assert csv_out.exit_code == 0, csv_out.output
    assert "'=HYPERLINK(" in csv_out.stdout and ',=HYPERLINK' not in csv_out.stdout
    table = invoke("report", "permissions", "--as-of", at, **env)
    assert "Model\\u202eS" in table.stdout and "\u202e" not in table.stdout
    as_json = invoke("report", "permissions", "--as-of", at, "--format", "json", **env)
    assert as_json.stdout.count("\n") == 1 and json.loads(as_json.stdout)[0]["model"] == "Model\u202eS"
    shown = invoke("archive", "show", conn.id, **env)
    assert shown.exit_code == 0 and shown.stdout.count("\n") == 1 and json.loads(shown.stdout)["connection_id"]


# -- C1: a password in the database URL's query ---------------------------------------------------------------------

QUERY_PASSWORD = "postgresql+psycopg://etl@127.0.0.1:1/etl?password=hunter2pw&sslmode=disable&sslpassword=keypw"


@pytest.mark.parametrize("command", [("config", "show"), ("config", "show", "--format", "json"), ("status",),
                                     ("doctor",), ("--log-level", "DEBUG", "db", "upgrade")])
def test_a_password_in_the_url_query_is_masked_everywhere(command: tuple[str, ...]) -> None:
    result = invoke(*command, SMARTCAR_ETL_DATABASE_URL=QUERY_PASSWORD)
    assert "hunter2pw" not in result.output and "keypw" not in result.output
    assert "password=***" in result.output, result.output


# -- C2, C3: the YAML file, bounded ---------------------------------------------------------------------------------

def laughs(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, levels)]
    return "\n".join(lines) + f"\narchive:\n  enabled: *a{levels - 1}\n"


def test_a_billion_laughs_is_exit_2_naming_the_file_at_once(tmp_path: Path) -> None:
    (tmp_path / "laughs.yaml").write_text(laughs(9))  # 9**9 values: 1.7 GB and a minute before
    assert len(laughs(9)) < 700
    started = time.monotonic()
    result = invoke("--config", "laughs.yaml", "config", "show")
    assert result.exit_code == 2
    assert "laughs.yaml: more than 100,000 values once its aliases are expanded" in result.stderr
    assert time.monotonic() - started < 30  # a bound on a hang, not a measurement
    # Anchors, aliases and merge keys within the bound still share settings; a key overriding a merge is no duplicate.
    (tmp_path / "config.yaml").write_text(
        "daemon: &stopping\n  stop_timeout: 20s\n"
        "sync:\n  <<: *stopping\n  stop_timeout: 5s\n  flush_seconds: &flush 2.5\n"
        "api:\n  timeout_seconds: *flush\n")
    result = invoke("config", "show", "--format", "json")
    assert result.exit_code == 0, result.output
    settings = json.loads(result.stdout)["settings"]
    assert settings["daemon.stop_timeout"]["value"] == 20.0 and settings["sync.stop_timeout"]["value"] == 5.0
    assert settings["api.timeout_seconds"]["value"] == 2.5


def test_a_smaller_expansion_past_the_bound_is_refused_too(tmp_path: Path) -> None:
    (tmp_path / "laughs.yaml").write_text(laughs(6))  # 531,441 values: fast either way, still too many
    result = invoke("--config", "laughs.yaml", "config", "show")
    assert result.exit_code == 2 and "more than 100,000 values" in result.stderr and len(result.stderr) < 400


@pytest.mark.parametrize(("text", "message"), [
    ("api:\n  concurrency: 4\n  timeout_seconds: 30\n  concurrency: 8\n",
     "config.yaml, line 4: api.concurrency is set twice in one mapping (first on line 2)"),
    ("api:\n  concurrency: 4\nsync:\n  batch_size: 5\napi:\n  timeout_seconds: 30\n",
     "config.yaml, line 5: api is set twice in one mapping (first on line 1)"),
    ("sync: {batch_size: 5, batch_size: 6}\n", "config.yaml, line 1: sync.batch_size is set twice"),
])
def test_a_key_set_twice_is_exit_2_naming_it_and_its_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.yaml").write_text(text)
    result = invoke("config", "show")
    assert result.exit_code == 2 and message in result.stderr, result.output


def test_a_loop_and_a_vast_number_in_yaml_are_exit_2(tmp_path: Path) -> None:
    (tmp_path / "loop.yaml").write_text("archive:\n  enabled: &a [*a]\n")
    result = invoke("--config", "loop.yaml", "config", "show")
    assert result.exit_code == 2 and "refers to a value that holds it" in result.stderr
    (tmp_path / "big.yaml").write_text("api:\n  concurrency: " + "9" * 5000 + "\n")
    result = invoke("--config", "big.yaml", "config", "show")
    assert result.exit_code == 2 and "big.yaml: cannot read YAML" in result.stderr


# -- C4: credentials inside the API's URLs ------------------------------------------------------------------------


# -- C5: a secret file others can read ------------------------------------------------------------------------------


# -- D: durations as people write them ----------------------------------------------------------------------------


# -- E: times people type -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("typed", "meant"), [
    ("now", T0), ("NOW", T0), ("today", dt.datetime(2026, 3, 1, tzinfo=dt.UTC)),
    ("-7d", T0 - dt.timedelta(days=7)), ("-12h", T0 - dt.timedelta(hours=12)),
    ("-30m", T0 - dt.timedelta(minutes=30)), ("-90s", T0 - dt.timedelta(seconds=90)),
    ("+1h", T0 + dt.timedelta(hours=1)), ("-1.5h", T0 - dt.timedelta(minutes=90)),
    ("2026-02-01", dt.datetime(2026, 2, 1, tzinfo=dt.UTC)),
])
def test_times_are_iso_now_today_or_an_offset_from_the_commands_clock(tmp_path: Path, typed: str,
                                                                      meant: dt.datetime) -> None:
    assert Instant(clock=lambda: T0).convert(typed, None, None) == meant
    env = sqlite_env(tmp_path)
    result = invoke("archive", "show", GOOD, "--as-of", typed, obj=Seams(now=lambda: T0), **env)
    assert result.exit_code == 1, result.output  # nothing archived: the message says which instant it read
    assert f"the archive holds nothing for connection {GOOD} by {meant.isoformat()}" in result.stderr


def test_a_time_that_is_none_of_the_forms_is_refused_naming_them(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path)
    for typed in ("yesterday", "-7", "7d", "-7w", "-x" * 500):
        result = invoke("report", "changes", "--since", typed, obj=Seams(now=lambda: T0), **env)
        assert result.exit_code == 2, (typed, result.output)
        assert "is not an ISO-8601 time, now, today or an offset like -7d or -12h" in result.stderr
        assert len(result.stderr.splitlines()[-1]) < 200
    for typed in ("-99999999d", "-" + "9" * 30 + "d", "+3000000d"):
        result = invoke("report", "changes", "--since", typed, obj=Seams(now=lambda: T0), **env)
        assert result.exit_code == 2 and "is outside the years 1-9999 in UTC" in result.stderr, result.output
