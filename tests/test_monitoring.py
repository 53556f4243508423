"""Monitoring: the gauge of permissions held (on SQLite, PostgreSQL and MariaDB, from synced data), and the
Grafana dashboard and Prometheus alert rules in deploy/, held to the metrics the job exports."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select

from etl.context import Seams
from etl.db.models import connections
from etl.db.store import Store
from etl.fakeapi import FakeApi
from etl.metrics import PERMISSION_LABELS, Metrics
from etl.scheduler import Daemon
from tests.conftest import Clock, make_config
from tests.test_operations import tracked_world

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "smartcar-etl.json"
RULES = ROOT / "deploy" / "prometheus" / "smartcar-etl-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "smartcar-etl-rules.test.yml"
GAUGE = "smartcar_etl_connections_with_permission"
METRIC = re.compile(r"smartcar_etl_[a-z_]+")
ALERTS = {"SmartcarEtlMirrorStale", "SmartcarEtlNoSuccessfulPass", "SmartcarEtlRateBudgetExhausted",
          "SmartcarEtlConnectionsFailing", "SmartcarEtlRunsFailing"}
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def daemon(fake: FakeApi, engine: Engine, clock: Clock, metrics: Metrics) -> Daemon:
    """A daemon of application ``default`` on ``engine`` and the fake API, recording into ``metrics``."""
    return Daemon(make_config(fake, "unused"), Store(engine),
                  seams=Seams(metrics=metrics, transport=httpx.MockTransport(fake.handle), now=clock))


def exposition(metrics: Metrics) -> str:
    """The metrics as Prometheus scrapes them."""
    return generate_latest(metrics.registry).decode()


def held(metrics: Metrics, application: str = "default") -> dict[str, float]:
    """The permission gauge of ``application``, parsed back from the exposition text."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition(metrics)):
        for sample in family.samples:
            if sample.name == GAUGE and sample.labels["application"] == application:
                values[sample.labels["permission"]] = sample.value
    return values


def holders_per_permission(fake: FakeApi, ids: list[str] | None = None) -> Counter[str]:
    """What the API says: how many of its live connections (of ``ids``, default all) hold each permission."""
    return Counter(p for conn in fake.connections.values() if ids is None or conn.id in ids
                   for p in set(conn.permissions))


# -- the gauge of permissions held --------------------------------------------------------------------------------

def test_the_permission_gauge_counts_the_active_holders_and_a_permission_given_up_drops_to_0(
        fake_api: FakeApi, engine: Engine, clock: Clock) -> None:
    ids = tracked_world(fake_api, engine, 12)
    metrics = Metrics()
    assert held(metrics) == {}  # nothing known before a pass has read the database
    job = daemon(fake_api, engine, clock, metrics)
    assert job.run_pass() is not None
    first = holders_per_permission(fake_api)
    assert held(metrics) == first and sum(first.values()) > len(ids)

    given_up = first.most_common(1)[0][0]
    for conn in list(fake_api.connections.values()):
        if given_up in conn.permissions:
            fake_api.set_permissions(conn.id, [p for p in conn.permissions if p != given_up] or ["read_odometer"])
    gone = ids[-1]
    fake_api.remove(gone)  # a 404: deleted, its grants closed
    clock.now += dt.timedelta(days=1)  # every connection due again
    assert job.run_pass() is not None
    with engine.connect() as db:
        assert db.scalar(select(connections.c.status).where(connections.c.id == gone)) == "deleted"
    second = holders_per_permission(fake_api)
    assert given_up not in second and gone not in fake_api.connections
    assert held(metrics) == {**second, given_up: 0}


def test_the_permission_gauge_counts_only_its_applications_connections(
        fake_api: FakeApi, engine: Engine, clock: Clock) -> None:
    ids = tracked_world(fake_api, engine, 8)
    metrics = Metrics()
    assert daemon(fake_api, engine, clock, metrics).run_pass() is not None
    moved = ids[:3]
    assert Store(engine).scoped("other").move(moved) == (3, [])
    metrics.of("default").load_permissions(Store(engine).scoped("default"))
    metrics.of("other").load_permissions(Store(engine).scoped("other"))
    assert held(metrics, "other") == holders_per_permission(fake_api, moved)
    expected = holders_per_permission(fake_api, ids[3:])
    expected.update(dict.fromkeys(holders_per_permission(fake_api).keys() - expected.keys(), 0))
    assert held(metrics, "default") == expected


