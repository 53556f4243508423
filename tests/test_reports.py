"""Views, point-in-time queries, reports, `check` and the SQL cookbook (docs/), on all three databases."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from etl.api.documents import ConnectionRecord, VehicleAttributes
from etl.check import check_history
from etl.cli import cli
from etl.db.batch import store_batch
from etl.db.dialects import dialect_for
from etl.db.store import Store
from etl.outcomes import Failed, Fetched, Gone, Outcome
from etl.reports import changes_between, fleet, permissions_at
from etl.tracking import track
from tests.conftest import T0, Runner, max_examples

ROOT = Path(__file__).resolve().parent.parent
# The cookbook's SQL: docs/reports.md, with a query or two beside their topic (docs/databases.md, docs/archive.md).
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The reserved word, quoted as each database wants it (MariaDB reads "change" as a string).
CHANGE = {"sqlite": '"change"', "postgresql": '"change"', "mariadb": "`change`"}
UTC = dt.UTC


def when(day: int, hour: int = 10) -> dt.datetime:
    return dt.datetime(2026, 2, 20, hour, tzinfo=UTC) + dt.timedelta(days=day)


@dataclass
class History:
    """A small application whose history the real sync recorded, pass by pass."""

    c: dict[str, str]  # name -> connection id
    u: dict[str, str]
    v: dict[str, str]


@pytest.fixture
def history(run_sync: Runner, engine: Engine) -> History:
    """Five connections and five passes between 20 February and 10 March 2026.

    u1 has v1 (Tesla Model 3, BEV) and v2 (Ford F-150, ICE); u2 has v3 (Tesla Model 3, BEV);
    u3 has v4 (Toyota Prius, HEV); u4 has v5 (BMW i3, BEV, simulated).
    """
    fake = run_sync.fake
    ids = {name: str(uuid.UUID(int=i + 1, version=4)) for i, name in enumerate(
        ["c1", "c2", "c3", "c4", "c5", "u1", "u2", "u3", "u4", "v1", "v2", "v3", "v4", "v5"])}

    def vehicle(make: str, model: str, powertrain: str, mode: str = "live") -> dict[str, Any]:
        return {"make": make, "model": model, "year": 2024, "mode": mode, "powertrainType": powertrain}

    for conn, user, veh, perms, attrs in [
        ("c1", "u1", "v1", ["read_location", "read_odometer"], vehicle("Tesla", "Model 3", "BEV")),
        ("c2", "u1", "v2", ["read_odometer"], vehicle("Ford", "F-150", "ICE")),
        ("c3", "u2", "v3", ["read_location", "read_battery"], vehicle("Tesla", "Model 3", "BEV")),
        ("c4", "u3", "v4", ["read_location"], vehicle("Toyota", "Prius", "HEV")),
        ("c5", "u4", "v5", ["read_vin"], vehicle("BMW", "i3", "BEV", "simulated")),
    ]:
        fake.add(connection_id=ids[conn], user_id=ids[user], vehicle_id=ids[veh], permissions=perms, vehicle=attrs)
    track(Store(engine), [ids[f"c{i}"] for i in range(1, 6)], now=lambda: when(-1))

    def sync_at(at: dt.datetime) -> None:
        run_sync.clock.now = at
        run_sync(advance=dt.timedelta(0), ignore_due=True)

    sync_at(when(0))                                      # 20 Feb: everything granted
    fake.set_permissions(ids["c4"], [])                   # u3 revokes read_location
    sync_at(when(7))                                      # 27 Feb
    fake.set_permissions(ids["c3"], ["read_battery"])     # u2 revokes read_location
    fake.set_permissions(ids["c2"], ["read_odometer", "read_location"])  # u1 grants it on v2
    sync_at(when(11))                                     # 3 Mar
    fake.remove(ids["c5"])                                # u4 disconnects
    sync_at(when(13))                                     # 5 Mar
    fake.set_permissions(ids["c1"], ["read_location"])    # u1 revokes read_odometer on v1
    sync_at(when(18))                                     # 10 Mar
    return History(c={k: ids[k] for k in ids if k[0] == "c"}, u={k: ids[k] for k in ids if k[0] == "u"},
                   v={k: ids[k] for k in ids if k[0] == "v"})


def database(engine: Engine) -> str:
    """The cookbook's name for the engine's database (``mysql://`` URLs are MariaDB too)."""
    return dialect_for(engine).name


def cookbook(name: str) -> dict[str, str]:
    """The cookbook queries in the README and docs/ for this database, by name; each name at most once."""
    queries: dict[str, str] = {}
    text = "\n".join(page.read_text(encoding="utf-8") for page in DOCS)
    for block in re.findall(r"```sql\n(.*?)```", text, re.DOTALL):
        match = re.match(r"-- cookbook: (\w+)(?: \(([\w, ]+)\))?\n", block)
        assert match, f"a documented sql block without a cookbook name: {block[:60]}"
        query, only = match.groups()
        if only is None or name in only.split(", "):
            assert query not in queries, f"two variants of {query} for {name}"
            queries[query] = block
    return queries


def run_query(engine: Engine, query: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(query.strip().rstrip(";")))]


