"""Several daemons on one database share several applications: each firing of an application runs in exactly
one of them, an application's runs never overlap, and when one daemon is killed the others go on."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from etl.config import Config, ScheduleConfig
from etl.context import Seams
from etl.db.models import connections, sync_runs
from etl.db.store import Store
from etl.fakeapi import serve
from etl.fakeapps import FakeApplications
from etl.runloop import RunResult
from etl.scheduler import INTERVAL_ORIGIN, Daemon, build_trigger, latest_firing

INTERVAL = 2.0


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as stderr:  # a file, not a pipe: nobody reads a pipe while the daemon runs
        return subprocess.Popen([sys.executable, "-m", "etl", "daemon"], env=env, cwd=log.parent,
                                stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def _runs(engine: Engine) -> list[tuple[str, dt.datetime, dt.datetime | None, str]]:
    r = sync_runs.c
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(  # type: ignore[misc]
            select(r.application, r.started_at, r.finished_at, r.status).order_by(r.started_at))]


def _wait_for(engine: Engine, done: object, seconds: float = 150) -> None:
    give_up = time.monotonic() + seconds  # start-up is slow on a busy machine: wait for runs, not a clock
    while not done(_runs(engine)) and time.monotonic() < give_up:  # type: ignore[operator]
        time.sleep(0.2)


@pytest.fixture
def apps() -> Iterator[FakeApplications]:
    yield FakeApplications.numbered(3, rate_limit=(40, 20.0))


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_two_daemons_share_three_applications_and_one_goes_on_when_the_other_is_killed(
    engine: Engine, apps: FakeApplications, tmp_path: Path,
) -> None:
    ids = apps.populate(4, seed=21)
    Store(engine).upgrade()
    for name, owned in ids.items():
        Store(engine).scoped(name).track(owned, at=dt.datetime.now(dt.UTC))
    config = tmp_path / "etl.yaml"
    config.write_text(f"daemon:\n  metrics_listen: null\n  stop_timeout: 20s\nschedule:\n  interval: {INTERVAL:g}s\n"
                      "sync:\n  strategy: ids\nretry:\n  max_attempts: 2\n  initial_backoff_seconds: 0.05\n")
    with serve(apps) as root:
        env = {**os.environ, **apps.environment(root), "SMARTCAR_ETL_CONFIG": str(config),
               "SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False)}
        logs = [tmp_path / "first.log", tmp_path / "second.log"]
        first, second = _start(env, logs[0]), _start(env, logs[1])
        try:
            _wait_for(engine, lambda runs: all(sum(r[0] == n for r in runs) >= 3 for n in ids))
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            killed_at = dt.datetime.now(dt.UTC)
            _wait_for(engine, lambda runs: all(sum(r[0] == n and r[1] > killed_at for r in runs) >= 3 for n in ids))
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=40) == 0
        finally:
            for proc in (first, second):
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=10)
    # Each daemon says which firings it took: "app-1: took the firing of 2026-12-06T12:00:02+00:00".
    taken = [tuple(m) for log in logs for m in re.findall(r"(app-\d): took the firing of (\S+)", log.read_text())]
    runs = _runs(engine)
    by_application: dict[str, list[tuple[dt.datetime, dt.datetime | None, str]]] = defaultdict(list)
    for application, started, finished, status in runs:
        by_application[application].append((started, finished, status))
    assert set(by_application) == set(ids)
    for name, own in by_application.items():
        after = [run for run in own if run[0] > killed_at]
        assert len(after) >= 3, (name, own)  # the survivor took every application's firings
        for (_, end, _), (start, _, _) in zip(own, own[1:], strict=False):
            # never two runs of one application at once (a run the kill cut short is closed later)
            assert end is None or end <= start, (name, own)
        # Each firing was taken by one daemon only, and ran at most once (a pass may be skipped or cut short).
        firings = [firing for app, firing in taken if app == name]
        assert len(firings) == len(set(firings)) and len(own) <= len(firings), (name, firings, own)
    assert apps.foreign_requests == [] and apps.rate_limited == 0
    with engine.connect() as conn:
        stored = dict(conn.execute(select(connections.c.id, connections.c.application)).all())
    assert stored == {i: name for name, owned in ids.items() for i in owned}


def test_every_daemon_computes_the_same_firings() -> None:
    trigger = build_trigger(Config(schedule=ScheduleConfig(interval_seconds=90)))
    at = dt.datetime(2026, 12, 6, 12, 0, 40, tzinfo=dt.UTC)
    firing = latest_firing(trigger, at, 300)
    assert firing is not None and firing <= at < firing + dt.timedelta(seconds=90)
    assert (firing - INTERVAL_ORIGIN).total_seconds() % 90 == 0  # counted from a fixed instant, not start-up
    assert latest_firing(trigger, at, 10) in (None, firing)


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql", "mariadb"], indirect=True)
def test_a_firing_is_taken_by_exactly_one_claim(engine: Engine) -> None:
    Store(engine).upgrade()
    store = Store(engine).scoped("app-1")
    firing = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
    now = firing + dt.timedelta(seconds=1)
    assert store.claim_firing(firing, claimer="a", at=now) is True
    assert store.claim_firing(firing, claimer="b", at=now) is False  # the same firing: already taken
    assert Store(engine).scoped("app-2").claim_firing(firing, claimer="b", at=now) is True  # its own schedule
    assert store.claim_firing(firing + dt.timedelta(seconds=2), claimer="b", at=now) is True  # the next one
    assert store.claim_firing(firing, claimer="a", at=now) is False  # an older one never runs again


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_daemons_starting_between_two_firings_take_the_one_just_past_once(engine: Engine) -> None:
    Store(engine).upgrade()
    config = Config(schedule=ScheduleConfig(interval_seconds=3600, misfire_grace_seconds=300))
    started = [dt.datetime(2026, 12, 6, 10, 20, second, tzinfo=dt.UTC) for second in (0, 1, 2)]  # 20 min past
    daemons = [Daemon(config, Store(engine), seams=Seams(now=lambda at=at: at)) for at in started]
    taken = [d._claimed(config, Store(engine).scoped("default")) for d in daemons]
    assert taken == [True, False, False]  # the start-up pass of one replica only: the 10:00 firing


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_daemon_that_loses_a_firing_still_reads_the_last_success_for_its_metrics(engine: Engine) -> None:
    Store(engine).upgrade()
    store = Store(engine).scoped("default")
    run_id, at = store.start_run(trigger="daemon", planned=0, at=dt.datetime.now(dt.UTC))
    store.finish_run(RunResult(run_id=run_id, status="succeeded", planned=0), at=at)  # another replica's pass
    config = Config(schedule=ScheduleConfig(interval_seconds=2))
    firing = latest_firing(build_trigger(config), dt.datetime.now(dt.UTC), 60)
    assert firing is not None and store.claim_firing(firing, claimer="the other replica", at=at)
    daemon = Daemon(config, Store(engine), seams=Seams(now=lambda: firing + dt.timedelta(milliseconds=10)))
    assert daemon.fire("default") is None  # taken already: no pass here
    gauge = daemon.metrics.registry.get_sample_value("smartcar_etl_last_success_timestamp_seconds",
                                                     {"application": "default"})
    assert gauge == pytest.approx(at.timestamp())
