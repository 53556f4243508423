"""Backfill: resumable after SIGKILL, ending with the same database; dry run; the progress bar."""

from __future__ import annotations

import contextlib
import os
import pty
import select as selectmodule
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url

from etl.db.engine import make_engine, upgrade
from etl.db.models import backfills, connections, permission_changes, permission_grants, sync_runs, users, vehicles
from etl.db.scratch import scratch_database
from etl.db.store import Store
from etl.fakeapi import FakeApi
from tests.conftest import admin_url

CONFIG = ("api:\n  concurrency: 2\nsync:\n  batch_size: 10\n  page_size: 10\n"
          "rate_limit:\n  capacity: 100000\n  per_minute: 6000000\n")


def content(engine: Engine) -> dict[str, Any]:
    """The database's content without times and run ids: what must not depend on an interruption."""
    c, g, pc, v = connections.c, permission_grants.c, permission_changes.c, vehicles.c
    with engine.connect() as conn:
        return {
            "users": sorted(conn.scalars(select(users.c.id))),
            "vehicles": sorted(map(tuple, conn.execute(select(v.id, v.make, v.model, v.year, v.mode,
                                                              v.powertrain_type)))),
            "connections": sorted(map(tuple, conn.execute(select(c.id, c.user_id, c.vehicle_id, c.status, c.tracked,
                                                                 c.consecutive_failures, c.last_error)))),
            "open_grants": sorted(map(tuple, conn.execute(select(g.connection_id, g.permission)
                                                          .where(g.valid_to.is_(None))))),
            "changes": Counter(map(tuple, conn.execute(select(pc.connection_id, pc.permission, pc.change)))),
        }


