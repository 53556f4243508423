"""Deployment: every setting from the environment, config show, doctor, JSON results, --version, the deployment
examples (docs/operations.md: the environment file, the crontab run as cron runs it, the systemd units), and a new
user's first hour as the README tells it. The Kubernetes manifests: tests/test_kubernetes.py."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from etl.cli import cli
from etl.config import KEYS
from etl.context import Seams, StoreLedger
from etl.db.engine import head_revision, make_engine
from etl.db.models import connections
from etl.db.store import Store
from etl.doctor import diagnose
from etl.fakeapi import FakeApi
from etl.logs import JsonFormatter
from etl.scheduler import Daemon
from tests.conftest import Runner
from tests.test_cli import Cli

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
OPERATIONS = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
# For tests whose subject is not the database: the servers add nothing but time.
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
UUID_LINE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def api_cli(db_url: str, tmp_path: Path, api_server: dict[str, str], fake: FakeApi) -> Cli:
    """The CLI against the database ``db_url`` and the fake API on loopback, with the fake's credentials."""
    return Cli(db_url, tmp_path, {
        "SMARTCAR_API_BASE_URL": api_server["base_url"], "SMARTCAR_TOKEN_URL": api_server["token_url"],
        "SMARTCAR_CLIENT_ID": fake.client_id, "SMARTCAR_CLIENT_SECRET": fake.client_secret})


@pytest.fixture
def cli_sqlite(tmp_path: Path, api_server: dict[str, str], fake_api: FakeApi) -> Cli:
    """``api_cli`` on a SQLite file of this test."""
    return api_cli(f"sqlite:///{tmp_path / 'etl.db'}", tmp_path, api_server, fake_api)


def one_object(stdout: str) -> dict[str, Any]:
    """stdout must be exactly one JSON object (json.loads refuses anything after it)."""
    value = json.loads(stdout)
    assert isinstance(value, dict)
    return value


# -- every setting from the environment, config show ----------------------------------------------------------


# -- doctor ------------------------------------------------------------------------------------------------------

def checks(result: Any) -> dict[str, str]:
    shown = one_object(result.stdout)
    assert shown["exit_code"] == result.exit_code
    return {c["name"]: c["status"] for c in shown["checks"]}


def details(result: Any) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in one_object(result.stdout)["checks"]}


SKIPPED_BECAUSE = {"database": "needs a valid configuration", "token": "needs credentials",
                   "api request": "needs a token", "clock": "needs an answer from the API",
                   "rate budget": "needs a migrated database"}


def test_doctor_all_ok(db_url: str, tmp_path: Path, api_server: dict[str, str], fake_api: FakeApi) -> None:
    fake_api.populate(3, seed=1)
    run = api_cli(db_url, tmp_path, api_server, fake_api)
    assert run("db", "upgrade").exit_code == 0
    result = run("doctor", "--format", "json")
    assert result.exit_code == 0, result.output
    assert checks(result) == dict.fromkeys(("configuration", "database", "token", "api request", "clock",
                                            "rate budget"), "ok")
    said = details(result)
    assert said["configuration"] == "built-in defaults; 5 setting(s) from the environment"
    assert said["database"].endswith(f", revision {head_revision()} (the latest)")
    assert said["token"] == f"{api_server['token_url']} gave a token"
    assert said["api request"] == f"GET {api_server['base_url']}/connections answered 200; the application has " \
        "3 connection(s)"
    assert said["clock"].startswith("within 60s of the API's")
    # the bucket keeps one token (and 100 ms of refill) below capacity; doctor's request took one more
    assert re.fullmatch(r"11[78] of 120 requests available, 120 an hour", said["rate budget"]), said["rate budget"]
    assert [(m, p) for m, p in fake_api.requests if p.startswith("/v3/")] == [("GET", "/v3/connections")]
    table = run("doctor")
    assert table.exit_code == 0 and len([line for line in table.stdout.splitlines() if " ok " in line]) == 6
    assert fake_api.client_secret not in result.output + table.output


