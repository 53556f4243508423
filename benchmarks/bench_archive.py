"""Benchmark: how much the document archive takes, per connection, after a number of passes.

Runs the real ``sync`` (fake API through httpx.MockTransport, in process) over N connections for P
passes, with a fraction F of them changing their permissions before each pass, into a temporary
database on each of SQLite, PostgreSQL and MariaDB; then prints the bytes per connection of the
archive's tables (indexes included) beside those of the permission history, and the stored payload.

Usage:
    .venv/bin/python benchmarks/bench_archive.py [--connections 2000] [--passes 10] [--changed 0.05]
        [--postgres-url URL|""] [--mariadb-url URL|""]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
from contextlib import contextmanager
from dataclasses import replace

import httpx
from bench_sync import databases
from sqlalchemy import func, select

from etl.config import ApiConfig, Config, RateLimitConfig, RetryConfig, Secret, SyncConfig
from etl.context import Seams
from etl.db.dialects import dialect_for
from etl.db.engine import make_engine
from etl.db.models import archive_bodies, archive_spans
from etl.db.store import Store
from etl.fakeapi import FakeApi
from etl.sync import sync
from etl.tracking import track

ARCHIVE = ("archive_bodies", "archive_spans")
HISTORY = ("permission_grants", "permission_changes")
PERMISSIONS = ["read_location", "read_odometer", "read_vin", "read_battery", "read_charge", "control_charge"]


def measure(url: str, count: int, passes: int, changed: float) -> dict[str, float]:
    """Run the passes into ``url``; bytes per connection of the archive and the history, and the payload."""
    fake = FakeApi(client_id="bench", client_secret="bench-secret-value")
    ids = fake.populate(count, seed=1)
    rng = random.Random(2)
    clock = {"now": dt.datetime(2026, 3, 1, tzinfo=dt.UTC)}

    def now() -> dt.datetime:
        clock["now"] += dt.timedelta(microseconds=10)
        return clock["now"]

    config = Config(database_url=url, api=ApiConfig(base_url="https://api.test/v3", token_url="https://auth.test/oauth2/token",
                                                     client_id="bench", client_secret=Secret("bench-secret-value")),
                    retry=RetryConfig(max_attempts=2), sync=SyncConfig(strategy="ids"),
                    rate_limit=RateLimitConfig(capacity=10_000_000, per_minute=6e9))
    store = Store(make_engine(url))
    try:
        store.upgrade()
        track(store, ids)
        for _ in range(passes):
            for cid in rng.sample(ids, int(count * changed)):
                fake.set_permissions(cid, rng.sample(PERMISSIONS, rng.randint(1, len(PERMISSIONS))))
            clock["now"] += dt.timedelta(minutes=15)
            sync(replace(config), store, ignore_due=True,
                 seams=Seams(transport=httpx.MockTransport(fake.handle), sleep=lambda s: None, now=now))
        with store.engine.connect() as conn:
            sizes = dialect_for(conn).table_bytes(conn, ARCHIVE + HISTORY)
            payload = conn.scalar(select(func.sum(func.length(archive_bodies.c.body)))) or 0
            canonical = conn.scalar(select(func.sum(archive_bodies.c.size))) or 0
            spans = conn.scalar(select(func.count()).select_from(archive_spans)) or 0
    finally:
        store.engine.dispose()
    return {"archive": sum(sizes[t] for t in ARCHIVE) / count, "history": sum(sizes[t] for t in HISTORY) / count,
            "payload": payload / count, "canonical": canonical / count, "spans": spans / count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--changed", type=float, default=0.05, help="fraction of connections changed per pass")
    parser.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--mariadb-url", default="mariadb+pymysql://root@127.0.0.1:3306/test")
    args = parser.parse_args()
    print(f"{args.connections} connections, {args.passes} passes, {args.changed:.0%} changed before each")
    print(f"{'database':12} {'archive B/conn':>15} {'history B/conn':>15} {'payload B/conn':>15} "
          f"{'canonical B/conn':>17} {'spans/conn':>11}")
    for name, database in databases(args).items():
        with contextmanager(database)() as url:
            m = measure(url, args.connections, args.passes, args.changed)
        print(f"{name:12} {m['archive']:15,.0f} {m['history']:15,.0f} {m['payload']:15,.0f} "
              f"{m['canonical']:17,.0f} {m['spans']:11.2f}")


if __name__ == "__main__":
    main()