@pytest.fixture
def other_engine(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    """A second, migrated database on the same backend, for a reference run."""
    backend = make_url(db_url).get_backend_name()
    with contextlib.ExitStack() as stack:
        url = (f"sqlite:///{tmp_path / 'reference.db'}" if backend == "sqlite"
               else stack.enter_context(scratch_database(admin_url(backend))))
        engine = make_engine(url)
        upgrade(engine)
        yield engine
        engine.dispose()


def env_for(engine: Engine, api: dict[str, str], fake: FakeApi, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "etl.yaml"
    config.write_text(CONFIG)
    return {**os.environ, "SMARTCAR_ETL_CONFIG": str(config),
            "SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False),
            "SMARTCAR_API_BASE_URL": api["base_url"], "SMARTCAR_TOKEN_URL": api["token_url"],
            "SMARTCAR_CLIENT_ID": fake.client_id, "SMARTCAR_CLIENT_SECRET": fake.client_secret}


def etl(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "etl", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def count_active(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).where(connections.c.status == "active")) or 0


@pytest.mark.parametrize("kind", ["ids", "all"])
def test_a_backfill_killed_midway_resumes_to_the_same_database(
    engine: Engine, other_engine: Engine, api_server: dict[str, str], fake_api: FakeApi, tmp_path: Path, kind: str
) -> None:
    ids = fake_api.populate(120, seed=21)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# the backfill\n" + "\n".join(ids) + "\n")
    args = ["backfill", "--ids-file", str(ids_file)] if kind == "ids" else ["backfill", "--all"]

    reference = etl(env_for(other_engine, api_server, fake_api, tmp_path), *args, cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr

    env = env_for(engine, api_server, fake_api, tmp_path)
    fake_api.fail_next(None, delay=0.05, match="/v3/connections", times=10_000)  # slow enough to interrupt
    proc = subprocess.Popen([sys.executable, "-m", "etl", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while count_active(engine) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    interrupted_at = count_active(engine)
    assert 30 <= interrupted_at < 120, "killed part-way"
    fake_api.faults.clear()
    before = fake_api.count("GET", "/v3/connections")

    resumed = etl(env, *args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert content(engine) == content(other_engine)
    with engine.connect() as conn:
        [row] = conn.execute(select(backfills)).all()
        triggers = list(conn.scalars(select(sync_runs.c.trigger)))
        statuses = list(conn.scalars(select(sync_runs.c.status).order_by(sync_runs.c.id)))
    assert row.status == "done" and triggers == ["backfill", "backfill"]
    assert statuses == ["aborted", "succeeded"]  # the killed run was closed by the resumed one
    sent = fake_api.count("GET", "/v3/connections") - before
    if kind == "ids":
        assert sent <= 120 - interrupted_at + 10  # only what was left (and at most a batch in flight)
    else:
        assert fake_api.count("GET", "/v3/connections/") == 0  # a complete listing: nothing to confirm


def test_resume_without_an_interrupted_backfill_is_refused(
    engine: Engine, api_server: dict[str, str], fake_api: FakeApi, tmp_path: Path
) -> None:
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(fake_api.populate(3, seed=22)))
    env = env_for(engine, api_server, fake_api, tmp_path)
    done = etl(env, "backfill", "--ids-file", str(ids_file), "--resume", cwd=tmp_path)
    assert done.returncode == 2 and f"no interrupted backfill of {ids_file} to resume" in done.stderr
    assert etl(env, "backfill", "--ids-file", str(ids_file), cwd=tmp_path).returncode == 0
    done = etl(env, "backfill", "--ids-file", str(ids_file), "--resume", cwd=tmp_path)
    assert done.returncode == 2  # that one finished
    usage = etl(env, "backfill", cwd=tmp_path)
    assert usage.returncode == 2 and "exactly one of --ids-file FILE and --all" in usage.stderr


def test_dry_run_counts_requests_and_time_and_writes_nothing(
    engine: Engine, api_server: dict[str, str], fake_api: FakeApi, tmp_path: Path
) -> None:
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(fake_api.populate(250, seed=23)))
    env = env_for(engine, api_server, fake_api, tmp_path)
    env["SMARTCAR_ETL_CONFIG"] = ""  # Smartcar's default limit: 120 at once, then 2 a minute
    done = etl(env, "backfill", "--ids-file", str(ids_file), "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Would backfill" in done.stdout and "250 connection(s), about 250 request(s)" in done.stdout
    assert "takes about 1h 5m" in done.stdout  # (250 - 120) / 2 a minute
    listing = etl(env, "backfill", "--all", "--dry-run", cwd=tmp_path)
    assert listing.returncode == 0 and "250 connection(s), about 3 request(s)" in listing.stdout
    assert fake_api.count("GET", "/v3/connections/") == 0 and fake_api.count("GET", "/v3/connections") == 1
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(connections)) == 0
        assert conn.scalar(select(func.count()).select_from(backfills)) == 0


def test_backfill_exits_4_when_another_run_holds_the_lock(
    engine: Engine, api_server: dict[str, str], fake_api: FakeApi, tmp_path: Path
) -> None:
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(fake_api.populate(2, seed=24)))
    with Store(engine).lock():
        done = etl(env_for(engine, api_server, fake_api, tmp_path), "backfill", "--ids-file", str(ids_file),
                   cwd=tmp_path)
    assert done.returncode == 4 and "another run holds the lock" in done.stderr
    assert fake_api.count("GET", "/v3/") == 0


def read_all(fd: int, proc: subprocess.Popen[str]) -> str:
    chunks = []
    while True:
        ready, _, _ = selectmodule.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_and_clean_logs_otherwise(
    engine: Engine, api_server: dict[str, str], fake_api: FakeApi, tmp_path: Path
) -> None:
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(fake_api.populate(60, seed=25)))
    env = env_for(engine, api_server, fake_api, tmp_path)
    fake_api.fail_next(None, delay=0.02, match="/v3/connections/", times=10_000)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "etl", "backfill", "--ids-file", str(ids_file)], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=slave, text=True)
    os.close(slave)
    terminal = read_all(master, proc)
    proc.wait(timeout=60)
    os.close(master)
    assert proc.returncode == 0
    assert "backfill" in terminal and "60/60" in terminal and "/s" in terminal and "\r" in terminal

    piped = etl(env, "backfill", "--ids-file", str(ids_file), cwd=tmp_path)
    assert piped.returncode == 0
    assert "\r" not in piped.stderr and "/60" not in piped.stderr
    lines = [line for line in piped.stderr.splitlines() if line.strip()]
    assert lines and all(line[:4].isdigit() and " INFO " in line or " WARNING " in line for line in lines)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the display is the same on every database
def test_sync_shows_the_same_progress_bar_on_a_terminal(
    engine: Engine, api_server: dict[str, str], fake_api: FakeApi, tmp_path: Path
) -> None:
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(fake_api.populate(40, seed=26)))
    env = env_for(engine, api_server, fake_api, tmp_path)
    assert etl(env, "connections", "import", str(ids_file), cwd=tmp_path).returncode == 0
    fake_api.fail_next(None, delay=0.02, match="/v3/connections/", times=10_000)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "etl", "sync", "--all", "--strategy", "ids"], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=slave, text=True)
    os.close(slave)
    terminal = read_all(master, proc)
    proc.wait(timeout=60)
    os.close(master)
    assert proc.returncode == 0
    assert "sync" in terminal and "40/40" in terminal and "\r" in terminal