def test_doctor_refused_credentials_is_3(cli_sqlite: Cli, fake_api: FakeApi) -> None:
    assert cli_sqlite("db", "upgrade").exit_code == 0
    result = cli_sqlite("doctor", "--format", "json", SMARTCAR_CLIENT_SECRET="wrong-but-long-secret")
    assert result.exit_code == 3
    assert checks(result) == {"configuration": "ok", "database": "ok", "token": "error", "api request": "skipped",
                              "clock": "skipped", "rate budget": "ok"}
    assert details(result)["token"] == "auth HTTP 401 Unauthorized invalid_client on /oauth2/token: Client " \
        "authentication failed.; check the client id and secret"
    assert "wrong-but-long-secret" not in result.output and fake_api.client_secret not in result.output


def test_doctor_unreachable_database_is_3(cli_sqlite: Cli, fake_api: FakeApi) -> None:
    url = "postgresql+psycopg://etl:pg-password-here@127.0.0.1:1/etl"
    result = cli_sqlite("doctor", "--format", "json", SMARTCAR_ETL_DATABASE_URL=url)
    assert result.exit_code == 3
    assert checks(result) == {"configuration": "ok", "database": "error", "token": "ok", "api request": "ok",
                              "clock": "ok", "rate budget": "skipped"}
    assert "pg-password-here" not in result.output and fake_api.client_secret not in result.output


def test_doctor_schema_not_migrated_is_2_naming_db_upgrade(cli_sqlite: Cli, tmp_path: Path,
                                                            fake_api: FakeApi) -> None:
    empty = make_engine(f"sqlite:///{tmp_path / 'etl.db'}", create=True)
    with empty.connect():  # the file exists, with no schema in it
        pass
    empty.dispose()
    result = cli_sqlite("doctor")
    assert result.exit_code == 2
    assert re.search(r"database\s+error\s+sqlite:///\S+ is at revision none \(empty\), the latest is "
                     rf"{head_revision()}: run `smartcar-etl db upgrade`", result.stdout)
    assert re.search(r"rate budget\s+skipped\s+needs a migrated database", result.stdout)
    assert fake_api.client_secret not in result.output
    missing = cli_sqlite("doctor", SMARTCAR_ETL_DATABASE_URL=f"sqlite:///{tmp_path / 'none.db'}")
    assert missing.exit_code == 2 and "run `smartcar-etl db upgrade` first to create it" in missing.stdout


def test_doctor_bad_configuration_is_2_and_runs_no_other_check(cli_sqlite: Cli) -> None:
    result = cli_sqlite("doctor", "--format", "json", SMARTCAR_ETL_API_CONCURRENCY="0")
    assert result.exit_code == 2
    assert checks(result) == {"configuration": "error", "database": "skipped", "token": "skipped",
                              "api request": "skipped", "clock": "skipped", "rate budget": "skipped"}
    assert details(result) == {"configuration": "SMARTCAR_ETL_API_CONCURRENCY: expected a whole number from 1 to "
                               "256, got 0 (docs/configuration.md lists every key and variable)",
                               **SKIPPED_BECAUSE}
    two = cli_sqlite("doctor", SMARTCAR_ETL_API_CONCURRENCY="0", SMARTCAR_ETL_SYNC_BATCH_SIZE="x")
    assert two.exit_code == 2 and re.search(r"configuration\s+error\s+SMARTCAR_ETL_API_CONCURRENCY: .*; "
                                            r"SMARTCAR_ETL_SYNC_BATCH_SIZE: ", two.stdout)


def test_doctor_without_credentials_is_2_and_still_checks_the_database(cli_sqlite: Cli) -> None:
    assert cli_sqlite("db", "upgrade").exit_code == 0
    result = cli_sqlite("doctor", "--format", "json", SMARTCAR_CLIENT_ID="", SMARTCAR_CLIENT_SECRET="")
    assert result.exit_code == 2
    assert checks(result) == {"configuration": "error", "database": "ok", "token": "skipped",
                              "api request": "skipped", "clock": "skipped", "rate budget": "ok"}
    said = details(result)
    assert said["configuration"].startswith("no API credentials: set SMARTCAR_CLIENT_ID")
    assert (said["token"], said["api request"]) == (SKIPPED_BECAUSE["token"], SKIPPED_BECAUSE["api request"])


def test_doctor_with_a_ready_token_checks_it_with_the_request(cli_sqlite: Cli) -> None:
    result = cli_sqlite("doctor", "--format", "json", SMARTCAR_CLIENT_ID="", SMARTCAR_CLIENT_SECRET="",
                        SMARTCAR_ACCESS_TOKEN="a-token-the-api-refuses")
    assert result.exit_code == 3
    assert checks(result)["token"] == "ok" and checks(result)["api request"] == "error"
    said = details(result)
    assert said["token"] == "a ready token is set (SMARTCAR_ACCESS_TOKEN); the API request checks it"
    assert "401" in said["api request"] and "a-token-the-api-refuses" not in result.output


