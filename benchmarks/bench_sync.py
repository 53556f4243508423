"""Benchmark: connections per second of a full `sync`, against the raw fetch rate of the same client.

Starts `smartcar-etl fake-api` in its own process on loopback with N connections,
then measures, with the same client settings:

- raw fetch: every GET through the job's client and ``fetch_outcomes``, nothing stored;
- sync into SQLite (a temporary file), PostgreSQL and MariaDB (a temporary database
  on each server), first pass (everything new) and second pass (nothing changed);
- the store alone (parsed records written in batches, no HTTP), to show its headroom.

Usage:
    .venv/bin/python benchmarks/bench_sync.py [--connections 10000] [--concurrency 8]
        [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
        [--mariadb-url mariadb+pymysql://root@127.0.0.1:3306/test]

With ``--static`` it measures instead the whole ``sync`` command against a
server that is not the bottleneck (nginx if the machine has it, else an
in-memory server), beside a plain httpx loop, at each of ``--sizes``
(default 5000,100000); see ``throughput.py``:

    .venv/bin/python benchmarks/bench_sync.py --static [--sizes 5000,100000] [--server auto|nginx|memory]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from etl.api.documents import parse_connection
from etl.config import ApiConfig, Config, RateLimitConfig, Secret, SyncConfig
from etl.context import build_client
from etl.db.batch import store_batch
from etl.db.engine import make_engine
from etl.db.scratch import scratch_database
from etl.db.store import Store
from etl.fakeapi import FakeApi, urls
from etl.fetch import fetch_outcomes
from etl.outcomes import Fetched
from etl.sync import sync
from etl.tracking import track


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_fake_api(count: int, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl", "fake-api", "--connections", str(count), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # the first export line: the server is listening
    return proc


def raw_fetch(config: Config, ids: list[str]) -> float:
    client = build_client(config)
    try:
        client.auth.token()
        started = time.perf_counter()
        fetched = sum(1 for _ in fetch_outcomes(ids, client=client, concurrency=config.api.concurrency))
        elapsed = time.perf_counter() - started
    finally:
        client.http.close()
    assert fetched == len(ids)
    return len(ids) / elapsed


def sync_rate(config: Config, url: str, ids: list[str]) -> tuple[float, float]:
    store = Store(make_engine(url))
    try:
        store.upgrade()
        track(store, ids)
        rates = []
        for _ in range(2):
            started = time.perf_counter()
            result = sync(config, store, ignore_due=True)  # the second pass refetches everything
            rates.append(len(ids) / (time.perf_counter() - started))
            assert result.counts.fetched == len(ids), result.summary()
        return rates[0], rates[1]
    finally:
        store.engine.dispose()


def store_rate(url: str, fake: FakeApi, ids: list[str], batch_size: int) -> tuple[float, float]:
    """Connections/s of the store alone: parsed records written in batches, first and unchanged pass."""
    records = [parse_connection({"data": fake.document(fake.connections[i])}, expected_id=i, path="-")
               for i in ids]
    store = Store(make_engine(url))
    rates = []
    try:
        store.upgrade()
        track(store, ids)
        for n in range(2):
            at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=n)
            run_id, _ = store.start_run(trigger="sync", planned=len(ids), at=at)
            started = time.perf_counter()
            for start in range(0, len(records), batch_size):
                with store.engine.begin() as conn:
                    store_batch(conn=conn, run_id=run_id, outcomes=[
                        Fetched(r.connection_id, at, r) for r in records[start:start + batch_size]])
            rates.append(len(ids) / (time.perf_counter() - started))
    finally:
        store.engine.dispose()
    return rates[0], rates[1]


def server_database(admin_url: str) -> Iterator[str]:
    """The URL of a temporary database on a server (PostgreSQL, MariaDB), dropped afterwards
    (a generator for contextmanager)."""
    with scratch_database(admin_url, prefix="etl_bench_") as url:
        yield url


def sqlite_database() -> Iterator[str]:
    """The URL of a SQLite file in a temporary directory (a generator for contextmanager)."""
    with tempfile.TemporaryDirectory() as tmp:
        yield f"sqlite:///{Path(tmp) / 'bench.db'}"


def databases(args: argparse.Namespace) -> dict[str, Callable[[], Iterator[str]]]:
    """The databases to measure, by name: SQLite, then each server given a URL (``""`` leaves it out)."""
    chosen: dict[str, Callable[[], Iterator[str]]] = {"SQLite": sqlite_database}
    for name, admin_url in (("PostgreSQL", args.postgres_url), ("MariaDB", args.mariadb_url)):
        if admin_url:
            chosen[name] = lambda url=admin_url: server_database(url)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--postgres-url", default=os.environ.get(
        "ETL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                        help='an admin URL where temporary databases may be created ("" to leave PostgreSQL out)')
    parser.add_argument("--mariadb-url", default=os.environ.get(
        "ETL_TEST_MARIADB_URL", "mariadb+pymysql://root@127.0.0.1:3306/test"),
                        help='likewise for MariaDB ("" to leave it out)')
    parser.add_argument("--static", action="store_true",
                        help="the whole sync command against a static server, beside a plain httpx loop")
    parser.add_argument("--sizes", default="5000,100000", help="with --static: connection counts, comma-separated")
    parser.add_argument("--server", choices=("auto", "nginx", "memory"), default="auto",
                        help="with --static: what serves the documents (auto: nginx if the machine has it)")
    parser.add_argument("--archive", choices=("on", "off", "both"), default="on",
                        help="with --static: config archive.enabled for the job's passes (both: each, in one run)")
    args = parser.parse_args()
    if args.static:
        from throughput import static_mode

        archive = {"on": (True,), "off": (False,), "both": (True, False)}[args.archive]
        static_mode([int(n) for n in args.sizes.split(",")], databases(args), args.concurrency, args.server, archive)
        return

    ids = FakeApi().populate(args.connections, seed=0)  # the same world the server builds
    port = free_port()
    server = start_fake_api(args.connections, port)
    fake = FakeApi()
    config = Config(
        api=ApiConfig(**urls(f"http://127.0.0.1:{port}"), client_id=fake.client_id,  # type: ignore[arg-type]
                      client_secret=Secret(fake.client_secret), concurrency=args.concurrency, timeout_seconds=30),
        sync=SyncConfig(batch_size=args.batch_size, strategy="ids"),
        rate_limit=RateLimitConfig(capacity=10_000_000, per_minute=6e9),  # measure the job, not the limit
    )
    results: list[tuple[str, float]] = []
    try:
        raw_fetch(config, ids)  # a warm-up round, discarded, as the fake server starts cold
        raw = raw_fetch(config, ids)
        results.append(("raw fetch, no database", raw))
        for name, database in databases(args).items():
            with contextmanager(database)() as url:
                first, second = sync_rate(replace(config, database_url=url), url, ids)
            results += [(f"sync {name}, first pass", first), (f"sync {name}, unchanged pass", second)]
    finally:
        server.terminate()
        server.wait(timeout=10)
    local = FakeApi()
    local.populate(args.connections, seed=0)
    for name, database in databases(args).items():
        with contextmanager(database)() as url:
            first, second = store_rate(url, local, ids, args.batch_size)
        results += [(f"store only {name}, first pass", first), (f"store only {name}, unchanged", second)]

    print(f"{args.connections} connections, concurrency {args.concurrency}, batch {args.batch_size}, "
          f"fake API in its own process on loopback")
    print(f"{'measurement':34} {'conn/s':>8} {'vs raw':>7}")
    for label, rate in results:
        print(f"{label:34} {rate:8.0f} {rate / raw:7.0%}")


if __name__ == "__main__":
    main()
