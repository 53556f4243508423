"""A stop loses no answer; a long pass commits as it goes and says how it is doing; its status tells the truth."""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from etl.db.models import connections, sync_runs
from etl.fakeapi import FakeApi
from etl.heartbeat import Heartbeat, Pending
from etl.metrics import Metrics
from etl.outcomes import BatchCounts, Outcome
from etl.stop import StopRequest
from tests.conftest import Runner
from tests.test_operations import Procs, tracked_world


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_answer_waits_at_most_flush_seconds_and_a_full_batch_not_at_all() -> None:
    written: list[list[Outcome]] = []
    clock = Ticks()
    pending = Pending(lambda batch: written.append(batch) or BatchCounts(), size=3, flush_seconds=10,
                      clock=clock)
    beat = Heartbeat(pending, report=lambda: ("", {}), interval=1e9, clock=clock)
    first: Any = object()
    pending.add(first)
    clock.now += 9.9
    beat.tick()
    assert written == []  # not yet
    clock.now += 0.1
    beat.tick()
    assert written == [[first]]  # its oldest answer waited ten seconds
    pending.extend([first, first, first])
    assert written[-1] == [first] * 3 and len(pending) == 0  # a full batch goes at once


def test_a_failed_write_in_the_heartbeat_is_raised_in_the_run_loop_and_nothing_is_dropped() -> None:
    clock = Ticks()

    def refuse(batch: list[Outcome]) -> BatchCounts:
        raise RuntimeError("database gone")

    pending = Pending(refuse, size=10, flush_seconds=1, clock=clock)
    item: Any = object()
    pending.add(item)
    clock.now += 5
    pending.flush_if_due()  # the heartbeat's thread: kept
    with pytest.raises(RuntimeError, match="database gone"):
        pending.add(item)  # the run loop's thread: raised (and the run aborted)
    assert pending.outcomes == [item]  # what the heartbeat could not store is still there


def test_progress_is_reported_at_its_interval() -> None:
    clock = Ticks()
    reports: list[int] = []
    beat = Heartbeat(Pending(lambda batch: BatchCounts(), size=10, flush_seconds=10, clock=clock),
                     report=lambda: (reports.append(1), ("line", {}))[1], interval=30, clock=clock)
    for _ in range(90):
        clock.now += 1
        beat.tick()
    assert len(reports) == 3


def test_a_progress_line_says_what_is_sent_stored_left_and_when_the_budget_resumes(
        run_sync: Runner, engine: Engine) -> None:
    tracked_world(run_sync.fake, engine, 4)
    lines: list[tuple[str, dict[str, Any]]] = []

    class Watching:  # a limiter that takes a report while it "waits" for the budget
        waited, resume_at = 0.0, None
        loop: Any = None

        def acquire(self, cancelled: Any = None, patience: Any = None) -> bool:
            import gc

            from etl.runloop import RunLoop
            self.resume_at = time.time() + 60
            loop = next(o for o in gc.get_objects() if isinstance(o, RunLoop))
            lines.append(loop.report())
            self.resume_at = None
            return True

        def drain(self, seconds: float) -> None:
            pass

    run_sync.config = replace(run_sync.config, api=replace(run_sync.config.api, concurrency=1))  # in order
    run_sync(limiter=Watching())
    line, fields = lines[-1]
    assert (fields["sent"], fields["stored"], fields["left"], fields["failed"]) == (3, 0, 1, 0)
    assert fields["waiting_for_budget_until"] is not None and "waiting for the rate budget until" in line
    assert fields["expected_end"] is not None and "1 left" in line


def test_a_pass_whose_retries_were_all_deferred_is_failed(run_sync: Runner, engine: Engine) -> None:
    tracked_world(run_sync.fake, engine, 3)
    run_sync.config = replace(run_sync.config, sync=replace(run_sync.config.sync, max_duration_seconds=5.0))
    run_sync.fake.fail_next(503, headers={"Retry-After": "60"}, match="/v3/connections/", times=100)
    metrics = Metrics()
    result = run_sync(metrics=metrics)
    assert (result.status, result.exit_code, result.counts.fetched, result.deferred) == ("failed", 1, 0, 3)
    assert result.error is not None and "deadline" in result.error
    default = {"application": "default"}
    assert metrics.registry.get_sample_value("smartcar_etl_last_success_timestamp_seconds", default) == 0
    assert metrics.registry.get_sample_value("smartcar_etl_last_pass_timestamp_seconds", default) > 0
    assert metrics.registry.get_sample_value("smartcar_etl_runs_total", {**default, "status": "failed"}) == 1