def fake_with_date(fake: FakeApi, date: str | None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        response = fake.handle(request)
        headers = {k: v for k, v in response.headers.items() if k.lower() != "date"}
        return httpx.Response(response.status_code, headers={**headers, **({"Date": date} if date else {})},
                              content=response.content)

    return httpx.MockTransport(handle)


@sqlite_only
@pytest.mark.parametrize(("date", "expected"), [
    ("Sun, 01 Mar 2026 09:58:00 GMT", ("warning", "this machine's clock is 120s ahead of the API's: sync times")),
    ("Sun, 01 Mar 2026 10:01:01 GMT", ("warning", "this machine's clock is 61s behind the API's")),
    ("Sun, 01 Mar 2026 10:01:00 GMT", ("ok", "within 60s of the API's (-60.0s)")),
    ("Sun, 01 Mar 2026 10:00:30 GMT", ("ok", "within 60s of the API's (-30.0s)")),
    (None, ("warning", "the API's Date header is missing or unreadable: None")),
    ("yesterday", ("warning", "the API's Date header is missing or unreadable: 'yesterday'")),
    ("Fri, 31 Dec 9999 23:59:59 -2359", ("warning", "missing or unreadable: 'Fri, 31 Dec 9999 23:59:59 -2359'")),
])
def test_doctor_clock_skew_is_a_warning_that_leaves_the_code(run_sync: Runner, engine: Any, date: str | None,
                                                             expected: tuple[str, str]) -> None:
    config, now = run_sync.config, dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
    seams = Seams(transport=fake_with_date(run_sync.fake, date), now=lambda: now)
    report = diagnose(lambda: config, lambda: Store(engine), seams=seams, env={})
    clock = next(c for c in report.checks if c.name == "clock")
    assert (clock.status, report.exit_code) == (expected[0], 0) and expected[1] in clock.detail


@sqlite_only
def test_doctor_sends_nothing_when_the_budget_is_empty_and_only_warns(run_sync: Runner, engine: Any) -> None:
    config = run_sync.config
    config = replace(config, rate_limit=replace(config.rate_limit, capacity=10, per_minute=1))
    ledger = StoreLedger(Store(engine), config)
    assert ledger.lease(1)[0] == 1  # the bucket's row, then 5 minutes without a token (a 429's Retry-After)
    ledger.drain(300)
    transport = httpx.MockTransport(run_sync.fake.handle)
    report = diagnose(lambda: config, lambda: Store(engine), seams=Seams(transport=transport), env={})
    statuses = {c.name: c.status for c in report.checks}
    assert (statuses["api request"], statuses["rate budget"], report.exit_code) == ("warning", "warning", 0)
    assert run_sync.fake.count("GET", "/v3/connections") == 0
    said = {c.name: c.detail for c in report.checks}
    assert said["api request"] == "not sent: the rate budget is empty (see below)"
    assert re.fullmatch(r"empty \(0 of 10\): the next request can go in (6m|5m 5\ds); runs now wait for it",
                        said["rate budget"]), said["rate budget"]  # 300 s drained, then one token at 1 a minute
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=12)  # the budget check reads the pass's clock
    report = diagnose(lambda: config, lambda: Store(engine), seams=Seams(transport=transport, now=lambda: later),
                      env={})
    assert {c.name: c.status for c in report.checks}["rate budget"] == "ok"


@sqlite_only
def test_doctor_counts_a_budget_of_one_request_as_enough(run_sync: Runner, engine: Any) -> None:
    config = run_sync.config
    # The bucket stays a token (and 100 ms of refill) below its capacity of 3; doctor's request takes one: one left.
    config = replace(config, rate_limit=replace(config.rate_limit, capacity=3, per_minute=0.001))
    report = diagnose(lambda: config, lambda: Store(engine),
                      seams=Seams(transport=httpx.MockTransport(run_sync.fake.handle)), env={})
    budget = report.checks[-1]
    assert (budget.name, budget.status, budget.detail) == ("rate budget", "ok",
                                                           "1 of 3 requests available, 0.06 an hour")


