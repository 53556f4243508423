"""Several Smartcar applications in one database, on SQLite, PostgreSQL and MariaDB: each connection is fetched
with its own application's token and stored under it, each application keeps to its own bucket and run lock, a
database of the previous release upgrades in place, and the configuration and commands that name applications.

The applications are ``FakeApplications`` served on loopback (one address, told apart by their credentials, as
Smartcar serves them); the job is the real command line, in this process (CliRunner) or as processes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select

from etl.cli import cli
from etl.config import load_config
from etl.db.engine import alembic_config, current_revision, head_revision, make_engine
from etl.db.models import UtcDateTime, connections, rate_budgets, sync_runs
from etl.db.store import Store
from etl.fakeapi import FakeApi, connection_asked, serve, urls
from etl.fakeapps import FakeApplications
from etl.tracking import track

NAMES = ("app-1", "app-2", "app-3")


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml of the developer's is picked up


class Job:
    """The job's command line (CliRunner) on one database, with a config file whose ``applications`` list names
    applications of ``apps`` served at ``root``, each secret read from a variable (``client_secret_variable``)."""

    def __init__(self, db_url: str, tmp_path: Path, apps: FakeApplications, root: str) -> None:
        self.apps, self.root = apps, root
        self.config = tmp_path / "etl.yaml"
        self.env = {"SMARTCAR_ETL_CONFIG": str(self.config), "SMARTCAR_ETL_DATABASE_URL": db_url}
        self.configure()

    def configure(self, entries: Mapping[str, str] | None = None, *, bucket: tuple[int, float] | None = None) -> None:
        """Write the config: ``entries`` maps each application's name to the fake whose credentials it has
        (default: every fake under its own name); ``bucket`` (capacity, per minute) is each entry's rate limit."""
        u = urls(self.root)
        lines = ["api:", f"  base_url: {u['base_url']}", f"  token_url: {u['token_url']}", "  concurrency: 4",
                 "sync:", "  strategy: ids", "applications:"]
        for name, fake_name in (entries or {n: n for n in self.apps.names}).items():
            fake = self.apps.fakes[fake_name]
            variable = "SECRET_OF_" + name.upper().replace("-", "_")
            self.env[variable] = fake.client_secret
            lines += [f"  - name: {name}", f"    client_id: {fake.client_id}",
                      f"    client_secret_variable: {variable}"]
            if bucket is not None:
                lines.append(f"    rate_limit: {{capacity: {bucket[0]}, per_minute: {bucket[1]}}}")
        self.config.write_text("\n".join(lines) + "\n")

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), input=input, env=self.env, catch_exceptions=False)

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self(*args, input=input)
        assert result.exit_code == 0, result.output
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--format", "json").stdout)

    def import_each(self, ids: Mapping[str, list[str]]) -> None:
        """``connections import --application NAME -`` of each application's ids."""
        for name, own in ids.items():
            said = self.ok("connections", "import", "--application", name, "-", input="\n".join(own) + "\n")
            assert said.stdout.startswith(f"{len(own)} added")


@pytest.fixture
def apps() -> FakeApplications:
    return FakeApplications.numbered(3)


@pytest.fixture
def ids(apps: FakeApplications) -> dict[str, list[str]]:
    """Four connections in each application."""
    return apps.populate(4, seed=5)


@pytest.fixture
def job(engine: Engine, db_url: str, tmp_path: Path, apps: FakeApplications, ids: dict[str, list[str]]
        ) -> Iterator[Job]:
    """The three applications served on loopback, configured, each with its connections imported."""
    with serve(apps) as root:
        job = Job(db_url, tmp_path, apps, root)
        job.import_each(ids)
        yield job


def stored(engine: Engine) -> dict[str, str]:
    """Each stored connection's application."""
    with engine.connect() as conn:
        return {row.id: row.application for row in conn.execute(select(connections.c.id, connections.c.application))}


def owners(ids: Mapping[str, list[str]]) -> dict[str, str]:
    return {cid: name for name, own in ids.items() for cid in own}


def runs_of(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(sync_runs).order_by(sync_runs.c.id)))