def test_a_stop_request_names_who_asked_and_the_pass_stores_what_it_received(
        run_sync: Runner, engine: Engine) -> None:
    ids = tracked_world(run_sync.fake, engine, 20)
    run_sync.config = replace(run_sync.config, api=replace(run_sync.config.api, concurrency=1))  # one in flight
    stop = StopRequest()
    run_sync.fake.hooks.append(lambda request: stop.request("SIGTERM")
                               if run_sync.fake.count("GET", "/v3/connections/") == 7 else None)
    result = run_sync(cancelled=stop)
    assert (result.status, result.counts.fetched) == ("aborted", 7)
    assert result.error == "stopped by SIGTERM after 7 of 20 connections; what was received is stored"
    with engine.connect() as conn:
        stored = conn.scalars(select(connections.c.id).where(connections.c.last_success_at.is_not(None))).all()
    assert len(stored) == 7 and set(stored) <= set(ids)


def received(fake: FakeApi, *, before: float = float("inf")) -> set[str]:
    """The connections the fake answered (with a document) before a time.monotonic() reading."""
    return {path.rsplit("/", 1)[1] for at, method, path in fake.request_times
            if method == "GET" and path.startswith("/v3/connections/") and at < before}


def stored(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(select(connections.c.id).where(connections.c.last_success_at.is_not(None))))


@pytest.mark.parametrize("db_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
                         indirect=True)