@sqlite_only
def test_doctor_a_429_from_the_api_is_a_warning_and_a_500_an_error(run_sync: Runner, engine: Any) -> None:
    fake, statuses = run_sync.fake, []
    for status in (429, 500):
        fake.fail_next(status, headers={"Retry-After": "1"}, match="/v3/connections", times=2)  # both attempts
        seams = Seams(transport=httpx.MockTransport(fake.handle), sleep=lambda seconds: None)
        report = diagnose(lambda: run_sync.config, lambda: Store(engine), seams=seams, env={})
        check = next(c for c in report.checks if c.name == "api request")
        statuses.append((check.status, report.exit_code, str(status) in check.detail))
    assert statuses == [("warning", 0, True), ("error", 3, True)]


@sqlite_only
def test_doctor_asks_for_one_item_of_page_one_and_bounds_its_retries(run_sync: Runner, engine: Any) -> None:
    fake, sent, sleeps = run_sync.fake, [], []
    fake.populate(2, seed=10)
    fake.listing = {"page_key": "page", "next": "relative", "total": False}

    def recorded(request: httpx.Request) -> httpx.Response:
        sent.append(dict(request.url.params))
        return fake.handle(request)

    fake.fail_next(503, headers={"Retry-After": "100"}, match="/v3/connections", times=1)
    seams = Seams(transport=httpx.MockTransport(recorded), sleep=sleeps.append)
    report = diagnose(lambda: run_sync.config, lambda: Store(engine), seams=seams, env={})
    said = {c.name: (c.status, c.detail) for c in report.checks}
    assert said["api request"] == ("ok", "GET https://api.test/v3/connections answered 200")  # no totalCount
    api = [params for params in sent if params]
    assert api == [{"page[number]": "1", "page[size]": "1"}] * 2 and sleeps == [5.0]  # Retry-After capped at 5 s

    def not_a_listing(request: httpx.Request) -> httpx.Response:
        response = fake.handle(request)
        return httpx.Response(200, json={"data": 5}) if request.url.path == "/v3/connections" else response

    report = diagnose(lambda: run_sync.config, lambda: Store(engine),
                      seams=Seams(transport=httpx.MockTransport(not_a_listing)), env={})
    [check] = [c for c in report.checks if c.name == "api request"]
    assert (check.status, report.exit_code) == ("error", 3) and "page 1: data is not an array" in check.detail


@sqlite_only
def test_doctor_names_a_variable_that_sets_nothing(run_sync: Runner, engine: Any) -> None:
    transport = httpx.MockTransport(run_sync.fake.handle)
    report = diagnose(lambda: run_sync.config, lambda: Store(engine), seams=Seams(transport=transport),
                      env={"SMARTCAR_ETL_API_CONCURENCY": "4"})
    first = report.checks[0]
    assert (first.name, first.status) == ("configuration", "warning") and first.detail.endswith(
        "; not settings, ignored: SMARTCAR_ETL_API_CONCURENCY (did you mean SMARTCAR_ETL_API_CONCURRENCY?)")
    assert report.exit_code == 0
    far, farther = "SMARTCAR_ETL_" + "Q" * 60, "SMARTCAR_ETL_" + "Z" * 30
    report = diagnose(lambda: run_sync.config, lambda: Store(engine), seams=Seams(transport=transport),
                      env={farther: "1", far: "1", "SMARTCAR_ETL_CONFIG": "", "SMARTCAR_ETL_API_CONCURRENCY": "2"})
    clipped = repr(far)[:59] + "…"  # a name longer than 60 characters is shown clipped, as the config file's are
    assert report.checks[0].detail.endswith(f"; not settings, ignored: {clipped}, {farther}")


# -- one JSON object from sync and backfill, whatever happens --------------------------------------------------------