def test_the_permission_gauge_shows_the_most_held_permissions_and_warns_once_of_the_rest(
        fake_api: FakeApi, engine: Engine, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    names = [f"read_extra_{n:03d}" for n in range(PERMISSION_LABELS + 3)]
    store, metrics = Store(engine).scoped("default"), Metrics()
    job = daemon(fake_api, engine, clock, metrics)
    with caplog.at_level(logging.WARNING, logger="etl.metrics"):
        store.track([fake_api.add(permissions=names).id], at=clock())
        assert job.run_pass() is not None
        assert held(metrics) == dict.fromkeys(names[:PERMISSION_LABELS], 1)  # ties by name
        # Two more connections hold the last names: 21 are held by three, 30 by two, the other 52 by one,
        # and three of those, shown before, are pushed out: removed, for their count is no longer known.
        store.track([fake_api.add(permissions=names[-count:]).id for count in (51, 21)], at=clock())
        clock.now += dt.timedelta(days=1)
        assert job.run_pass() is not None
    counts = holders_per_permission(fake_api)
    most = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:PERMISSION_LABELS])
    assert held(metrics) == most and set(counts) - set(most) == {names[49], names[50], names[51]}
    warnings = [r.getMessage() for r in caplog.records if GAUGE in r.getMessage()]
    assert len(warnings) == 1 and f"hold {len(names)} permissions" in warnings[0]
    assert f"the {PERMISSION_LABELS} most held" in warnings[0]
    help_line = next(line for line in exposition(metrics).splitlines() if line.startswith(f"# HELP {GAUGE} "))
    assert f"{PERMISSION_LABELS} most held" in help_line and "rest are left out" in help_line


def test_every_run_status_and_connection_result_is_counted_from_0() -> None:
    """So increase() and rate() (and the alerts on them) see a counter's first count."""
    metrics = Metrics()
    metrics.of("fleet")
    zero = {(s.name, s.labels.get("status") or s.labels["result"]) for family in text_string_to_metric_families(
        exposition(metrics)) for s in family.samples if s.name in ("smartcar_etl_runs_total",
                                                                    "smartcar_etl_connections_total")
        and s.labels["application"] == "fleet" and s.value == 0}
    assert zero == {*(("smartcar_etl_runs_total", s) for s in ("succeeded", "partial", "failed", "aborted")),
                    *(("smartcar_etl_connections_total", r) for r in ("fetched", "changed", "deleted", "failed"))}


# -- the dashboard and the alert rules ------------------------------------------------------------------------------

def dashboard() -> dict[str, Any]:
    value = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(value, dict)
    return value


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"] for rule in group["rules"]]


def expressions() -> dict[str, str]:
    """Every PromQL expression of the dashboard (by panel and target) and of the rules (by alert)."""
    found = {f"panel {p['title']!r} target {t['refId']}": t["expr"]
             for p in dashboard()["panels"] for t in p["targets"]}
    found.update({f"alert {rule['alert']}": rule["expr"] for rule in alert_rules()})
    return found


def exported_after_a_pass(fake: FakeApi, engine: Engine, clock: Clock) -> set[str]:
    """The metric names with a sample in the exposition after a real pass (one fetch fails, one connection is
    gone) and a lock skip."""
    ids = tracked_world(fake, engine, 5)
    fake.fail_next(503, match=ids[0], times=10)
    fake.remove(ids[1])
    metrics = Metrics()
    job = daemon(fake, engine, clock, metrics)
    assert job.run_pass() is not None
    with Store(engine).scoped("default").lock():
        assert job.run_pass() is None  # skipped: the lock is held
    return {line.split("{")[0].split(" ")[0] for line in exposition(metrics).splitlines()
            if line and not line.startswith("#")}


@sqlite_only
def test_every_expression_of_the_dashboard_and_the_rules_names_only_exported_metrics(
        fake_api: FakeApi, engine: Engine, clock: Clock) -> None:
    exported = exported_after_a_pass(fake_api, engine, clock)
    assert {"smartcar_etl_runs_total", "smartcar_etl_lock_skips_total", GAUGE} <= exported
    found = expressions()
    assert len(found) > 15
    named: set[str] = set()
    for where, expr in found.items():
        names = set(METRIC.findall(expr))
        assert names, f"{where} names no metric of the job: {expr}"
        assert names <= exported, f"{where} names {sorted(names - exported)}, which the job does not export"
        named |= names
    series = {METRIC.findall(s["series"])[0] for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for s in t["input_series"]}
    assert series <= exported, f"the rule tests feed {sorted(series - exported)}, which the job does not export"
    expected = {"smartcar_etl_oldest_success_age_seconds", "smartcar_etl_last_success_timestamp_seconds",
                "smartcar_etl_rate_budget_tokens", "smartcar_etl_api_requests_total", "smartcar_etl_runs_total",
                "smartcar_etl_connections_total", GAUGE, "smartcar_etl_lock_skips_total",
                "smartcar_etl_last_run_deletions_held"}
    assert expected <= named, f"nothing shows {sorted(expected - named)}"


