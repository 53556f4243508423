"""Operations: the daemon, the run lock, cadence, status and metrics, on SQLite, PostgreSQL and MariaDB.

Processes are real where the behaviour is about processes (signals, locks,
SIGKILL); the fake API is served on loopback by the test process, so its
request log sees what every process fetched.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, insert, select

from etl.cli import cli
from etl.config import Config, ScheduleConfig, SyncConfig, load_config
from etl.context import Seams
from etl.db.models import connections, sync_runs
from etl.db.store import Store
from etl.errors import LockHeld
from etl.fakeapi import FakeApi
from etl.liveness import Liveness, longest_cron_gap
from etl.metrics import Metrics
from etl.scheduler import JOB_ID, Daemon, build_scheduler
from etl.status import status_report
from etl.tracking import track
from tests.conftest import T0, Clock, Runner, make_config

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def runs(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(sync_runs).order_by(sync_runs.c.id)))


class Procs:
    """Starts `python -m etl ...` with this test's database, fake API and a config file; cleans up."""

    def __init__(self, engine: Engine, api: dict[str, str], fake: FakeApi, tmp_path: Path) -> None:
        config = tmp_path / "etl.yaml"
        config.write_text("daemon:\n  metrics_listen: 127.0.0.1:0\n  stop_timeout: 20s\n"
                          "api:\n  concurrency: 2\nretry:\n  max_attempts: 2\n  initial_backoff_seconds: 0.05\n"
                          "sync:\n  strategy: ids\n")
        self.env = {
            **os.environ, "SMARTCAR_ETL_CONFIG": str(config),
            "SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False),
            "SMARTCAR_API_BASE_URL": api["base_url"], "SMARTCAR_TOKEN_URL": api["token_url"],
            "SMARTCAR_CLIENT_ID": fake.client_id, "SMARTCAR_CLIENT_SECRET": fake.client_secret,
        }
        self.started: list[subprocess.Popen[str]] = []
        self.cwd = tmp_path

    def start(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "etl", *args], env=self.env, cwd=self.cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


@pytest.fixture
def procs(engine: Engine, api_server: dict[str, str], fake_api: FakeApi, tmp_path: Path) -> Any:
    p = Procs(engine, api_server, fake_api, tmp_path)
    yield p
    p.close()


def tracked_world(fake: FakeApi, engine: Engine, count: int) -> list[str]:
    ids = fake.populate(count, seed=11)
    track(Store(engine), ids)
    return ids


# -- the scheduler ------------------------------------------------------------------------------

def test_scheduler_runs_one_pass_at_a_time_and_coalesces() -> None:
    config = Config(schedule=ScheduleConfig(interval_seconds=120, misfire_grace_seconds=30))
    scheduler = build_scheduler({"default": (config, lambda: None)}, now=lambda: T0)
    [job] = scheduler.get_jobs()
    assert (job.id, job.max_instances, job.coalesce, job.misfire_grace_time) == (f"{JOB_ID}:default", 1, True, 30)
    assert job.trigger.interval == dt.timedelta(minutes=2) and job.next_run_time == T0


def test_scheduler_with_a_cron_expression() -> None:
    config = Config(schedule=ScheduleConfig(cron="*/15 6-22 * * *"))
    [job] = build_scheduler({"default": (config, lambda: None)}).get_jobs()
    fire = job.trigger.get_next_fire_time(None, dt.datetime(2026, 3, 1, 5, 58, tzinfo=dt.UTC))
    assert fire == dt.datetime(2026, 3, 1, 6, 0, tzinfo=dt.UTC)


def test_daemon_command_rejects_bad_schedule_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["daemon", "--interval", "often"], env={"SMARTCAR_ETL_CONFIG": ""})
    assert result.exit_code == 2 and "--interval" in result.output and "'often'" in result.output
    result = runner.invoke(cli, ["daemon", "--cron", "every day"], env={"SMARTCAR_ETL_CONFIG": ""})
    assert result.exit_code == 2 and "--cron" in result.output
    result = runner.invoke(cli, ["daemon", "--cron", "* * * * *", "--interval", "1m"], env={"SMARTCAR_ETL_CONFIG": ""})
    assert result.exit_code == 2 and "exclude each other" in result.output