def test_every_cookbook_query_answers_its_question(history: History, engine: Engine) -> None:
    c, u, v = history.c, history.u, history.v
    queries = cookbook(database(engine))
    assert len(queries) == 11
    results = {name: run_query(engine, query) for name, query in queries.items()}
    assert [r[0] for r in results["unknown_on_date"]] == [c[f"c{i}"] for i in range(1, 6)]  # created 1 January
    assert results["disconnected"] == [(c["c5"], u["u4"])]

    assert [(r[0], r[1], r[2]) for r in results["locate_on_date"]] == [
        (c["c1"], v["v1"], "Tesla"), (c["c3"], v["v3"], "Tesla")]
    [revoked] = results["revoked_last_week"]
    assert (revoked[0], revoked[1], revoked[2]) == (u["u2"], c["c3"], "Tesla")
    assert str(revoked[4]).startswith("2026-03-03 10:00") and str(revoked[5]).startswith("2026-02-27 10:00")
    [(closed, avg_days, still_held)] = results["keep_location"]
    assert (closed, float(avg_days), still_held) == (2, 9.0, 2)  # 7 days (u3) and 11 days (u2); c1, c2 hold it
    assert results["per_make_powertrain"] == [("Tesla", "BEV", 2), ("Ford", "ICE", 1), ("Toyota", "HEV", 1)]
    assert results["multi_vehicle_users"] == [(u["u1"], 2)]
    assert [(r[0], r[3]) for r in results["lost_all_permissions"]] == [(v["v4"], "active"), (v["v5"], "deleted")]
    assert results["point_in_time"] == [
        (c["c1"], "read_location"), (c["c1"], "read_odometer"), (c["c2"], "read_odometer"),
        (c["c3"], "read_battery"), (c["c3"], "read_location"), (c["c5"], "read_vin")]
    assert [(r[0], str(r[2])[:10], str(r[3])[:10]) for r in results["document_on_date"]] == [
        (c["c1"], "2026-02-20", "2026-03-05"), (c["c2"], "2026-02-20", "2026-02-27"),
        (c["c3"], "2026-02-20", "2026-02-27"), (c["c4"], "2026-02-27", "2026-03-10"),  # current: seen to the end
        (c["c5"], "2026-02-20", "2026-03-03")]
    assert all(len(r[1]) == 64 for r in results["document_on_date"])
    held = results["held_now"]
    assert {(r[0], r[1], r[3]) for r in held} == {
        (u["u1"], "Tesla", "read_location"), (u["u1"], "Ford", "read_odometer"), (u["u1"], "Ford", "read_location"),
        (u["u2"], "Tesla", "read_battery")}


