"""The benchmark scripts still run (tiny sizes; their figures are not asserted: speed is not a test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import admin_url

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def servers() -> list[str]:
    """``--postgres-url`` and ``--mariadb-url`` for the test servers (skip without them, fail where required)."""
    return ["--postgres-url", admin_url("postgresql"), "--mariadb-url", admin_url("mariadb")]


def bench(script: str, *args: str, timeout: int = 300, env: dict[str, str] | None = None) -> str:
    """Run ``benchmarks/SCRIPT ARGS``; its standard output (it must exit 0)."""
    done = subprocess.run([sys.executable, script, *args], cwd=BENCH, capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.postgres
@pytest.mark.mariadb
def test_bench_sync_runs() -> None:
    out = bench("bench_sync.py", "--connections", "60", *servers())
    for label in ("raw fetch, no database", "sync SQLite, unchanged pass", "sync PostgreSQL, first pass",
                  "store only PostgreSQL, unchanged", "sync MariaDB, first pass", "sync MariaDB, unchanged pass",
                  "store only MariaDB, first pass"):
        assert label in out


def test_bench_ratelimit_runs() -> None:
    out = bench("bench_ratelimit.py", "--connections", "30", "--capacity", "5", "--per-minute", "6000", timeout=120)
    assert "429 answers: 0" in out and "of the allowed rate" in out


def test_bench_send_prints_each_layer() -> None:
    out = bench("bench_send.py", "--connections", "40", "--rounds", "1", "--server", "memory", timeout=120)
    for layer in ("transport alone", "httpx.Client.send", "ApiClient.send (no cookies)", "the job's send"):
        assert layer in out
    assert "1.00 of the transport alone" in out


@pytest.mark.postgres
def test_bench_compare_runs_two_installations_alternating() -> None:
    job = str(Path(sys.executable).with_name("smartcar-etl")) + ":1"
    shell = {**os.environ, "SMARTCAR_ETL_API_BASE_URL": "http://127.0.0.1:9/v3"}  # left out of the runs
    out = bench("bench_compare.py", "--a", job, "--b", job, "--connections", "60", "--runs", "2", "--strategy", "list",
                "--server", "memory", "--postgres-url", admin_url("postgresql"), env=shell)
    runs = [line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  run ")]
    assert runs == ["run 1 A", "run 1 B", "run 2 B", "run 2 A"]  # alternating
    assert "sync --strategy list, PostgreSQL" in out
    for label in ("first pass: median A", "unchanged pass: median A"):
        assert label in out and "B/A" in out
    for args, said in ((["--a", "no-such-file:1", "--b", job], "expected PATH:N with an existing smartcar-etl, "
                                                                 "got 'no-such-file:1'"),
                       (["--a", job, "--b", job, "--runs", "0"], "expected a whole number of at least 1, got '0'")):
        wrong = subprocess.run([sys.executable, "bench_compare.py", *args], cwd=BENCH, capture_output=True,
                               text=True, timeout=60)
        assert wrong.returncode == 2 and said in wrong.stderr and "Traceback" not in wrong.stderr


@pytest.mark.postgres
@pytest.mark.mariadb
@pytest.mark.parametrize("server", ["memory", "auto"])
def test_bench_sync_static_mode_runs(server: str) -> None:
    # Every database with the server the machine has (auto); the in-memory server on SQLite alone, beside it
    # (where there is no nginx the two would otherwise measure the same thing twice).
    chosen = servers() if server == "auto" else ["--postgres-url", "", "--mariadb-url", ""]
    out = bench("bench_sync.py", "--static", "--sizes", "150", "--server", server, *chosen)
    served_by = out.split("served by ", 1)[1].split(":", 1)[0]
    assert served_by.startswith("in-memory asyncio server") if server == "memory" else served_by in (
        "nginx, 1 worker", "in-memory asyncio server (no nginx on this machine)")
    for label in ("httpx loop, per id", "sync --strategy ids, unchanged pass", "sync --strategy list, first pass",
                  "per-stage µs per connection, listing", "building rows", "ceiling"):
        assert label in out
    databases = 3 if server == "auto" else 1
    assert out.count("MB") >= 4 * databases  # a peak RSS for each pass of each database
    assert ("MariaDB" in out) == (server == "auto")


@pytest.mark.postgres
@pytest.mark.mariadb
def test_bench_archive_runs() -> None:
    out = bench("bench_archive.py", "--connections", "40", "--passes", "3", *servers())
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert set(rows) == {"SQLite", "PostgreSQL", "MariaDB"}
    for figures in rows.values():
        archive, history, payload, canonical, spans = (float(f.replace(",", "")) for f in figures)
        assert archive > 0 and history > 0 and 0 < payload <= canonical and spans >= 1


@pytest.mark.postgres
@pytest.mark.mariadb
def test_bench_html_runs() -> None:
    out = bench("bench_html.py", "--connections", "200", *servers())
    for name in ("SQLite", "PostgreSQL", "MariaDB"):
        assert f"{name}: loaded" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("  last ")]
    assert len(rows) == 6  # two windows on each database
    for row in rows:
        total, held, changes, fleet, render, kilobytes = (float(f) for f in row[-6:])
        assert abs(total - (held + changes + fleet)) < 0.02 and render > 0 and kilobytes > 10
