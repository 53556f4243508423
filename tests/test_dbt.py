"""The dbt project in dbt/: its sources' tests and freshness pass on a PostgreSQL database the real sync
built, its permission_intervals model has a row per grant, and a broken invariant fails its test.

dbt-postgres lives in a virtualenv of its own, ``.venv-dbt`` (``bash scripts/dbt.sh`` builds it); without
it these tests skip, unless ETL_REQUIRE_DBT=1 (as in ``.ci/run``), which makes that a failure. dbt runs
with its profile, target and logs in the test's tmp_path and its working directory there: nothing is
written inside the repository.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.engine import make_url

from etl.context import Seams
from etl.db.engine import make_engine
from etl.db.models import Base, permission_grants
from etl.db.store import Store
from etl.fakeapi import PERMISSIONS, FakeApi
from etl.sync import sync
from etl.tracking import track
from tests.conftest import Clock, make_config

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "dbt"
DBT = ROOT / ".venv-dbt" / "bin" / "dbt"
SCHEMA = "analytics"  # where dbt builds the model: beside the job's tables (public), not among them
ONE_OPEN_GRANT = "smartcar_etl_one_open_grant_per_connection_and_permission"


def project_yaml(name: str) -> Any:
    return yaml.safe_load((PROJECT / name).read_text())


def sources() -> dict[str, Any]:
    """The source tables and views of dbt/models/sources.yml, by name."""
    [source] = project_yaml("models/sources.yml")["sources"]
    return {table["name"]: table for table in source["tables"]}


def declared_tests() -> int:
    """How many tests dbt should run: each generic test in the YAML (on a table, view or model and on
    their columns), and each singular test in dbt/tests."""
    nodes = [*sources().values(), *project_yaml("models/schema.yml")["models"]]
    generic = sum(len(node.get("data_tests", [])) + sum(len(c.get("data_tests", [])) for c in node["columns"])
                  for node in nodes)
    return generic + len(list((PROJECT / "tests").glob("*.sql")))


# -- without dbt: the sources describe what the migrations make ----------------------------------------------

@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_sources_are_every_table_and_view_with_every_column(engine: Engine) -> None:
    """Every table and view the migrations create is a source, described; so is each column of a table, and
    each column described of a view exists."""
    database = inspect(engine)
    tables = set(database.get_table_names()) - {"alembic_version"}
    views = set(database.get_view_names())
    assert tables == set(Base.metadata.tables) and len(views) >= 4
    declared = sources()
    assert set(declared) == tables | views
    for name, table in declared.items():
        described = [column["name"] for column in table["columns"]]
        actual = [column["name"] for column in database.get_columns(name)]
        assert len(set(described)) == len(described) and set(described) <= set(actual), name
        assert name in views or set(described) == set(actual), name
        assert table.get("description") and all(column.get("description") for column in table["columns"]), name


# -- with dbt, on PostgreSQL ----------------------------------------------------------------------------------

@pytest.fixture
def dbt() -> Path:
    """The dbt of ``.venv-dbt``; skip without it, fail where it is required."""
    if not DBT.is_file():
        problem = f"{DBT.relative_to(ROOT)} is missing (bash scripts/dbt.sh builds it)"
        if os.environ.get("ETL_REQUIRE_DBT") == "1":
            pytest.fail(f"ETL_REQUIRE_DBT=1 but {problem}")
        pytest.skip(problem)
    return DBT


@pytest.fixture
def synced(db_url: str) -> Iterator[Engine]:
    """An engine on the test's own PostgreSQL database, migrated and holding a synced world (``build_world``)."""
    engine = make_engine(db_url)
    try:
        build_world(engine)
        yield engine
    finally:
        engine.dispose()