# -- the daemon as a process -----------------------------------------------------------------------

def test_daemon_runs_passes_and_stops_cleanly_on_sigterm(procs: Procs, engine: Engine, fake_api: FakeApi) -> None:
    tracked_world(fake_api, engine, 5)
    daemon = procs.start("daemon", "--interval", "1s")
    wait_for(lambda: sum(r.status == "succeeded" for r in runs(engine)) >= 2, what="two passes")
    daemon.send_signal(signal.SIGTERM)
    out, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    recorded = runs(engine)
    assert {r.trigger for r in recorded} == {"daemon"}
    assert all(r.status != "running" and r.finished_at is not None for r in recorded)
    assert "daemon stopped" in err


def test_sigterm_mid_pass_stores_what_was_fetched_and_records_the_run(
    procs: Procs, engine: Engine, fake_api: FakeApi
) -> None:
    ids = tracked_world(fake_api, engine, 40)
    fake_api.fail_next(None, delay=0.15, match="/v3/connections/", times=1000)  # a slow API
    daemon = procs.start("daemon", "--interval", "1h")
    wait_for(lambda: fake_api.count("GET", "/v3/connections/") >= 6, what="the pass to be under way")
    daemon.send_signal(signal.SIGTERM)
    out, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    [run] = runs(engine)
    sent = fake_api.count("GET", "/v3/connections/")
    assert run.status == "aborted" and run.finished_at is not None
    assert run.error == f"stopped by SIGTERM after {sent} of {len(ids)} connections; what was received is stored"
    assert run.connections_fetched == sent < len(ids)  # everything fetched was stored, nothing more asked
    with engine.connect() as conn:
        assert conn.scalar(select(connections.c.status).where(connections.c.status == "active").limit(1))


# -- the lock ---------------------------------------------------------------------------------------

def test_two_syncs_started_together_one_polls_the_other_exits_4(
    procs: Procs, engine: Engine, fake_api: FakeApi
) -> None:
    ids = tracked_world(fake_api, engine, 8)
    fake_api.fail_next(None, delay=1.0, match="/v3/connections/", times=1000)  # the holder keeps the lock ~4 s
    first, second = procs.start("sync"), procs.start("sync")
    results = [(p.wait(timeout=60), *p.communicate()) for p in (first, second)]
    assert sorted(code for code, _, _ in results) == [0, 4]
    loser = next(err for code, _, err in results if code == 4)
    assert "another run holds the lock" in loser
    assert "run 1 (sync, started" in loser or "has not recorded itself yet" in loser
    assert len(runs(engine)) == 1
    per_id = [fake_api.count("GET", f"/v3/connections/{i}") for i in ids]
    assert per_id == [1] * len(ids)