def test_sync_and_backfill_print_one_json_object_for_each_outcome(cli_sqlite: Cli, fake_api: FakeApi,
                                                                   tmp_path: Path) -> None:
    ids = fake_api.populate(4, seed=3)
    fake_api.connections[ids[0]].broken = "bad_permission"
    assert cli_sqlite("db", "upgrade").exit_code == 0
    (tmp_path / "ids.txt").write_text("\n".join(ids))
    backfilled = cli_sqlite("backfill", "--ids-file", "ids.txt", "--format", "json")
    outcome = one_object(backfilled.stdout)
    assert (backfilled.exit_code, outcome["status"], outcome["fetched"], outcome["failed"]) == (1, "partial", 3, 1)
    assert "run " in backfilled.stderr  # the logs are on stderr
    (tmp_path / "bad.txt").write_text(ids[1] + "\nnot-a-connection-id\n")
    bad = cli_sqlite("backfill", "--ids-file", "bad.txt", "--format", "json")
    outcome = one_object(bad.stdout)
    assert (bad.exit_code, outcome["status"]) == (2, "error") and "line 2" in outcome["error"]
    fake_api.connections[ids[0]].broken = None
    synced = cli_sqlite("sync", "--all", "--format", "json")
    assert synced.exit_code == 0 and one_object(synced.stdout)["status"] == "succeeded"
    refused = cli_sqlite("sync", "--all", "--format", "json", SMARTCAR_CLIENT_SECRET="not-the-secret-value")
    outcome = one_object(refused.stdout)
    assert (refused.exit_code, outcome["status"], outcome["exit_code"]) == (3, "aborted", 3)
    assert outcome["fetched"] is None and "401" in outcome["error"] and "not-the-secret-value" not in refused.output
    store = Store(make_engine(cli_sqlite.db_url))
    with store.lock():
        held = cli_sqlite("sync", "--format", "json")
        skipped = cli_sqlite("backfill", "--all", "--format", "json", "--if-locked", "skip")
        skipped_text = cli_sqlite("sync", SMARTCAR_ETL_SYNC_IF_LOCKED="skip")
    outcome = one_object(held.stdout)
    assert (held.exit_code, outcome["status"], outcome["exit_code"]) == (4, "skipped", 4)
    assert (skipped.exit_code, one_object(skipped.stdout)["status"]) == (0, "skipped")
    assert skipped_text.exit_code == 0 and "another run holds the lock" in skipped_text.stderr
    store.engine.dispose()


