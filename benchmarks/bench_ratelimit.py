"""Benchmark: the client-side token bucket against the fake API's own bucket of the same size.

Starts `smartcar-etl fake-api --rate-limit CAPACITY/PER_MINUTE` in its own process
on loopback and runs a `sync` of N connections (one GET each) with the job's
rate limit set to the same bucket. Prints how many requests the API refused
with 429, and how much of the allowed rate the job used: in T seconds a bucket
of capacity C refilled at R a second allows C + R*T requests.

With ``--passes N --max-duration S`` it runs N ``sync`` passes back to back, each
limited to S seconds, over more connections than the bucket allows in that time:
each pass takes the budget where the previous one left it (it is kept in the
database) and leaves what it cannot fetch for the next. Prints each pass's
length, fetched and deferred connections, then the 429s and the share of the
allowed rate used over the whole span.

Usage:
    .venv/bin/python benchmarks/bench_ratelimit.py [--connections 400] [--capacity 20] [--per-minute 3000]
    .venv/bin/python benchmarks/bench_ratelimit.py --connections 600 --capacity 20 --per-minute 600 \
        --passes 3 --max-duration 10
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench_sync import free_port  # type: ignore[import-not-found]

from etl.config import ApiConfig, Config, RateLimitConfig, Secret, SyncConfig
from etl.context import Seams
from etl.db.engine import make_engine
from etl.db.store import Store
from etl.fakeapi import FakeApi, urls
from etl.metrics import Metrics
from etl.sync import sync
from etl.tracking import track


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--capacity", type=int, default=20)
    parser.add_argument("--per-minute", type=float, default=3000.0)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--max-duration", type=float, default=None, help="seconds a pass may take")
    args = parser.parse_args()

    import subprocess
    import sys

    ids = FakeApi().populate(args.connections, seed=0)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "etl", "fake-api", "--connections", str(args.connections), "--port", str(port),
         "--rate-limit", f"{args.capacity}/{args.per_minute:g}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert server.stdout is not None
    server.stdout.readline()
    fake = FakeApi()
    metrics = Metrics()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'rate.db'}"
            config = Config(
                database_url=url,
                api=ApiConfig(**urls(f"http://127.0.0.1:{port}"), client_id=fake.client_id,  # type: ignore[arg-type]
                              client_secret=Secret(fake.client_secret), concurrency=8, timeout_seconds=30),
                rate_limit=RateLimitConfig(capacity=args.capacity, per_minute=args.per_minute),
                sync=SyncConfig(strategy="ids", max_duration_seconds=args.max_duration),
            )
            store = Store(make_engine(url))
            store.upgrade()
            track(store, ids)
            started = time.perf_counter()
            requests = 0
            for number in range(1, args.passes + 1):
                began = time.perf_counter()
                result = sync(config, store, seams=Seams(metrics=metrics), ignore_due=args.passes == 1)
                requests += result.requests
                if args.passes > 1:
                    print(f"pass {number}: {time.perf_counter() - began:.2f}s, {result.counts.fetched} fetched, "
                          f"{result.deferred} deferred, exit {result.exit_code}")
            elapsed = time.perf_counter() - started
            store.engine.dispose()
    finally:
        server.terminate()
        server.wait(timeout=10)
    refused = sum(sample.value for family in metrics.registry.collect() for sample in family.samples
                  if sample.name == "smartcar_etl_api_requests_total" and sample.labels.get("status") == "429")
    per_second = args.per_minute / 60
    allowed = args.capacity + per_second * elapsed
    print(f"{requests} requests for {args.connections} connections in {elapsed:.2f}s; "
          f"bucket {args.capacity} refilled at {per_second:g}/s on both sides")
    print(f"429 answers: {refused:.0f}")
    print(f"allowed in that time: {allowed:.0f}; used: {requests / allowed:.1%} of the allowed rate")


if __name__ == "__main__":
    main()