def wait_for(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- one sync over three applications ------------------------------------------------------------------------------

def test_one_sync_fetches_each_application_with_its_own_token_and_bucket(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    # Each application's bucket holds 6 and refills 4 a second: 8 connections at once would get 429s. The job's
    # bucket per application is just under it (5, refilled 3.8 a second), so it waits instead.
    apps = FakeApplications.numbered(3, rate_limit=(6, 4.0))
    ids = apps.populate(8, seed=2)
    with serve(apps) as root:
        job = Job(db_url, tmp_path, apps, root)
        job.configure(bucket=(5, 228))
        job.import_each(ids)
        first = job.json("sync")
        second = job.json("sync", "--all")
    assert (first["status"], first["exit_code"]) == ("succeeded", 0)
    assert [(o["application"], o["fetched"], o["changed"]) for o in first["applications"]] == [
        (name, 8, 8) for name in NAMES]
    assert stored(engine) == owners(ids)
    assert apps.foreign_requests == [] and apps.rate_limited == 0
    assert [(o["application"], o["exit_code"], o["fetched"], o["changed"]) for o in second["applications"]] == [
        (name, 0, 8, 0) for name in NAMES]  # every connection fetched again, nothing changed
    assert second["exit_code"] == 0 and stored(engine) == owners(ids)
    with engine.connect() as conn:
        budgets = set(conn.scalars(select(rate_budgets.c.key)))
    assert budgets == set(NAMES)


def test_a_backfill_of_the_listing_stores_new_connections_under_its_application(
        job: Job, engine: Engine, apps: FakeApplications) -> None:
    added = apps.fakes["app-2"].add().id
    unnamed = job("backfill", "--all")
    assert unnamed.exit_code == 2 and "backfill works on one application" in unnamed.stderr
    job.ok("backfill", "--all", "--application", "app-2")
    assert stored(engine)[added] == "app-2"
    assert apps.foreign_requests == [] and apps.request_counts()["app-1"] == 0


# -- run locks -------------------------------------------------------------------------------------------------------

def test_two_applications_sync_at_once_while_a_second_pass_of_one_exits_4(
        engine: Engine, db_url: str, tmp_path: Path) -> None:
    apps = FakeApplications.numbered(2)
    ids = apps.populate(4, seed=9)
    for name, own in ids.items():
        track(Store(engine).scoped(name), own)
    released = threading.Event()

    def hold(request: httpx.Request) -> None:  # app-1's pass waits, holding its lock, until the test lets it go
        if connection_asked(request) is not None:
            released.wait(timeout=120)

    apps.fakes["app-1"].hooks.append(hold)
    config = tmp_path / "etl.yaml"
    config.write_text("sync:\n  strategy: ids\nretry:\n  max_attempts: 2\n")
    with serve(apps) as root:
        env = {**os.environ, **apps.environment(root), "SMARTCAR_ETL_CONFIG": str(config),
               "SMARTCAR_ETL_DATABASE_URL": db_url}

        def sync(name: str) -> list[str]:
            return [sys.executable, "-m", "etl", "sync", "--application", name]

        first = subprocess.Popen(sync("app-1"), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: apps.fakes["app-1"].count("GET", "/v3/connections/") > 0, "app-1's pass")
            other = subprocess.run(sync("app-2"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
            again = subprocess.run(sync("app-1"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        finally:
            released.set()
            _, first_err = first.communicate(timeout=60)
    assert (first.returncode, other.returncode) == (0, 0), (first_err, other.stderr)
    assert again.returncode == 4 and "another run holds the lock" in again.stderr
    one, two = runs_of(engine)  # the refused pass recorded no run
    assert (one.application, one.status, two.application, two.status) == ("app-1", "succeeded", "app-2", "succeeded")
    assert one.started_at < two.started_at < two.finished_at < one.finished_at  # app-2's pass ran inside app-1's
    assert [apps.fakes[name].count("GET", f"/v3/connections/{cid}") for name in ids for cid in ids[name]] == [1] * 8
    assert apps.foreign_requests == []


def test_sync_of_every_application_runs_the_others_while_one_is_locked(
        job: Job, engine: Engine, apps: FakeApplications) -> None:
    with Store(engine).scoped("app-2").lock():
        result = job("sync", "--format", "json")
    assert result.exit_code == 0, result.output
    outcomes = {o["application"]: (o["status"], o["exit_code"]) for o in json.loads(result.stdout)["applications"]}
    assert outcomes == {"app-1": ("succeeded", 0), "app-2": ("skipped", 4), "app-3": ("succeeded", 0)}
    assert "skipped: another run holds the lock" in result.stderr
    assert apps.request_counts()["app-2"] == 0
    assert [r.application for r in runs_of(engine)] == ["app-1", "app-3"]


def test_sync_of_every_application_exits_4_only_when_every_one_is_locked(
        job: Job, engine: Engine, apps: FakeApplications) -> None:
    with ExitStack() as held:
        for name in NAMES:
            held.enter_context(Store(engine).scoped(name).lock())
        locked = job("sync", "--format", "json")
        skipped = job("sync", "--if-locked", "skip")
    assert locked.exit_code == 4, locked.output
    assert [o["status"] for o in json.loads(locked.stdout)["applications"]] == ["skipped"] * 3
    assert skipped.exit_code == 0, skipped.output
    assert runs_of(engine) == [] and sum(apps.request_counts().values()) == 0


def test_the_daemon_of_a_single_named_application_runs_as_that_application(
        engine: Engine, db_url: str, tmp_path: Path, fake_api: FakeApi, api_server: dict[str, str]) -> None:
    ids = fake_api.populate(3, seed=6)
    track(Store(engine).scoped("eu-west"), ids)
    config = tmp_path / "etl.yaml"
    config.write_text("api:\n  application: eu-west\ndaemon:\n  metrics_listen: 127.0.0.1:0\n  stop_timeout: 20s\n"
                      "sync:\n  strategy: ids\n")
    env = {**os.environ, "SMARTCAR_ETL_CONFIG": str(config), "SMARTCAR_ETL_DATABASE_URL": db_url,
           "SMARTCAR_API_BASE_URL": api_server["base_url"], "SMARTCAR_TOKEN_URL": api_server["token_url"],
           "SMARTCAR_CLIENT_ID": fake_api.client_id, "SMARTCAR_CLIENT_SECRET": fake_api.client_secret}
    daemon = subprocess.Popen([sys.executable, "-m", "etl", "daemon", "--interval", "1h"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: [r.status for r in runs_of(engine)] == ["succeeded"], "the daemon's first pass")
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    assert [(r.application, r.trigger) for r in runs_of(engine)] == [("eu-west", "daemon")]  # and its run lock
    assert stored(engine) == dict.fromkeys(ids, "eu-west") and "does not name" not in err


# -- a database of the previous release --------------------------------------------------------------------------

OLD_CONNECTION_AT = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def database_of_the_previous_release(db_url: str, connection_ids: list[str]) -> None:
    """A database at revision 0009 (one application, no ``application`` columns) with tracked connections, a
    finished run and the bucket keyed as that release keyed it (``client:<client id>``)."""
    engine = make_engine(db_url)
    old_connections = sa.table("connections", sa.column("id"), sa.column("status"), sa.column("tracked", sa.Boolean),
                               sa.column("tracked_at", UtcDateTime()))
    old_runs = sa.table("sync_runs", sa.column("trigger"), sa.column("started_at", UtcDateTime()),
                        sa.column("finished_at", UtcDateTime()), sa.column("status"))
    old_budgets = sa.table("rate_budgets", sa.column("key"), sa.column("capacity"), sa.column("per_second"),
                           sa.column("tokens"), sa.column("updated_at", UtcDateTime()))
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0009")
            conn.execute(sa.insert(old_connections), [
                {"id": cid, "status": "pending", "tracked": True, "tracked_at": OLD_CONNECTION_AT}
                for cid in connection_ids])
            conn.execute(sa.insert(old_runs).values(trigger="sync", started_at=OLD_CONNECTION_AT, status="succeeded",
                                                    finished_at=OLD_CONNECTION_AT + dt.timedelta(seconds=5)))
            conn.execute(sa.insert(old_budgets).values(key="client:some-id", capacity=120, per_second=2 / 60,
                                                       tokens=100, updated_at=OLD_CONNECTION_AT))
        assert current_revision(engine) == "0009"
    finally:
        engine.dispose()


def old_job(db_url: str, api: dict[str, str], fake: FakeApi) -> Any:
    """The job as the previous release ran it: one application, its credentials in SMARTCAR_CLIENT_ID/SECRET."""
    env = {"SMARTCAR_ETL_CONFIG": "", "SMARTCAR_ETL_DATABASE_URL": db_url, "SMARTCAR_API_BASE_URL": api["base_url"],
           "SMARTCAR_TOKEN_URL": api["token_url"], "SMARTCAR_CLIENT_ID": fake.client_id,
           "SMARTCAR_CLIENT_SECRET": fake.client_secret}

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)

    return run


def test_a_database_of_the_previous_release_upgrades_in_place_to_the_default_application(
        db_url: str, fake_api: FakeApi, api_server: dict[str, str]) -> None:
    ids = fake_api.populate(2, seed=4)
    database_of_the_previous_release(db_url, ids)
    upgraded = old_job(db_url, api_server, fake_api)("db", "upgrade")
    assert upgraded.exit_code == 0 and "upgraded from 0009 to " + head_revision() in upgraded.stdout
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            apps_of_runs = list(conn.scalars(select(sync_runs.c.application)))
            budgets = list(conn.scalars(select(rate_budgets.c.key)))
        assert stored(engine) == dict.fromkeys(ids, "default")
        assert (apps_of_runs, budgets) == (["default"], ["default"])
    finally:
        engine.dispose()


def test_after_the_upgrade_the_commands_work_without_application_as_before(
        db_url: str, fake_api: FakeApi, api_server: dict[str, str]) -> None:
    ids = fake_api.populate(2, seed=4)
    database_of_the_previous_release(db_url, ids)
    run = old_job(db_url, api_server, fake_api)
    assert run("db", "upgrade").exit_code == 0
    synced = run("sync", "--format", "json")
    assert synced.exit_code == 0, synced.output
    outcome = json.loads(synced.stdout)
    assert (outcome["application"], outcome["status"], outcome["fetched"]) == ("default", "succeeded", 2)
    listed = run("connections", "list", "--format", "json")
    assert listed.exit_code == 0
    assert {(r["connection_id"], r["application"], r["status"]) for r in json.loads(listed.stdout)} == {
        (cid, "default", "active") for cid in ids}
    status = run("status", "--format", "json")
    assert status.exit_code == 0
    report = json.loads(status.stdout)
    assert "applications" not in report and report["unconfigured"] == []
    assert (report["application"], report["budget"]["key"], report["connections"]["active"]) == ("default",
                                                                                                 "default", 2)
    assert [r["status"] for r in report["runs"]] == ["succeeded", "succeeded"]  # the old run and this one
    permissions = run("report", "permissions", "--as-of", "now", "--format", "json")
    assert permissions.exit_code == 0
    held = {(r["connection_id"], r["permission"]) for r in json.loads(permissions.stdout)}
    assert held == {(cid, p) for cid in ids for p in fake_api.connections[cid].permissions}
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            assert list(conn.scalars(select(rate_budgets.c.key))) == ["default"]  # the old bucket, not a new one
    finally:
        engine.dispose()
    assert not any("does not name" in r.stderr for r in (synced, listed, status, permissions))


# -- configuration ---------------------------------------------------------------------------------------------------

ONE, TWO = ("app-1", "cid-1", "SECRET_ONE"), ("app-2", "cid-2", "SECRET_TWO")
SECRETS = {"SECRET_ONE": "s3cr3t-value-of-app-one", "SECRET_TWO": "s3cr3t-value-of-app-two"}


def config_text(*entries: tuple[str, str, str]) -> str:
    """An ``applications`` list of (name, client id, the variable holding its secret)."""
    lines = ["applications:"]
    for name, client_id, variable in entries:
        lines += [f"  - name: {name}", f"    client_id: {client_id}", f"    client_secret_variable: {variable}"]
    return "\n".join(lines) + "\n"


def run_with(tmp_path: Path, text: str, **env: str) -> Result:
    """``connections list`` with this config file and environment (and a database that does not exist)."""
    path = tmp_path / "etl.yaml"
    path.write_text(text)
    return CliRunner().invoke(cli, ["connections", "list"], env={
        "SMARTCAR_ETL_CONFIG": str(path), "SMARTCAR_ETL_DATABASE_URL": f"sqlite:///{tmp_path}/etl.db", **env})


def test_an_applications_list_beside_smartcar_client_id_is_exit_2_naming_both(tmp_path: Path) -> None:
    result = run_with(tmp_path, config_text(ONE, TWO), **SECRETS, SMARTCAR_CLIENT_ID="the-old-client-id")
    assert result.exit_code == 2
    assert "applications and SMARTCAR_CLIENT_ID are both set" in result.stderr
    assert not (tmp_path / "etl.db").exists()  # refused before the database is touched


@pytest.mark.parametrize(("second", "said"), [
    (("app-1", "cid-2", "SECRET_TWO"), "applications: name 'app-1' is given to more than one application"),
    (("app-2", "cid-1", "SECRET_TWO"), "applications: client_id 'cid-1' is given to more than one application"),
    (("EU_West", "cid-2", "SECRET_TWO"), "applications[1].name: expected lower-case letters"),
    (("a" * 41, "cid-2", "SECRET_TWO"), "applications[1].name: expected lower-case letters"),
], ids=["duplicate-name", "duplicate-client-id", "EU_West", "41-characters"])
def test_a_bad_applications_list_is_exit_2_naming_the_key(tmp_path: Path, second: tuple[str, str, str],
                                                           said: str) -> None:
    result = run_with(tmp_path, config_text(ONE, second), **SECRETS)
    assert result.exit_code == 2
    assert said in result.stderr


def test_a_name_of_40_characters_is_one(tmp_path: Path) -> None:
    path = tmp_path / "etl.yaml"
    path.write_text(config_text(("a" * 40, "cid-1", "SECRET_ONE")))
    assert load_config(str(path), env=SECRETS).application_names() == ["a" * 40]


def test_a_variable_creates_an_entry_with_its_credentials_and_bucket(tmp_path: Path) -> None:
    path = tmp_path / "etl.yaml"
    path.write_text(config_text(ONE))
    prefix = "SMARTCAR_ETL_APPLICATIONS_EU_WEST_"
    config = load_config(str(path), env={**SECRETS, prefix + "CLIENT_ID": "cid-eu",
                                         prefix + "CLIENT_SECRET_VARIABLE": "SECRET_TWO",
                                         prefix + "RATE_LIMIT_CAPACITY": "7", prefix + "RATE_LIMIT_PER_MINUTE": "30"})
    assert config.application_names() == ["app-1", "eu-west"]
    eu = config.for_application("eu-west")
    assert (eu.api.application, eu.api.client_id, eu.rate_limit.capacity, eu.rate_limit.per_minute) == (
        "eu-west", "cid-eu", 7, 30)
    assert eu.api.client_secret is not None and eu.api.client_secret.get() == SECRETS["SECRET_TWO"]
    one = config.for_application("app-1").api
    assert one.client_secret is not None and one.client_secret.get() == SECRETS["SECRET_ONE"]


def test_an_unset_client_secret_variable_is_exit_2_naming_the_key_without_a_secret(tmp_path: Path) -> None:
    result = run_with(tmp_path, config_text(ONE, TWO), SECRET_ONE=SECRETS["SECRET_ONE"])
    assert result.exit_code == 2
    assert "applications[1].client_secret_variable: the environment variable it names is not set" in result.stderr
    assert SECRETS["SECRET_ONE"] not in result.output + result.stderr


def test_a_secret_put_where_a_variable_name_goes_is_never_echoed(tmp_path: Path) -> None:
    for pasted in ("9f3b2c1d-aaaa-bbbb-cccc-ddddeeeeffff", "s3cr3tWithoutHyphens"):  # not a name; a name but unset
        result = run_with(tmp_path, config_text(ONE, ("app-2", "cid-2", pasted)), SECRET_ONE=SECRETS["SECRET_ONE"])
        assert result.exit_code == 2 and "applications[1].client_secret_variable" in result.stderr, pasted
        assert pasted not in result.output + result.stderr, pasted


# -- commands that name applications -----------------------------------------------------------------------------

A_NEW_ID = "32c4139a-e4aa-4c6c-b357-3ae9022dbf1b"


def test_connections_add_with_several_applications_needs_one_named(job: Job, engine: Engine) -> None:
    before = stored(engine)
    result = job("connections", "add", A_NEW_ID)
    assert result.exit_code == 2
    assert "connections add works on one application: name it with --application" in result.stderr
    assert "configured: app-1, app-2, app-3" in result.stderr
    assert stored(engine) == before


def test_importing_an_id_of_another_application_is_exit_2_naming_both_and_stores_nothing(
        job: Job, engine: Engine, ids: dict[str, list[str]]) -> None:
    before = stored(engine)
    theirs = ids["app-1"][0]
    result = job("connections", "import", "--application", "app-2", "-", input=f"{A_NEW_ID}\n{theirs}\n")
    assert result.exit_code == 2
    assert f"belong to another application than app-2: {theirs} (application app-1)" in result.stderr
    assert stored(engine) == before  # the new id neither


def test_connections_move_gives_a_misfiled_connection_to_its_application(
        job: Job, engine: Engine, apps: FakeApplications) -> None:
    misfiled = apps.fakes["app-2"].add().id
    job.ok("connections", "add", "--application", "app-1", misfiled)
    assert job("connections", "add", "--application", "app-2", misfiled).exit_code == 2  # app-1's, it says
    assert job.ok("connections", "move", misfiled, "--application", "app-2").stdout == "1 moved to app-2\n"
    assert stored(engine)[misfiled] == "app-2"
    assert job.ok("connections", "add", "--application", "app-2", misfiled).stdout.startswith("0 added, 0 tracked "
                                                                                             "again, 1 already")
    synced = job.json("sync")
    assert synced["exit_code"] == 0 and apps.foreign_requests == []
    assert apps.fakes["app-2"].count("GET", f"/v3/connections/{misfiled}") == 1


def test_applications_list_shows_an_application_the_config_dropped_and_commands_warn_of_it(
        job: Job, ids: dict[str, list[str]]) -> None:
    job.configure({"app-1": "app-1", "app-2": "app-2"})
    listed = job.json("applications", "list")
    assert listed == [{"application": "app-1", "configured": True, "connections": 4},
                      {"application": "app-2", "configured": True, "connections": 4},
                      {"application": "app-3", "configured": False, "connections": 4}]
    warning = "the database holds 4 connection(s) of application app-3, which the configuration does not name"
    for args in (("connections", "list"), ("status",), ("report", "fleet"), ("sync",)):
        result = job.ok(*args)
        assert warning in result.stderr, args
    assert {o["application"] for o in job.json("sync")["applications"]} == {"app-1", "app-2"}


def test_applications_rename_moves_its_rows(job: Job, engine: Engine, ids: dict[str, list[str]],
                                            apps: FakeApplications) -> None:
    job.ok("sync")
    job.configure({"app-1": "app-1", "app-2": "app-2", "eu-west": "app-3"})  # app-3 renamed in the configuration
    said = job.ok("applications", "rename", "app-3", "eu-west")
    assert said.stdout == "4 connection(s) of app-3 now belong to eu-west\n"
    assert stored(engine) == owners({"app-1": ids["app-1"], "app-2": ids["app-2"], "eu-west": ids["app-3"]})
    assert [r.application for r in runs_of(engine)] == ["app-1", "app-2", "eu-west"]
    with engine.connect() as conn:
        assert set(conn.scalars(select(rate_budgets.c.key))) == {"app-1", "app-2", "eu-west"}
    after = job("sync", "--all", "--application", "eu-west")
    assert after.exit_code == 0 and "does not name" not in after.stderr
    assert apps.foreign_requests == [] and apps.fakes["app-3"].count("GET", "/v3/connections/") == 8


def test_applications_rename_to_its_own_name_is_exit_2_and_changes_nothing(job: Job, engine: Engine) -> None:
    before = stored(engine)
    result = job("applications", "rename", "app-1", "app-1")
    assert result.exit_code == 2 and "app-1 is its name already" in result.stderr
    assert stored(engine) == before


def test_reports_filter_by_application(job: Job, ids: dict[str, list[str]], apps: FakeApplications) -> None:
    job.ok("sync")
    held = job.json("report", "permissions", "--as-of", "now", "--application", "app-2")
    assert held and {(r["application"], r["connection_id"]) for r in held} <= {("app-2", cid) for cid in ids["app-2"]}
    assert {(r["connection_id"], r["permission"]) for r in held} == {
        (cid, p) for cid in ids["app-2"] for p in apps.fakes["app-2"].connections[cid].permissions}
    every = job.json("report", "permissions", "--as-of", "now")
    assert {r["application"] for r in every} == set(NAMES)
    fleet = job.json("report", "fleet", "--application", "app-1", "--application", "app-3")
    assert {r["application"] for r in fleet} == {"app-1", "app-3"} and sum(r["connections"] for r in fleet) == 8
    changes = job.json("report", "changes", "--since", "-1d", "--application", "app-3")
    assert changes and {r["connection_id"] for r in changes} == set(ids["app-3"])


def test_status_json_with_several_applications_has_each_and_the_unconfigured(job: Job) -> None:
    job.ok("sync")
    report = job.json("status")
    assert set(report) == {"applications", "unconfigured"} and report["unconfigured"] == []
    assert [(r["application"], r["connections"]["active"], r["budget"]["key"], len(r["runs"]))
            for r in report["applications"]] == [(name, 4, name, 1) for name in NAMES]
    job.configure({"app-1": "app-1"})
    single = job.json("status")
    assert (single["application"], single["unconfigured"]) == ("app-1", ["app-2", "app-3"])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_one_max_duration_covers_every_application_of_a_sync(job: Job, apps: FakeApplications) -> None:
    for fake in apps.fakes.values():
        fake.latency = 0.4  # 12 connections at concurrency 4: well over the pass's 1 s, well under 15 minutes
    outcome = json.loads(job("sync", "--max-duration", "1s", "--format", "json").stdout)
    fetched = sum(a["fetched"] or 0 for a in outcome["applications"])
    assert outcome["exit_code"] == 0 and fetched < 12, outcome  # the rest stays due for the next pass
    assert any(a["deferred"] or a["status"] == "skipped" for a in outcome["applications"]), outcome


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_read_names_an_application_that_is_neither_configured_nor_stored(job: Job) -> None:
    for args in (["report", "fleet"], ["connections", "list"], ["report", "changes", "--since", "-1d"]):
        result = job(*args, "--application", "app-9")
        assert result.exit_code == 2 and "app-9" in result.output and "app-1, app-2, app-3" in result.output, args
    assert job("report", "fleet", "--application", "app-2").exit_code == 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_slow_application_cannot_starve_those_after_it(job: Job, apps: FakeApplications) -> None:
    slow = apps.fakes["app-1"]
    job.ok("connections", "import", "--application", "app-1", "-",
           input="\n".join(slow.populate(36, seed=99)) + "\n")
    slow.latency = 0.3  # 40 connections at concurrency 4: 3 s of work, the whole of the pass's time
    outcome = json.loads(job("sync", "--max-duration", "3s", "--format", "json").stdout)
    by_name = {a["application"]: a for a in outcome["applications"]}
    assert (by_name["app-1"]["deferred"] or 0) > 0, by_name  # its share ran out
    assert by_name["app-2"]["fetched"] == by_name["app-3"]["fetched"] == 4, by_name  # the others had theirs


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_applications_rename_refuses_to_merge_a_configured_application_or_a_missing_one(job: Job,
                                                                                        engine: Engine) -> None:
    before = stored(engine)
    merged = job("applications", "rename", "app-1", "app-2")  # both live: app-2's token would 404 app-1's
    assert merged.exit_code == 2 and "app-1 is still configured" in merged.stderr
    missing = job("applications", "rename", "app-9", "app-2")
    assert missing.exit_code == 2 and "holds no connection of app-9" in missing.stderr
    assert stored(engine) == before


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_listing_leaves_alone_a_connection_tracked_under_another_application(
        job: Job, engine: Engine, ids: dict[str, list[str]], apps: FakeApplications) -> None:
    misfiled = ids["app-2"][0]
    job.ok("connections", "move", misfiled, "--application", "app-1")  # tracked under the wrong application
    result = job("sync", "--application", "app-2", "--strategy", "list")
    assert result.exit_code == 0, result.output
    assert "1 listed connection(s) of app-2 are tracked under another application" in result.stderr
    with engine.connect() as conn:
        row = conn.execute(select(connections).where(connections.c.id == misfiled)).one()
    assert (row.application, row.status, row.last_success_at) == ("app-1", "pending", None)  # untouched
    assert apps.foreign_requests == []


def test_a_listing_stores_the_connections_it_finds_as_its_applications_even_a_malformed_one(
        run_sync: Any, engine: Engine) -> None:
    from dataclasses import replace

    from etl.sync import Seams, sync

    ids = run_sync.fake.populate(3, seed=31)
    run_sync.fake.connections[ids[1]].broken = "bad_permission"  # listed with its id, its document refused
    config = run_sync.config
    config = replace(config, api=replace(config.api, application="eu-west"),
                     sync=replace(config.sync, track_listed=True))
    result = sync(config, Store(engine).scoped("eu-west"), strategy="list", seams=Seams(
        transport=httpx.MockTransport(run_sync.fake.handle), sleep=run_sync.sleeps.append, now=run_sync.clock))
    assert (result.counts.fetched, result.counts.failed) == (2, 1)
    assert stored(engine) == dict.fromkeys(ids, "eu-west")  # the refused one too, as a pending row
    with engine.connect() as conn:
        assert conn.scalar(select(connections.c.status).where(connections.c.id == ids[1])) == "pending"