def build_world(engine: Engine) -> None:
    """Migrate the database and sync a small fake world into it over three passes ending about now: first
    fetches, a permission granted and one revoked, a connection deleted, one malformed (a fetch error), a
    listing pass (its place kept in ``backfills``), and a daemon's claimed firing: every table has rows."""
    store = Store(engine)
    store.upgrade()
    fake = FakeApi(client_id="test-client", client_secret="test-client-secret")
    ids = fake.populate(8, seed=11)
    clock = Clock(start=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    track(store, ids, now=clock)
    config = make_config(fake, engine.url.render_as_string(hide_password=False))
    seams = Seams(transport=httpx.MockTransport(fake.handle), sleep=lambda _: None, now=clock)

    def one_pass(**options: Any) -> str:
        clock.advance(minutes=15)
        return sync(config, Store(engine), seams=seams, ignore_due=True, **options).status

    assert one_pass() == "succeeded"
    changed = fake.connections[ids[0]]
    fake.set_permissions(changed.id, [*changed.permissions[1:], next(p for p in PERMISSIONS
                                                                     if p not in changed.permissions)])
    fake.remove(ids[1])
    fake.connections[ids[2]].broken = "no_user"
    assert one_pass() == "partial"
    assert one_pass(strategy="list") == "partial"
    assert store.claim_firing(clock(), claimer="test", at=clock())
    with engine.connect() as conn:
        empty = [t.name for t in Base.metadata.sorted_tables if not conn.scalar(select(func.count()).select_from(t))]
        assert empty == []
        changes = dict(conn.execute(text("SELECT status, count(*) FROM connections GROUP BY status")).all())
        assert changes == {"active": 7, "deleted": 1}


def profile(tmp_path: Path, url: str) -> Path:
    """A profiles.yml for dbt-postgres on the database at ``url``, in a folder of its own."""
    parsed = make_url(url)
    folder = tmp_path / "profiles"
    folder.mkdir()
    target = {"type": "postgres", "host": parsed.host, "port": parsed.port or 5432, "user": parsed.username,
              "password": parsed.password or "", "dbname": parsed.database, "schema": SCHEMA, "threads": 2}
    (folder / "profiles.yml").write_text(yaml.safe_dump({"smartcar_etl": {"target": "test", "outputs": {
        "test": target}}}))
    return folder


def run_dbt(dbt: Path, tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """dbt on this project against the database at ``url``, in tmp_path and writing only there."""
    profiles = tmp_path / "profiles"
    if not profiles.exists():
        profile(tmp_path, url)
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DBT_USE_COLORS": "false"}
    return subprocess.run(
        [str(dbt), *args, "--project-dir", str(PROJECT), "--profiles-dir", str(profiles),
         "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def results(tmp_path: Path, artifact: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, name, result) of each node in a dbt artifact of the target folder: kind is test, model or source;
    the name is the node's (a generic test's unique_id ends in a hash of its arguments, left out here)."""
    found = []
    for result in json.loads((tmp_path / "target" / artifact).read_text())["results"]:
        kind, _package, *rest = result["unique_id"].split(".")
        found.append((kind, rest[-1] if kind == "source" else rest[0], result))
    return found


def repository_files() -> tuple[set[str], str]:
    """Every file under dbt/ (ignored ones too), and what ``git status`` says of the checkout."""
    files = {str(p.relative_to(PROJECT)) for p in PROJECT.rglob("*")}
    git = shutil.which("git")
    status = subprocess.run([git, "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60).stdout if git and (ROOT / ".git").exists() else ""
    return files, status


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_dbt_builds_and_every_test_and_freshness_passes(dbt: Path, synced: Engine, tmp_path: Path) -> None:
    url = synced.url.render_as_string(hide_password=False)
    before = repository_files()
    built = run_dbt(dbt, tmp_path, url, "build")
    assert built.returncode == 0, built.stdout[-4000:]
    fresh = run_dbt(dbt, tmp_path, url, "source", "freshness")
    assert fresh.returncode == 0, fresh.stdout[-4000:]
    assert repository_files() == before  # target, logs and profile all went to tmp_path

    ran = results(tmp_path, "run_results.json")
    tests = {name: result["status"] for kind, name, result in ran if kind == "test"}
    assert len(tests) == len([kind for kind, _, _ in ran if kind == "test"]) == declared_tests() > 80
    assert set(tests.values()) == {"pass"}
    assert [(name, result["status"]) for kind, name, result in ran if kind == "model"] == [
        ("permission_intervals", "success")]
    assert {ONE_OPEN_GRANT, "smartcar_etl_no_open_grant_on_a_deleted_connection"} <= set(tests)
    assert "Deprecat" not in built.stdout, built.stdout

    with synced.connect() as conn:
        grants = conn.scalar(select(func.count()).select_from(permission_grants))
        open_grants = conn.scalar(select(func.count()).select_from(permission_grants)
                                  .where(permission_grants.c.valid_to.is_(None)))
        intervals = conn.execute(text(f"SELECT count(*), count(*) FILTER (WHERE is_open) "
                                      f"FROM {SCHEMA}.permission_intervals")).one()
    assert tuple(intervals) == (grants, open_grants) and 0 < open_grants < grants

    checked = {name: result for _, name, result in results(tmp_path, "sources.json")}
    assert {name: result["status"] for name, result in checked.items()} == {
        "connections": "pass", "sync_runs": "pass", "permission_changes": "pass"}
    hours = project_yaml("dbt_project.yml")["vars"]
    criteria = {name: result["criteria"] for name, result in checked.items()}
    assert criteria["sync_runs"]["warn_after"]["count"] == hours["smartcar_etl_runs_warn_hours"]
    assert criteria["connections"]["error_after"]["count"] == hours["smartcar_etl_connections_error_hours"]
    assert criteria["permission_changes"]["error_after"]["count"] is None  # a quiet fleet only warns


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_dbt_fails_the_test_of_an_invariant_the_data_breaks(dbt: Path, synced: Engine, tmp_path: Path) -> None:
    """Without the partial unique index and the CHECK on sync_runs.status, this test's own database takes a
    second open grant and an unknown status: the tests of those two fail, a test of sync_runs.trigger passes."""
    with synced.begin() as conn:
        conn.execute(text("DROP INDEX uq_permission_grants_open"))
        conn.execute(text("ALTER TABLE sync_runs DROP CONSTRAINT ck_sync_runs_status"))
        conn.execute(text("INSERT INTO permission_grants (connection_id, permission, valid_from) "
                          "SELECT connection_id, permission, valid_from + interval '1 second' "
                          "FROM permission_grants WHERE valid_to IS NULL ORDER BY connection_id, permission LIMIT 1"))
        conn.execute(text("UPDATE sync_runs SET status = 'paused' WHERE id = 1"))
    url = synced.url.render_as_string(hide_password=False)
    built = run_dbt(dbt, tmp_path, url, "build", "--select", ONE_OPEN_GRANT,
                    "source:smartcar_etl.sync_runs,test_name:accepted_values")
    assert built.returncode == 1, built.stdout[-4000:]
    ran = {name: result["status"] for _, name, result in results(tmp_path, "run_results.json")}
    status = "source_accepted_values_smartcar_etl_sync_runs_status__running__succeeded__partial__failed__aborted"
    trigger = "source_accepted_values_smartcar_etl_sync_runs_trigger__sync__daemon__backfill__demo"
    assert ran == {ONE_OPEN_GRANT: "fail", status: "fail", trigger: "pass"}
    assert f"Failure in test {ONE_OPEN_GRANT}" in built.stdout and f"Failure in test {status}" in built.stdout