def test_views_exist_and_agree_with_the_tables(history: History, engine: Engine) -> None:
    overview = {r[0]: r for r in run_query(engine, "SELECT connection_id, status, permission_count, make "
                                                   "FROM connection_overview")}
    assert overview[history.c["c5"]][1:] == ("deleted", 0, "BMW")
    assert overview[history.c["c2"]][1:] == ("active", 2, "Ford")
    log = run_query(engine, f"SELECT {CHANGE[database(engine)]}, permission FROM permission_change_log "
                            f"WHERE connection_id = '{history.c['c5']}' ORDER BY id")
    assert log == [("granted", "read_vin"), ("revoked", "read_vin")]


def test_point_in_time_function(history: History, engine: Engine) -> None:
    c = history.c

    def held(at: dt.datetime) -> set[tuple[str, str]]:
        return {(r["connection_id"], r["permission"]) for r in permissions_at(engine, at) if r["known"]}

    assert held(when(0)) == set()  # the first pass observed a moment after 10:00
    # ... but the five existed (createdAt 1 January): what they held then is unknown, and the report says so
    before = permissions_at(engine, when(0))
    assert [(r["connection_id"], r["permission"], r["known"]) for r in before] == [
        (c[f"c{i}"], None, False) for i in range(1, 6)]
    assert permissions_at(engine, dt.datetime(2025, 12, 31, tzinfo=UTC)) == []  # before createdAt: not listed
    assert all(r["known"] for r in permissions_at(engine, when(1)))
    [revoked] = changes_between(engine, when(6), when(8))
    assert (revoked["connection_id"], revoked["change"]) == (c["c4"], "revoked")
    assert (c["c4"], "read_location") in held(revoked["observed_at"] - dt.timedelta(microseconds=1))
    assert (c["c4"], "read_location") not in held(revoked["observed_at"])  # gone at that very instant
    at_march_1 = permissions_at(engine, dt.datetime(2026, 3, 1, tzinfo=UTC), permission="read_location")
    assert [r["connection_id"] for r in at_march_1] == [c["c1"], c["c3"]]
    assert when(0) < at_march_1[0]["granted_since"] < when(0, 11) and at_march_1[0]["make"] == "Tesla"


def test_changes_and_fleet(history: History, engine: Engine) -> None:
    window = changes_between(engine, when(10), when(14))
    # c2 and c3 change in the same pass, fetched concurrently: their order is the order their answers came in
    assert [r["observed_at"] for r in window] == sorted(r["observed_at"] for r in window)
    assert sorted((r["change"], r["permission"], r["connection_id"]) for r in window) == [
        ("granted", "read_location", history.c["c2"]), ("revoked", "read_location", history.c["c3"]),
        ("revoked", "read_vin", history.c["c5"])]
    assert window[-1]["connection_id"] == history.c["c5"]  # a later pass
    [vin] = changes_between(engine, when(10), when(14), permission="read_vin")
    assert when(11) < vin["previous_observed_at"] < when(11, 11) < when(13) < vin["observed_at"]
    rows = {(r["make"], r["powertrain_type"], r["mode"], r["status"]): r["connections"] for r in fleet(engine)}
    assert rows == {("BMW", "BEV", "simulated", "deleted"): 1, ("Ford", "ICE", "live", "active"): 1,
                    ("Tesla", "BEV", "live", "active"): 2, ("Toyota", "HEV", "live", "active"): 1}


# -- report command, every format -------------------------------------------------------------

def report(engine: Engine, *args: str) -> Any:
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
    return CliRunner().invoke(cli, ["report", *args], env=env)