def test_the_metric_name_check_finds_a_name_the_job_does_not_export() -> None:
    exported = {"smartcar_etl_runs_total", "smartcar_etl_rate_budget_tokens"}
    assert set(METRIC.findall('sum(rate(smartcar_etl_runs_total{status="failed"}[5m]))')) <= exported
    assert not set(METRIC.findall('smartcar_etl_runs{status="failed"} > 0')) <= exported  # the counter's _total
    assert METRIC.findall("time() - smartcar_etl_last_success_timestamp_seconds > 3600") == [
        "smartcar_etl_last_success_timestamp_seconds"]


def overlaps(a: dict[str, int], b: dict[str, int]) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


def test_the_dashboard_is_a_grafana_dashboard_model() -> None:
    board = dashboard()
    assert isinstance(board["title"], str) and board["title"]
    assert isinstance(board["uid"], str) and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 30
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    application = variables["application"]
    assert application["type"] == "query" and application["datasource"]["uid"] == "${datasource}"
    assert application["query"] == "label_values(smartcar_etl_runs_total, application)"
    panels = board["panels"]
    assert isinstance(panels, list) and len(panels) >= 10
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), ids
    for panel in panels:
        title = panel["title"]
        assert isinstance(panel["type"], str) and isinstance(title, str) and title
        grid = panel["gridPos"]
        assert {k: type(v) for k, v in grid.items()} == dict.fromkeys("xywh", int), title
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, title
        assert panel["datasource"]["uid"] == "${datasource}", title
        targets = panel["targets"]
        assert isinstance(targets, list) and targets, f"{title}: no target"
        assert len({t["refId"] for t in targets}) == len(targets), title
        for target in targets:
            assert isinstance(target["expr"], str) and 'application=~"$application"' in target["expr"], title
    for i, a in enumerate(panels):
        for b in panels[i + 1:]:
            assert not overlaps(a["gridPos"], b["gridPos"]), (a["title"], b["title"])


def test_the_panel_checks_find_an_overlap() -> None:
    assert overlaps({"x": 0, "y": 0, "w": 12, "h": 8}, {"x": 6, "y": 4, "w": 12, "h": 8})
    assert not overlaps({"x": 0, "y": 0, "w": 12, "h": 8}, {"x": 12, "y": 0, "w": 12, "h": 8})


def test_every_alert_has_a_for_a_severity_and_names_the_application() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERTS
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        for key in ("summary", "description"):
            assert "{{ $labels.application }}" in rule["annotations"][key], (rule["alert"], key)
    tested: dict[str, set[bool]] = {name: set() for name in ALERTS}
    for test in yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]:
        for case in test["alert_rule_test"]:
            tested[case["alertname"]].add(bool(case.get("exp_alerts")))
    assert tested == {name: {True, False} for name in ALERTS}, "each alert is tested firing and not firing"


# -- promtool ---------------------------------------------------------------------------------------------------

def promtool() -> str:
    """promtool's path; without it a skip, or a failure where ETL_REQUIRE_PROMTOOL=1 (as .ci/run sets)."""
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("ETL_REQUIRE_PROMTOOL") == "1":
            pytest.fail("ETL_REQUIRE_PROMTOOL=1 but promtool is not on PATH (Debian: apt-get install prometheus)")
        pytest.skip("promtool is not on PATH (Debian: apt-get install prometheus); ETL_REQUIRE_PROMTOOL=1 makes "
                    "this a failure")
    return found


def run_promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_checks_the_rules() -> None:
    checked = run_promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout


def test_promtool_runs_the_rule_tests() -> None:
    tested = run_promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_rule_tests_fail_when_an_alert_does_not_fire_as_expected(tmp_path: Path) -> None:
    """The rule tests can fail: with the stale mirror's threshold raised tenfold they do."""
    text = RULES.read_text(encoding="utf-8")
    assert text.count("smartcar_etl_oldest_success_age_seconds > 3600") == 1
    (tmp_path / RULES.name).write_text(text.replace("_age_seconds > 3600", "_age_seconds > 36000"))
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text(encoding="utf-8"))
    tested = run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert tested.returncode != 0 and "SmartcarEtlMirrorStale" in tested.stdout + tested.stderr


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    """promtool parses each panel's query, as recording rules, with Grafana's variables given values."""
    grafana = {"$application": "fleet", "$__rate_interval": "1m"}
    rules = []
    for n, expr in enumerate(e for where, e in expressions().items() if where.startswith("panel")):
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = run_promtool("check", "rules", str(tmp_path / "dashboard.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