def test_an_interrupted_sync_prints_its_json_object_and_exits_130(tmp_path: Path) -> None:
    env = {**os.environ, "SMARTCAR_ETL_DATABASE_URL": f"sqlite:///{tmp_path / 'etl.db'}", "SMARTCAR_ETL_CONFIG": ""}
    server = subprocess.Popen([sys.executable, "-m", "etl", "fake-api", "--port", "0", "--connections", "30",
                               "--latency", "0.3", "--ids-file", "ids.txt"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        exports = [server.stdout.readline() for _ in range(4)]
        env.update(line.removeprefix("export ").strip().split("=", 1) for line in exports)  # type: ignore[misc]
        for args in (["db", "upgrade"], ["connections", "import", "ids.txt"]):
            subprocess.run([sys.executable, "-m", "etl", *args], cwd=tmp_path, env=env, check=True,
                           capture_output=True)
        sync = subprocess.Popen([sys.executable, "-m", "etl", "sync", "--format", "json", "--strategy", "ids"],
                                cwd=tmp_path, env={**env, "SMARTCAR_ETL_API_CONCURRENCY": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        assert sync.stderr is not None
        while "connection(s) due" not in sync.stderr.readline() and time.monotonic() < deadline:
            pass
        time.sleep(0.5)
        sync.send_signal(signal.SIGTERM)
        stdout, _ = sync.communicate(timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()
    outcome = one_object(stdout)
    assert (sync.returncode, outcome["status"], outcome["exit_code"]) == (130, "aborted", 130)
    assert outcome["error"].startswith("stopped by SIGTERM after ") and outcome["fetched"] >= 1  # stored


@sqlite_only
def test_the_daemon_logs_one_json_record_per_pass(run_sync: Runner, engine: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    ids = run_sync.fake.populate(3, seed=4)
    from etl.tracking import track

    track(Store(engine), ids)
    seams = Seams(transport=httpx.MockTransport(run_sync.fake.handle), sleep=lambda s: None, now=run_sync.clock)
    daemon = Daemon(run_sync.config, Store(engine), seams=seams)
    caplog.set_level(logging.INFO)
    daemon.run_pass()
    with Store(engine).lock():
        daemon.run_pass()
    results = [json.loads(JsonFormatter().format(r))["result"] for r in caplog.records if hasattr(r, "result")]
    assert [(r["status"], r["exit_code"]) for r in results] == [("succeeded", 0), ("skipped", 4)]
    assert results[0]["fetched"] == 3 and results[1]["fetched"] is None


# -- --version ------------------------------------------------------------------------------------------------------

def test_version_is_the_package_metadata() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"smartcar-etl, version {importlib.metadata.version('smartcar-etl')}"
    from etl import __version__

    assert __version__ == importlib.metadata.version("smartcar-etl")


# -- the deployment examples in docs/operations.md --------------------------------------------------------------------

def fenced(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", OPERATIONS, flags=re.M | re.S)


def parses(argv: list[str]) -> click.Context:
    """The command line parsed by the job's own options (nothing runs); UsageError if it is wrong."""
    ctx = cli.make_context("smartcar-etl", list(argv), resilient_parsing=False)
    with warnings.catch_warnings():  # Click 8.2 deprecates protected_args; resolve_command still wants them
        warnings.simplefilter("ignore", DeprecationWarning)
        name, command, rest = cli.resolve_command(ctx, ctx.protected_args + ctx.args)
    assert command is not None, name
    with ctx:
        return command.make_context(name, rest, parent=ctx)


def job_argv(line: str) -> list[str]:
    """The arguments after `smartcar-etl` (found on PATH or named by its path) in a shell or ExecStart line."""
    words = line.split(">>")[0].split()
    return words[next(i for i, w in enumerate(words) if w == "smartcar-etl" or w.endswith("bin/smartcar-etl")) + 1:]


def crontab() -> tuple[dict[str, str], str]:
    """The crontab example: its variable lines, and its one job line."""
    [block] = fenced("cron")
    variables, jobs = {}, []
    for line in block.splitlines():
        if line.strip() and not line.startswith("#"):
            variable = re.fullmatch(r"([A-Z_]+)=(\S+)", line)
            if variable:
                variables[variable.group(1)] = variable.group(2)
            else:
                jobs.append(line)
    [job] = jobs
    return variables, job


def environment_file() -> dict[str, str]:
    """The environment file that cron and systemd read (/etc/smartcar-etl/env), as systemd reads it."""
    [block] = [b for b in fenced("sh") if b.startswith("# /etc/smartcar-etl/env")]
    lines = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Z_]+=[^\s'\"$`\\]+", line) for line in lines), "read alike by systemd and sh"
    return dict(line.split("=", 1) for line in lines)


def test_the_crontab_line_parses_and_skips_a_held_lock() -> None:
    from apscheduler.triggers.cron import CronTrigger

    variables, line = crontab()
    CronTrigger.from_crontab(" ".join(line.split()[:5]), timezone=dt.UTC)
    ctx = parses(job_argv(line))
    assert ctx.params["if_locked"] == "skip" and ctx.params["fmt"] == "json"
    assert variables["SHELL"] == "/bin/sh" and variables["PATH"].startswith("/srv/smartcar-etl/.venv/bin:")
    assert " cd /srv/smartcar-etl && set -a && . /etc/smartcar-etl/env && set +a && smartcar-etl " in line
    assert "%" not in line  # cron would read a newline


def test_the_environment_file_names_variables_the_job_reads_and_keeps_the_secret_in_a_file() -> None:
    variables = environment_file()
    assert set(variables) <= {key.variable for key in KEYS} | {"SMARTCAR_ETL_CONFIG", "SMARTCAR_CLIENT_ID"}
    assert variables["SMARTCAR_ETL_API_CLIENT_SECRET_FILE"].startswith("/etc/smartcar-etl/")
    assert not any("SECRET=" in f"{name}=" or "TOKEN=" in f"{name}=" for name in variables)
    assert "EnvironmentFile=/etc/smartcar-etl/env" in systemd_units()["smartcar-etl-sync.service"]


def test_the_crontab_line_runs_in_crons_bare_environment(tmp_path: Path, api_server: dict[str, str],
                                                         fake_api: FakeApi) -> None:
    """The example as cron runs it: /bin/sh, only the crontab's variables and HOME, the working directory HOME;
    its paths moved under tmp_path, the environment file's values pointed at SQLite and the fake API."""
    moved = {"/srv/smartcar-etl/.venv/bin": str(Path(sys.executable).parent),
             "/srv/smartcar-etl": str(tmp_path / "srv"), "/etc/smartcar-etl": str(tmp_path / "etc"),
             "/var/lib/node_exporter/textfile": str(tmp_path), "/var/log": str(tmp_path)}

    def move(text: str) -> str:
        for old, new in moved.items():
            text = text.replace(old, new)
        return text

    for directory in ("srv", "etc", "home"):
        (tmp_path / directory).mkdir()
    variables, line = crontab()
    env = {name: move(value) for name, value in environment_file().items()}
    env.update(SMARTCAR_ETL_DATABASE_URL="sqlite:///smartcar_etl.db", SMARTCAR_CLIENT_ID=fake_api.client_id)
    (tmp_path / "etc" / "env").write_text("".join(f"{name}={value}\n" for name, value in env.items()))
    Path(env["SMARTCAR_ETL_CONFIG"]).write_text(
        f"api:\n  base_url: {api_server['base_url']}\n  token_url: {api_server['token_url']}\n")
    secret = Path(env["SMARTCAR_ETL_API_CLIENT_SECRET_FILE"])
    secret.write_text(fake_api.client_secret)
    secret.chmod(0o600)
    ids = fake_api.populate(3, seed=12)
    setup = {**os.environ, **env}
    for args in (["db", "upgrade"], ["connections", "add", *ids]):
        subprocess.run([sys.executable, "-m", "etl", *args], cwd=tmp_path / "srv", env=setup, check=True,
                       capture_output=True, timeout=60)
    bare = {"HOME": str(tmp_path / "home"), "LOGNAME": "smartcar-etl", **{k: move(v) for k, v in variables.items()}}
    ran = subprocess.run([bare["SHELL"], "-c", move(line.split(None, 5)[5])], cwd=bare["HOME"], env=bare,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    log = (tmp_path / "smartcar-etl.log").read_text()
    # Every line is JSON: the logs (stderr, with a time), and the one outcome that sync printed on stdout.
    [outcome] = [record for record in map(json.loads, log.splitlines()) if "time" not in record]
    assert (outcome["status"], outcome["fetched"]) == ("succeeded", 3)
    assert "smartcar_etl_runs_total" in (tmp_path / "smartcar_etl.prom").read_text()
    assert (tmp_path / "srv" / "smartcar_etl.db").exists()  # the working directory is the line's, not HOME
    assert fake_api.client_secret not in log


def systemd_units() -> dict[str, str]:
    units = {}
    for block in fenced("ini"):
        first = block.splitlines()[0]
        if first.startswith("# /etc/systemd/system/"):
            units[first.removeprefix("# /etc/systemd/system/")] = block
    return units


def test_the_systemd_units_verify_and_their_commands_parse(tmp_path: Path) -> None:
    units = systemd_units()
    assert set(units) == {"smartcar-etl-sync.service", "smartcar-etl-sync.timer", "smartcar-etl.service"}
    executable = str(Path(sys.executable).parent / "smartcar-etl")
    assert Path(executable).exists()
    for name, text in units.items():
        (tmp_path / name).write_text(text.replace("/srv/smartcar-etl/.venv/bin/smartcar-etl", executable))
        for line in text.splitlines():
            if line.startswith(("ExecStart=", "ExecStartPre=")):
                parses(job_argv(line))
            assert "=" not in line or " #" not in line, f"systemd reads no comment after a value: {line}"
    assert "sync --if-locked skip --format json" in units["smartcar-etl-sync.service"]
    assert "Type=oneshot" in units["smartcar-etl-sync.service"] and "OnCalendar=" in units["smartcar-etl-sync.timer"]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # .ci/run requires it, as it requires the database servers
        assert not os.environ.get("ETL_REQUIRE_SYSTEMD_ANALYZE"), "systemd-analyze is required and missing"
        return
    verified = subprocess.run([analyze, "verify", *(str(tmp_path / n) for n in units)], capture_output=True,
                              text=True, timeout=60)
    assert verified.returncode == 0, verified.stderr
    calendar = re.search(r"^OnCalendar=(.*)$", units["smartcar-etl-sync.timer"], flags=re.M)
    assert calendar is not None
    assert subprocess.run([analyze, "calendar", calendar.group(1)], capture_output=True, timeout=60).returncode == 0


# -- a new user's first hour ----------------------------------------------------------------------------------------

def test_the_first_hour_as_the_readme_tells_it(cli_sqlite: Cli, fake_api: FakeApi, tmp_path: Path) -> None:
    ids = fake_api.populate(250, seed=5)
    assert cli_sqlite("db", "upgrade").exit_code == 0
    nothing = cli_sqlite("sync")
    assert nothing.exit_code == 0 and "nothing is tracked" in nothing.stdout and "connections add" in nothing.stdout
    (tmp_path / "ids.txt").write_text("\n".join(ids[:50]))
    assert cli_sqlite("connections", "import", "ids.txt").exit_code == 0
    first = cli_sqlite("sync", "--format", "json")  # auto: 50 GETs cost more than 3 listing pages
    assert first.exit_code == 0 and one_object(first.stdout)["fetched"] == 50
    engine = make_engine(cli_sqlite.db_url)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(connections)) == 50  # the listing widened nothing
    engine.dispose()
    idle = cli_sqlite("sync", "--format", "json")
    hint = one_object(idle.stdout)["hint"]
    assert "none of the 50 tracked connection(s) is due; the next is due at" in hint and "sync --all" in hint


def test_a_shorter_interval_applies_at_once(run_sync: Runner) -> None:
    ids = run_sync.fake.populate(4, seed=8)
    from etl.tracking import track

    track(Store(run_sync.engine), ids)
    assert run_sync().counts.fetched == 4  # due again in 13.5 minutes
    assert run_sync(advance=dt.timedelta(seconds=30)).planned == 0
    run_sync.config = replace(run_sync.config, schedule=replace(run_sync.config.schedule, interval_seconds=20.0))
    assert run_sync(advance=dt.timedelta(seconds=30)).counts.fetched == 4  # fetched 60 s ago > 90 % of 20 s
    idle = run_sync(advance=dt.timedelta(seconds=5))
    assert idle.planned == 0 and "(in 13s)" in (idle.hint or "")  # 18 s (90 % of 20 s) after the last fetch


def test_fake_api_writes_its_ids(tmp_path: Path) -> None:
    server = subprocess.Popen([sys.executable, "-m", "etl", "fake-api", "--port", "0", "--connections", "7",
                               "--ids-file", "ids.txt"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    assert server.stdout is not None
    with server.stdout:
        try:
            assert server.stdout.readline().startswith("export SMARTCAR_API_BASE_URL=http://127.0.0.1:")
        finally:
            server.terminate()
            server.wait(timeout=10)
    lines = (tmp_path / "ids.txt").read_text().splitlines()
    assert len(lines) == 7 and all(UUID_LINE.fullmatch(line) for line in lines)


def _options(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    found = []
    for name, command in group.commands.items():
        found += [(" ".join(prefix + (name,)), p.name or "") for p in command.params
                  if isinstance(p, click.Option) and not p.hidden]
        if isinstance(command, click.Group):
            found += _options(command, prefix + (name,))
    return found


def test_every_option_has_help_text() -> None:
    missing = []
    for command_path, name in _options(cli):
        command: Any = cli
        for part in command_path.split():
            command = command.commands[part]
        option = next(p for p in command.params if p.name == name)
        if not option.help:
            missing.append(f"{command_path} --{name}")
    assert missing == []


def test_single_result_commands_print_one_json_object(cli_sqlite: Cli, fake_api: FakeApi, tmp_path: Path) -> None:
    [connection_id] = fake_api.populate(1, seed=9)
    assert cli_sqlite("db", "upgrade").exit_code == 0
    current = one_object(cli_sqlite("db", "current", "--format", "json").stdout)
    assert current["latest"] is True and current["current"] == current["head"]
    assert cli_sqlite("connections", "add", connection_id).exit_code == 0
    assert cli_sqlite("sync").exit_code == 0
    checked = cli_sqlite("check", "--format", "json")
    assert checked.exit_code == 0 and one_object(checked.stdout)["violations"] == []
    assert one_object(checked.stdout)["grants"] > 0
    status, alias = (one_object(cli_sqlite("status", *args).stdout) for args in (["--format", "json"], ["--json"]))
    assert status.keys() == alias.keys() and status["runs"] == alias["runs"] and status["connections"]["active"] == 1
    shown = cli_sqlite("archive", "show", connection_id, "--format", "table")
    assert shown.exit_code == 0 and "status: 200" in shown.stdout and f'"id": "{connection_id}"' in shown.stdout
    plan = cli_sqlite("backfill", "--all", "--dry-run", "--format", "json")
    assert plan.exit_code == 0 and one_object(plan.stdout)["connections"] == 1