@pytest.mark.parametrize("args, columns, rows", [
    (["permissions", "--as-of", "2026-03-01", "--permission", "read_location"],
     ["application", "connection_id", "user_id", "vehicle_id", "make", "model", "permission", "granted_since",
      "status", "known"], 2),
    (["changes", "--since", "2026-03-02", "--until", "2026-03-09"],
     ["observed_at", "change", "kind", "permission", "application", "connection_id", "user_id", "vehicle_id",
      "make", "model", "previous_observed_at"], 3),
    (["fleet"], ["application", "make", "powertrain_type", "mode", "status", "connections"], 4),
])
def test_report_formats(history: History, engine: Engine, args: list[str], columns: list[str], rows: int,
                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    as_json = report(engine, *args, "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    parsed = json.loads(as_json.stdout)
    assert len(parsed) == rows and all(list(r) == columns for r in parsed)
    as_csv = report(engine, *args, "--format", "csv").stdout.splitlines()
    assert as_csv[0] == ",".join(columns) and len(as_csv) == rows + 1
    table = report(engine, *args).stdout.splitlines()
    footer = 1 if args[0] == "permissions" else 0  # the coverage line, for people only
    assert table[0].split() == columns and set(table[1]) <= {"-", " "} and len(table) == rows + 2 + footer
    if footer:
        assert table[-1].startswith("history from 2026-02-20T10:00Z; 0 connection(s) existed at that time before")
    assert {r["application"] for r in parsed} == {"default"}
    assert json.loads(report(engine, *args, "--application", "default", "--format", "json").stdout) == parsed
    other = report(engine, *args, "--application", "other", "--format", "json")  # neither configured nor stored
    assert other.exit_code == 2 and "'other' is neither configured nor in the database" in other.output
    if args[0] == "permissions":
        assert {r["connection_id"] for r in parsed} == {history.c["c1"], history.c["c3"]}
        assert parsed[0]["granted_since"].startswith("2026-02-20T10:00:00.")


def test_report_refuses_bad_times(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = report(engine, "permissions", "--as-of", "last tuesday")
    assert result.exit_code == 2 and "'last tuesday' is not an ISO-8601 time" in result.output
    result = report(engine, "changes", "--since", "2026-03-09", "--until", "2026-03-02")
    assert result.exit_code == 2 and "--until must be later than --since" in result.output
    offset = report(engine, "permissions", "--as-of", "2026-03-01T01:00:00+01:00", "--format", "json")
    assert offset.exit_code == 0 and json.loads(offset.stdout) == []


# -- point in time against a replay, on random histories ------------------------------------------

PERMS = ["read_location", "read_odometer", "read_vin"]
step = st.one_of(
    st.tuples(st.just("fetch"), st.lists(st.sampled_from(PERMS), max_size=4)),
    st.tuples(st.just("gone"), st.none()),
    st.tuples(st.just("fail"), st.none()),
)


def test_point_in_time_agrees_with_a_replay(engine: Engine) -> None:
    @settings(max_examples=max_examples(engine, on_sqlite=30), deadline=None)
    @given(histories=st.lists(st.lists(step, min_size=1, max_size=8), min_size=1, max_size=3),
           probes=st.lists(st.integers(min_value=0, max_value=9_000), min_size=1, max_size=6))
    def one_example(histories: list[Any], probes: list[int]) -> None:
        ids = [str(uuid.uuid4()) for _ in histories]
        track(Store(engine), ids, now=lambda: T0)
        observed: dict[str, list[tuple[dt.datetime, frozenset[str]]]] = {i: [] for i in ids}
        from etl.errors import RetriableApiError

        for tick in range(max(len(h) for h in histories)):
            at = T0 + dt.timedelta(seconds=tick + 1)
            batch: list[Outcome] = []
            for cid, history in zip(ids, histories, strict=True):
                if tick < len(history):
                    kind, perms = history[tick]
                    if kind == "fetch":
                        batch.append(Fetched(cid, at, ConnectionRecord(
                            connection_id=cid, user_id=cid, vehicle_id=cid, permissions=frozenset(perms),
                            vehicle=VehicleAttributes())))
                        observed[cid].append((at, frozenset(perms)))
                    elif kind == "gone":
                        batch.append(Gone(cid, at))
                        observed[cid].append((at, frozenset()))
                    else:
                        batch.append(Failed(cid, at, RetriableApiError(path="/", status=500)))
            with engine.begin() as conn:
                store_batch(conn=conn, run_id=None, outcomes=batch)
        for probe_ms in probes:
            instant = T0 + dt.timedelta(milliseconds=probe_ms)
            got = {(r["connection_id"], r["permission"]) for r in permissions_at(engine, instant)
                   if r["connection_id"] in observed}
            replay = set()
            for cid, seen in observed.items():
                before = [perms for at, perms in seen if at <= instant]
                if before:
                    replay |= {(cid, p) for p in before[-1]}
            assert got == replay

    one_example()


# -- check ------------------------------------------------------------------------------------------

def corrupt(engine: Engine, *statements: str) -> list[str]:
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    return check_history(engine).violations


@pytest.mark.corrupts_history
@pytest.mark.parametrize("case", ["two_open", "overlap", "no_granted_change", "no_revoked_change", "deleted_open",
                                  "out_of_order"])
def test_check_names_each_kind_of_corruption(history: History, engine: Engine, case: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_history(engine).ok
    c1, c4, c5 = history.c["c1"], history.c["c4"], history.c["c5"]
    name = database(engine)
    change = CHANGE[name]

    def ts(day: int, hour: int = 10) -> str:
        value = when(day, hour).strftime("%Y-%m-%d %H:%M:%S.%f")
        return f"'{value}+00'" if name == "postgresql" else f"'{value}'"

    grant = "INSERT INTO permission_grants (connection_id, permission, valid_from, valid_to) VALUES"
    drop_open_index = {"mariadb": "ALTER TABLE permission_grants DROP INDEX uq_permission_grants_open"}.get(
        name, "DROP INDEX uq_permission_grants_open")
    statements, rule = {
        "two_open": ([drop_open_index, f"{grant} ('{c1}', 'read_location', {ts(3)}, NULL)"],
                     "more than one open grant"),
        "overlap": ([f"{grant} ('{c4}', 'read_location', {ts(5)}, {ts(9)})"],
                    "overlapping intervals"),
        "no_granted_change": ([f"DELETE FROM permission_changes WHERE connection_id = '{c1}' "
                               f"AND permission = 'read_location' AND {change} = 'granted'"],
                              "interval without its granted change"),
        "no_revoked_change": ([f"DELETE FROM permission_changes WHERE connection_id = '{c4}' AND {change} = 'revoked'"],
                              "interval without its revoked change"),
        "deleted_open": ([f"UPDATE connections SET status = 'deleted' WHERE id = '{c1}'"],
                         "open grant on a deleted connection"),
        "out_of_order": ([f"UPDATE permission_changes SET observed_at = {ts(0, 9)} WHERE connection_id = '{c5}' "
                          f"AND {change} = 'revoked'",
                          f"UPDATE permission_grants SET valid_to = {ts(0, 11)} WHERE connection_id = '{c5}'"],
                         "changes out of order"),
    }[case]
    violations = corrupt(engine, *statements)
    assert any(v.startswith(rule + ":") for v in violations), violations
    monkeypatch.chdir(tmp_path)
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
    result = CliRunner().invoke(cli, ["check"], env=env)
    assert result.exit_code == 1 and rule in result.stdout and "violation(s) found" in result.stderr


def test_check_passes_and_says_what_it_checked(history: History, engine: Engine, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
    result = CliRunner().invoke(cli, ["check"], env=env)
    assert result.exit_code == 0
    assert "history is consistent: 8 grant intervals and 12 changes checked" in result.stdout


def test_demo_database_passes_check(tmp_path: Path) -> None:
    from etl.db.engine import make_engine
    from etl.demo import run_demo

    database = tmp_path / "demo.db"
    run_demo(database=database, connections_count=20, passes=4, out=lambda line: None)
    engine = make_engine(f"sqlite:///{database}")
    try:
        result = check_history(engine)
    finally:
        engine.dispose()
    assert result.ok and result.changes > 40