def test_a_slow_pass_commits_as_it_goes_says_how_it_is_doing_and_a_stop_loses_nothing(
        engine: Engine, api_server: dict[str, str], fake_api: FakeApi, tmp_path: Path) -> None:
    tracked_world(fake_api, engine, 40)
    procs = Procs(engine, api_server, fake_api, tmp_path)
    procs.env.update({"SMARTCAR_ETL_RATE_LIMIT_CAPACITY": "3", "SMARTCAR_ETL_RATE_LIMIT_PER_MINUTE": "20",
                      "SMARTCAR_ETL_SYNC_PROGRESS_INTERVAL": "1s"})  # an answer every three seconds
    try:
        sync = procs.start("--log-format", "json", "sync", "--all")
        time.sleep(19)
        early = received(fake_api, before=time.monotonic() - 15)
        assert early and early <= stored(engine)  # answers older than 15 s are in the database
        sync.send_signal(signal.SIGTERM)
        _, err = sync.communicate(timeout=60)
    finally:
        procs.close()
    assert sync.returncode == 130, err
    answered, kept = received(fake_api), stored(engine)
    assert kept <= answered and len(answered - kept) <= 1  # at most the one in flight
    with engine.connect() as conn:
        run = conn.execute(select(sync_runs)).one()
    assert run.status == "aborted" and run.error.startswith("stopped by SIGTERM")
    assert run.connections_fetched == len(kept)
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    progress = [r for r in records if "progress" in r]
    assert any(r["progress"]["waiting_for_budget_until"] for r in progress)
    times = [dt.datetime.fromisoformat(r["time"]) for r in records]
    started = next(i for i, r in enumerate(records) if "connection(s) due" in r["message"])
    gaps = [(b - a).total_seconds() for a, b in zip(times[started:], times[started + 1:], strict=False)]
    assert max(gaps) < 3, gaps  # no silence much longer than the one-second interval


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the signal handling is the same on every database
def test_a_second_signal_stops_at_once_and_still_stores_what_was_received(
        engine: Engine, api_server: dict[str, str], fake_api: FakeApi, tmp_path: Path) -> None:
    tracked_world(fake_api, engine, 20)
    procs = Procs(engine, api_server, fake_api, tmp_path)
    procs.env.update({"SMARTCAR_ETL_RATE_LIMIT_CAPACITY": "3", "SMARTCAR_ETL_RATE_LIMIT_PER_MINUTE": "20",
                      "SMARTCAR_ETL_SYNC_STOP_TIMEOUT": "1h"})
    try:
        sync = procs.start("sync", "--all")
        deadline = time.monotonic() + 30
        while len(received(fake_api)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        sync.send_signal(signal.SIGTERM)
        time.sleep(1)
        sync.send_signal(signal.SIGTERM)  # the first would wait an hour for the budget
        started = time.monotonic()
        sync.communicate(timeout=60)
        assert time.monotonic() - started < 20
    finally:
        procs.close()
    assert sync.returncode == 130
    answered, kept = received(fake_api), stored(engine)
    assert kept <= answered and len(answered - kept) <= 1



def test_status_max_age_with_nothing_tracked_is_stale(engine: Engine, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from etl.cli import cli

    monkeypatch.chdir(tmp_path)
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
    result = CliRunner().invoke(cli, ["status", "--max-age", "1h", "--format", "json"], env=env)
    assert result.exit_code == 1 and "nothing is tracked, so nothing is fresh" in result.stderr
    assert json.loads(result.stdout)["stale"]["problem"] == "nothing is tracked, so nothing is fresh"


class RefusedCertificate(FakeApi):
    """An API whose TLS certificate the client refuses (as httpcore raises it)."""

    def handle(self, request: Any) -> Any:
        import ssl

        import httpx

        if not request.url.path.startswith("/v3/"):
            return super().handle(request)
        self.requests.append((request.method, request.url.path))
        try:
            error = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
            error.verify_message = "self-signed certificate"
            raise error
        except ssl.SSLError as cause:
            raise httpx.ConnectError(str(cause), request=request) from cause


def test_a_refused_tls_certificate_says_so_and_is_not_retried(engine: Engine, clock: Any) -> None:
    from etl.errors import SyncAborted

    fake = RefusedCertificate(client_id="test-client", client_secret="test-client-secret")
    run_sync = Runner(fake, engine, clock)
    run_sync.config = replace(run_sync.config, api=replace(run_sync.config.api, concurrency=1))
    tracked_world(fake, engine, 3)
    with pytest.raises(SyncAborted) as caught:
        run_sync()
    message = str(caught.value)
    assert caught.value.exit_code == 3 and "api.test" in message and "self-signed certificate" in message
    assert fake.count("GET", "/v3/") == 1 and run_sync.sleeps == []  # no retry, no second connection


def test_a_stale_run_keeps_its_counters_and_says_it_was_abandoned(run_sync: Runner, engine: Engine) -> None:
    from sqlalchemy import insert

    tracked_world(run_sync.fake, engine, 2)
    with engine.begin() as conn:
        conn.execute(insert(sync_runs).values(trigger="daemon", started_at=run_sync.clock(), status="running",
                                              connections_planned=9, connections_fetched=4, pid=1, host="gone"))
    run_sync()
    with engine.connect() as conn:
        first = conn.execute(select(sync_runs).order_by(sync_runs.c.id)).first()
    assert first is not None and (first.status, first.connections_planned, first.connections_fetched) == (
        "aborted", 9, 4)
    assert first.error.startswith("abandoned: a later run found it still running without the run lock")


def test_a_daemon_pass_that_fails_before_recording_a_run_is_counted(
        fake_api: FakeApi, empty_engine: Engine, clock: Any) -> None:
    import httpx

    from etl.context import Seams
    from etl.db.store import Store
    from etl.scheduler import Daemon
    from tests.conftest import make_config

    metrics = Metrics()
    daemon = Daemon(make_config(fake_api, "unused"), Store(empty_engine),  # a database it cannot use
                    seams=Seams(metrics=metrics, transport=httpx.MockTransport(fake_api.handle), now=clock))
    assert daemon.run_pass() is None
    aborted = {"application": "default", "status": "aborted"}
    assert metrics.registry.get_sample_value("smartcar_etl_runs_total", aborted) == 1


def test_the_documented_metrics_table_names_every_metric_the_job_exports() -> None:
    import re

    page = (Path(__file__).resolve().parent.parent / "docs" / "monitoring.md").read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `(smartcar_etl_[a-z_]+)", page, re.MULTILINE))
    exported = set()
    for family in Metrics().registry.collect():
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    assert table == exported


def test_a_first_signal_is_a_graceful_stop_even_when_the_pass_was_already_stopping() -> None:
    import os

    from etl.stop import stop_on_signals

    stop = StopRequest()
    stop.set()  # the outage guard (or a fatal answer) had stopped the sending, with no reason given
    with stop_on_signals(stop, grace=60):
        os.kill(os.getpid(), signal.SIGTERM)  # not a second signal: no interruption
        time.sleep(0.05)
    assert stop.reason == "SIGTERM"


def test_an_interruption_waits_for_the_database_write_in_progress() -> None:
    import os

    from etl.stop import shielded, stop_on_signals

    done: list[str] = []
    with stop_on_signals(StopRequest(), grace=60):
        os.kill(os.getpid(), signal.SIGTERM)  # the first: a graceful stop
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt):
            with shielded():  # a batch being written
                os.kill(os.getpid(), signal.SIGTERM)  # the second: it waits for the write
                time.sleep(0.05)
                done.append("written whole")
        done.append("interrupted after")
    assert done == ["written whole", "interrupted after"]