def test_a_holder_killed_with_sigkill_does_not_block_the_next_run(
    procs: Procs, engine: Engine, fake_api: FakeApi
) -> None:
    tracked_world(fake_api, engine, 10)
    fake_api.fail_next(None, delay=1.0, match="/v3/connections/", times=4)
    holder = procs.start("sync")
    wait_for(lambda: any(r.status == "running" for r in runs(engine)), what="the holder's run")
    holder.kill()
    holder.wait(timeout=10)
    result = subprocess.run([sys.executable, "-m", "etl", "sync"], env=procs.env, cwd=procs.cwd,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    killed, after = runs(engine)
    assert killed.status == "aborted" and killed.error.startswith("abandoned: a later run found it still running")
    assert after.status == "succeeded" and after.connections_fetched == 10


def test_lock_is_exclusive_in_process_and_names_the_holder(run_sync: Runner, engine: Engine) -> None:
    tracked_world(run_sync.fake, engine, 2)
    with Store(engine).lock():
        with engine.begin() as conn:
            conn.execute(insert(sync_runs).values(trigger="daemon", started_at=T0, status="running",
                                                  pid=4242, host="etl-1"))
        with pytest.raises(LockHeld, match=r"run 1 \(daemon, started 2026-03-01 12:00:00 UTC, pid 4242 on etl-1\)"):
            run_sync()
    result = run_sync()  # the lock is free again; the row left running is closed
    assert result.status == "succeeded"
    assert [r.status for r in runs(engine)] == ["aborted", "succeeded"]


def test_two_daemons_never_fetch_a_connection_twice_in_one_cycle(
    procs: Procs, engine: Engine, fake_api: FakeApi
) -> None:
    ids = tracked_world(fake_api, engine, 10)
    interval = 2.0
    daemons = [procs.start("daemon", "--interval", f"{interval:g}s") for _ in range(2)]

    def fetched_thrice() -> bool:
        counts = [fake_api.count("GET", f"/v3/connections/{i}") for i in ids]
        return min(counts) >= 3

    give_up = time.monotonic() + 60  # start-up is slow on a busy machine: wait for the cycles, not a clock
    while not fetched_thrice() and time.monotonic() < give_up:
        time.sleep(0.2)
    for d in daemons:
        d.send_signal(signal.SIGTERM)
    codes = [d.wait(timeout=30) for d in daemons]
    assert codes == [0, 0]
    times: dict[str, list[float]] = defaultdict(list)
    for at, method, path in fake_api.request_times:
        if method == "GET" and path.startswith("/v3/connections/"):
            times[path.rsplit("/", 1)[1]].append(at)
    assert set(times) == set(ids)
    for fetched in times.values():
        assert len(fetched) >= 3
        gaps = [b - a for a, b in zip(fetched, fetched[1:], strict=False)]
        assert min(gaps) > interval * 0.9 - 0.3, gaps  # one fetch a cycle, whichever daemon made it


# -- cadence -----------------------------------------------------------------------------------------

def gets(fake: FakeApi, cid: str) -> int:
    return fake.count("GET", f"/v3/connections/{cid}")


def test_a_failing_connection_backs_off_and_all_overrides(run_sync: Runner, engine: Engine) -> None:
    good, bad = tracked_world(run_sync.fake, engine, 2)
    run_sync.fake.fail_next(400, match=bad, times=1000)
    minute = dt.timedelta(minutes=1)
    run_sync(advance=0 * minute)  # t=0: both fetched; bad fails once -> due at t+5m
    assert (gets(run_sync.fake, good), gets(run_sync.fake, bad)) == (1, 1)
    run_sync(advance=4 * minute)  # t=4m: nothing due
    assert (gets(run_sync.fake, good), gets(run_sync.fake, bad)) == (1, 1)
    run_sync(advance=2 * minute)  # t=6m: bad due, fails again -> due at t+6m+10m
    assert (gets(run_sync.fake, good), gets(run_sync.fake, bad)) == (1, 2)
    run_sync(advance=8 * minute)  # t=14m: good due (13.5m), bad not (16m)
    assert (gets(run_sync.fake, good), gets(run_sync.fake, bad)) == (2, 2)
    run_sync(advance=3 * minute)  # t=17m: bad due -> third failure, due at t+20m
    assert gets(run_sync.fake, bad) == 3
    with engine.connect() as conn:
        row = conn.execute(select(connections).where(connections.c.id == bad)).one()
    assert row.consecutive_failures == 3
    assert row.next_due_at - row.last_attempt_at == dt.timedelta(minutes=20)  # 5, 10, 20: doubling
    result = run_sync(advance=minute, ignore_due=True)  # --all: everything, due or not
    assert result.planned == 2 and gets(run_sync.fake, bad) == 4


def test_backoff_is_capped_and_resets_after_a_success(run_sync: Runner, engine: Engine) -> None:
    [cid] = tracked_world(run_sync.fake, engine, 1)
    run_sync.fake.fail_next(503, match=cid, times=1000)
    for _ in range(8):
        run_sync(advance=dt.timedelta(hours=7))  # always due: the cap is 6 h
    with engine.connect() as conn:
        row = conn.execute(select(connections)).one()
    assert row.consecutive_failures == 8
    assert row.next_due_at - row.last_attempt_at == dt.timedelta(hours=6)
    run_sync.fake.faults.clear()
    run_sync(advance=dt.timedelta(hours=7))
    with engine.connect() as conn:
        row = conn.execute(select(connections)).one()
    assert (row.consecutive_failures, row.last_error, row.status) == (0, None, "active")


def test_a_deleted_connection_is_rechecked_daily_and_noticed_when_it_returns(
    run_sync: Runner, engine: Engine
) -> None:
    [cid] = tracked_world(run_sync.fake, engine, 1)
    run_sync.fake.remove(cid)
    run_sync(advance=dt.timedelta(0))
    for _ in range(4):  # the next hour of 15-minute passes leaves it alone
        assert run_sync().planned == 0
    run_sync.fake.restore(cid)
    result = run_sync(advance=dt.timedelta(days=1))
    held = len(run_sync.fake.connections[cid].permissions)
    assert (result.planned, result.counts.fetched, result.counts.granted) == (1, 1, held)
    assert gets(run_sync.fake, cid) == 2


# -- status ------------------------------------------------------------------------------------------

def test_status_reports_runs_connections_and_failures(run_sync: Runner, engine: Engine, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ids = tracked_world(run_sync.fake, engine, 4)
    run_sync.fake.connections[ids[0]].broken = "wrong_type"
    run_sync.fake.remove(ids[1])
    run_sync()
    report = status_report(Store(engine))
    [run] = report["runs"]
    assert (run["trigger"], run["status"], run["planned"], run["failed"], run["deleted"]) == (
        "sync", "partial", 4, 1, 1)
    assert report["connections"] == {"pending": 1, "active": 2, "deleted": 1, "tracked": 4, "untracked": 0}
    [failing] = report["failing"]
    assert failing["connection_id"] == ids[0] and "data.type" in failing["last_error"]
    assert failing["failures_in_a_row"] == 1 and report["failing_total"] == 1
    assert report["last_success_at"] is None

    monkeypatch.chdir(tmp_path)
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
    out = CliRunner().invoke(cli, ["status", "--json"], env=env)
    assert out.exit_code == 0
    parsed = json.loads(out.stdout)
    assert parsed["runs"][0]["status"] == "partial" and parsed["failing"][0]["connection_id"] == ids[0]
    assert parsed["connections"]["deleted"] == 1
    table = CliRunner().invoke(cli, ["status"], env=env).stdout
    assert "Last successful run finished: never" in table
    assert "Tracked connections: 1 pending, 2 active, 1 deleted (0 untracked)" in table
    assert "Failing connections (1):" in table and ids[0] in table and "partial" in table


# -- metrics -----------------------------------------------------------------------------------------

def scrape(port: int) -> dict[str, float]:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    values = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_endpoint_counters_move_after_a_pass(fake_api: FakeApi, engine: Engine, clock: Clock) -> None:
    ids = tracked_world(fake_api, engine, 3)
    fake_api.fail_next(503, match=ids[0])
    config = make_config(fake_api, "unused")
    metrics = Metrics()
    _, port = metrics.serve("127.0.0.1:0")
    try:
        daemon = Daemon(config, Store(engine),
                        seams=Seams(metrics=metrics, transport=httpx.MockTransport(fake_api.handle), now=clock))
        before = scrape(port)
        assert before.get('smartcar_etl_connections_total{application="default",result="fetched"}', 0) == 0
        assert daemon.run_pass() is not None
        after = scrape(port)
    finally:
        metrics.close()
    assert after['smartcar_etl_connections_total{application="default",result="fetched"}'] == 3
    assert after['smartcar_etl_api_requests_total{application="default",outcome="ok",status="200"}'] == 3
    assert after['smartcar_etl_api_requests_total{application="default",outcome="server",status="503"}'] == 1
    assert after['smartcar_etl_runs_total{application="default",status="succeeded"}'] == 1
    last_success = after['smartcar_etl_last_success_timestamp_seconds{application="default"}']
    assert last_success == pytest.approx(clock.now.timestamp(), abs=1)
    assert after['smartcar_etl_permission_changes_total{application="default",change="granted"}'] > 0


def test_daemon_pass_skips_when_the_lock_is_held(fake_api: FakeApi, engine: Engine, clock: Clock) -> None:
    tracked_world(fake_api, engine, 1)
    metrics = Metrics()
    daemon = Daemon(make_config(fake_api, "unused"), Store(engine),
                    seams=Seams(metrics=metrics, transport=httpx.MockTransport(fake_api.handle), now=clock))
    with Store(engine).lock():
        assert daemon.run_pass() is None
    assert metrics.lock_skips.labels("default")._value.get() == 1 and fake_api.count("GET", "/v3/") == 0
    assert daemon.run_pass() is not None


sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@sqlite_only
def test_healthz_is_200_while_firings_are_handled_within_twice_the_interval(
        fake_api: FakeApi, engine: Engine, clock: Clock) -> None:
    tracked_world(fake_api, engine, 2)
    config = make_config(fake_api, "unused")
    config = replace(config, schedule=replace(config.schedule, interval_seconds=120))
    daemon = Daemon(config, Store(engine), seams=Seams(transport=httpx.MockTransport(fake_api.handle), now=clock))
    assert daemon.liveness.limit_seconds == 240
    status, text = daemon.liveness.answer()
    assert status == 200 and text.startswith("alive: start-up 0s ago; the limit is 240s")
    clock.advance(seconds=239)
    assert daemon.liveness.answer()[0] == 200
    clock.advance(seconds=2)  # no firing handled since start-up, 241 s ago
    assert daemon.liveness.answer() == (503, "not alive: start-up 241s ago, more than the limit of 240s\n")
    assert daemon.fire("default") is not None  # a pass: alive again
    assert daemon.liveness.answer()[0] == 200
    clock.advance(seconds=241)
    assert daemon.liveness.answer()[0] == 503
    other = Daemon(config, Store(engine), seams=Seams(transport=httpx.MockTransport(fake_api.handle), now=clock))
    other.claimer = "another-host:1"
    assert other.fire("default") is not None  # the other daemon takes this firing...
    assert daemon.fire("default") is None and fake_api.count("GET", "/v3/") == 4  # ...and this one runs nothing,
    assert daemon.liveness.answer()[0] == 200  # but it handled the firing: alive
    clock.advance(seconds=241)
    with Store(engine).lock():  # a pass skipped for the lock is handled too
        assert daemon.fire("default") is None
    assert daemon.liveness.answer()[0] == 200


def test_healthz_allows_the_longest_cron_gap_or_a_longer_max_duration(tmp_path: Path) -> None:
    at = dt.datetime(2026, 3, 4, 12, 0, tzinfo=dt.UTC)  # a Wednesday: the weekend's gap comes in the first week
    weekdays = Config(schedule=ScheduleConfig(cron="0 9 * * 1-5"))
    assert Liveness(weekdays, now=lambda: at).limit_seconds == 2 * 3 * 86400  # Friday 09:00 to Monday 09:00
    assert longest_cron_gap("*/15 6-22 * * *", at) == 7.25 * 3600  # 22:45 to 06:00
    assert longest_cron_gap("0 0 1 1 *", at) == 365 * 86400
    assert longest_cron_gap("0 0 29 2 *", at) == 366 * 86400  # no second firing within a year: the horizon
    slow = Config(schedule=ScheduleConfig(interval_seconds=600), sync=SyncConfig(max_duration_seconds=3600))
    assert Liveness(slow, now=lambda: at).limit_seconds == 7200
    (tmp_path / "etl.yaml").write_text(
        "applications:\n"
        "  - {name: a, client_id: a, client_secret_variable: A_SECRET, schedule: {interval: 1m}}\n"
        "  - {name: b, client_id: b, client_secret_variable: B_SECRET, schedule: {interval: 1h}}\n")
    several = load_config(str(tmp_path / "etl.yaml"), env={"A_SECRET": "a-secret-of-a", "B_SECRET": "b-secret-of-b"})
    assert Liveness(several, now=lambda: at).limit_seconds == 7200  # the longest of the applications'


def test_healthz_is_served_beside_the_metrics(clock: Clock) -> None:
    config = Config(schedule=ScheduleConfig(interval_seconds=60))
    liveness = Liveness(config, now=clock)
    metrics = Metrics()
    metrics.of("default")
    _, port = metrics.serve("127.0.0.1:0", health=liveness.answer)
    try:
        alive = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        clock.advance(seconds=121)
        dead = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        scraped = scrape(port)
    finally:
        metrics.close()
    assert (alive.status_code, dead.status_code) == (200, 503)
    assert alive.text.startswith("alive: ") and dead.text.startswith("not alive: start-up 121s ago")
    assert alive.headers["content-type"] == "text/plain; charset=utf-8"
    assert scraped['smartcar_etl_runs_total{application="default",status="succeeded"}'] == 0


def test_one_shot_sync_writes_a_metrics_textfile(procs: Procs, engine: Engine, fake_api: FakeApi,
                                                  tmp_path: Path) -> None:
    tracked_world(fake_api, engine, 2)
    path = tmp_path / "smartcar_etl.prom"
    done = subprocess.run([sys.executable, "-m", "etl", "sync", "--metrics-file", str(path)], env=procs.env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = path.read_text()
    assert 'smartcar_etl_connections_total{application="default",result="fetched"} 2.0' in text
    assert 'smartcar_etl_runs_total{application="default",status="succeeded"} 1.0' in text
    assert 'smartcar_etl_last_success_timestamp_seconds{application="default"}' in text
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    label = '{application="default"}'
    assert 0 <= values["smartcar_etl_oldest_success_age_seconds" + label] < 600  # both fetched just now
    assert values["smartcar_etl_rate_budget_tokens" + label] >= 0
    assert "smartcar_etl_last_run_rate_limit_wait_seconds" + label in values


def test_status_shows_freshness_and_budget_and_max_age_is_for_monitoring(
    run_sync: Runner, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracked_world(run_sync.fake, engine, 3)
    monkeypatch.chdir(tmp_path)
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
    never = CliRunner().invoke(cli, ["status", "--max-age", "1h"], env=env)
    assert never.exit_code == 1 and "Stale: 3 connection(s) without a success within 1h" in never.stdout
    assert "0 of 3 fetched within 15m, 3 never fetched" in never.stdout
    run_sync.clock.now = dt.datetime.now(dt.UTC)  # the CLI reads the real clock: fetch "now"
    run_sync(advance=dt.timedelta(0))
    fresh = CliRunner().invoke(cli, ["status", "--max-age", "1h", "--json"], env=env)
    assert fresh.exit_code == 0, fresh.output
    report = json.loads(fresh.stdout)
    assert report["stale"] == {"max_age_seconds": 3600.0, "connections": 0, "tracked": 3, "problem": None}
    assert (report["freshness"]["tracked"], report["freshness"]["fetched_within_interval"],
            report["freshness"]["never_fetched"]) == (3, 3, 0)
    budget = report["budget"]
    assert (budget["capacity"], budget["per_minute"], budget["requests_per_hour"]) == (120, 2.0, 120.0)
    assert budget["full_refresh"]["ids"] == {"requests": 3, "seconds": 0.0}
    assert budget["full_refresh"]["list"]["requests"] == 1 and budget["interval_can_be_met"] is True
    table = CliRunner().invoke(cli, ["status"], env=env).stdout
    assert "Rate budget:" in table and "requests an hour" in table and "schedule.interval 15m can be met" in table


def test_status_says_when_the_interval_cannot_be_met(engine: Engine) -> None:
    from etl.config import Config, RateLimitConfig
    from etl.status import budget

    config = Config(rate_limit=RateLimitConfig(capacity=120, per_minute=2))
    figures = budget(Store(engine), config, at=dt.datetime.now(dt.UTC), tracked=10_000)
    assert figures["full_refresh"]["list"] == {"requests": 100, "seconds": 0.0}  # within the bucket's 120
    assert figures["full_refresh"]["ids"]["seconds"] == (10_000 - 120) * 30
    assert figures["interval_can_be_met"] is True
    bigger = budget(Store(engine), config, at=dt.datetime.now(dt.UTC), tracked=100_000)
    assert bigger["full_refresh"]["list"] == {"requests": 1000, "seconds": (1000 - 120) * 30.0}
    assert bigger["interval_can_be_met"] is False  # 7 h 20 m for a 15 m interval
