"""``bench_sync.py --static``: the whole ``sync`` command against a server that is not the bottleneck.

For each database and size it prints, side by side in one run:

- the plain httpx loop (one ``httpx.Client``, sequential GETs, ``json.loads``,
  nothing stored), per id and over the listing's pages: the reference;
- the job's whole ``smartcar-etl sync`` command (a child process, start-up
  included), per id (``--strategy ids --all``) and through the listing
  (``--strategy list``), first pass (everything new) and unchanged pass, with
  its ratio to the reference and the child's peak RSS (VmHWM, ``peak.py``).
  Each pass has its own reference: the loop measured just before and just
  after it (on its first 2,000 ids per id), since on shared cores the loop
  moves by a third within minutes;
- a per-stage breakdown, in µs per connection, of the same work done in this
  process one stage at a time on one thread: request (the job's client: token,
  rate budget in the database, send, bounded read, classify), JSON parse,
  validation, building rows (``store_batch`` minus its SQL), SQL, commit; then
  the whole command's µs per connection and what it spends beyond the stages:
  start-up, run bookkeeping and the hand-offs between the fetch threads and
  the writer (below zero where threads overlapped the stages).

The rate budget is switched on, kept in the database as in production, with a
capacity too large to make anyone wait: a pass pays for its bookkeeping.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event
from static_api import PAGE_SIZE, ceiling, serve, write_world

from etl.api.documents import decode_json, parse_connection, parse_resource
from etl.config import ApiConfig, Config, RateLimitConfig, Secret
from etl.context import build_client
from etl.db.batch import store_batch
from etl.db.engine import make_engine
from etl.db.store import Store
from etl.outcomes import Fetched

TOKEN = "bench-token"  # noqa: S105 - nothing checks it
CAPACITY, PER_MINUTE = 10_000_000, 10_000_000.0  # switched on, the largest the config takes: never waited for


@dataclass
class Figures:
    """One database at one size."""

    database: str
    count: int
    # label, conn/s, the reference's conn/s, ratio, RSS
    rows: list[tuple[str, float, float, float, float | None]] = field(default_factory=list)

    def add(self, label: str, rate: float, reference: float, rss: float | None = None) -> None:
        self.rows.append((label, rate, reference, rate / reference, rss))


def config_file(directory: Path, base_url: str, concurrency: int, archive: bool = True) -> Path:
    """The job's YAML for the static server (``archive``: config archive.enabled)."""
    path = directory / "config.yaml"
    path.write_text(json.dumps({
        "api": {"base_url": base_url, "token_url": base_url + "/token", "concurrency": concurrency},
        "rate_limit": {"capacity": CAPACITY, "per_minute": PER_MINUTE},
        "archive": {"enabled": archive},
    }))
    return path


def command(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``smartcar-etl ARGS``; (seconds, peak RSS in MB). Exit 0 or 1 is expected."""
    with tempfile.NamedTemporaryFile() as peak:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name("peak.py")), *args],
                              env={**env, "ETL_BENCH_PEAK": peak.name}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, check=False)
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"smartcar-etl {' '.join(args)} exited {proc.returncode}: "
                               f"{proc.stderr.decode()[-2000:]}")
        return elapsed, int(Path(peak.name).read_text() or 0) / 1024


def httpx_ids(base_url: str, ids: list[str]) -> float:
    """Connections/s of one httpx.Client fetching and parsing each id in turn."""
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        started = time.perf_counter()
        for connection_id in ids:
            response = client.get(f"{base_url}/connections/{connection_id}")
            assert json.loads(response.content)["data"]["id"] == connection_id
        return len(ids) / (time.perf_counter() - started)


def httpx_listing(base_url: str, count: int) -> float:
    """Connections/s of one httpx.Client reading and parsing every page of the listing."""
    seen = 0
    with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        started = time.perf_counter()
        for number in range(1, -(-count // PAGE_SIZE) + 1):
            response = client.get(f"{base_url}/connections",
                                  params={"page[number]": number, "page[size]": PAGE_SIZE})
            seen += len(json.loads(response.content)["data"])
        elapsed = time.perf_counter() - started
    assert seen == count
    return count / elapsed


class Stages:
    """Per-stage seconds, for a breakdown per connection."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(
            ("request", "JSON parse", "validation", "building rows", "SQL", "commit"), 0.0)

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - started

    def per_connection(self, count: int) -> dict[str, float]:
        return {stage: seconds / count * 1e6 for stage, seconds in self.seconds.items()}


def _sql_timer(store: Store, stages: Stages) -> Callable[[], None]:
    """Count the time spent in cursor executions, and in COPY (PostgreSQL's bulk inserts, which SQLAlchemy does
    not see), into stages['SQL']; return the function that stops it. The benchmark wraps the database object's
    ``insert_rows`` for that (an attribute of this instance, removed after); the job itself is never instrumented."""
    starts: list[float] = []

    def before(*_: object) -> None:
        starts.append(time.perf_counter())

    def after(*_: object) -> None:
        stages.seconds["SQL"] += time.perf_counter() - starts.pop()

    database = store.dialect
    original = database.insert_rows

    def timed_insert_rows(conn: Any, table: Any, rows: Any) -> None:
        sql_before, started = stages.seconds["SQL"], time.perf_counter()
        original(conn, table, rows)  # its cursor executions (not COPY) are in its own time: counted once
        stages.seconds["SQL"] = sql_before + time.perf_counter() - started

    event.listen(store.engine, "before_cursor_execute", before)
    event.listen(store.engine, "after_cursor_execute", after)
    database.insert_rows = timed_insert_rows  # type: ignore[method-assign]

    def stop() -> None:
        event.remove(store.engine, "before_cursor_execute", before)
        event.remove(store.engine, "after_cursor_execute", after)
        del database.insert_rows  # the class's own again
    return stop


def _store_in_batches(store: Store, records: list[Fetched], stages: Stages, batch: int = 500) -> None:
    stop = _sql_timer(store, stages)
    run_id, _ = store.start_run(trigger="sync", planned=len(records), at=records[0].observed_at)
    try:
        for start in range(0, len(records), batch):
            conn = store.engine.connect()
            try:
                trans = conn.begin()
                sql_before = stages.seconds["SQL"]
                with stages.timing("building rows"):
                    store_batch(conn=conn, run_id=run_id, outcomes=records[start:start + batch])
                stages.seconds["building rows"] -= stages.seconds["SQL"] - sql_before
                with stages.timing("commit"):
                    trans.commit()
            finally:
                conn.close()
    finally:
        stop()


def breakdown(config: Config, url: str, ids: list[str], *, listing: bool) -> list[dict[str, float]]:
    """Per-stage µs per connection of a first and an unchanged pass, one stage at a time on one thread."""
    store = Store(make_engine(url))
    passes = []
    try:
        store.upgrade()
        store.track(ids, at=dt.datetime.now(dt.UTC))
        client = build_client(config, store=store)
        for n in range(2):
            stages = Stages()
            bodies: list[bytes] = []
            with stages.timing("request"):
                if listing:
                    for number in range(1, -(-len(ids) // PAGE_SIZE) + 1):
                        bodies.append(client.get("/connections", params={
                            "page[number]": number, "page[size]": PAGE_SIZE}).content)
                else:
                    bodies = [client.get(f"/connections/{i}").content for i in ids]
            with stages.timing("JSON parse"):
                parsed = [decode_json(b) for b in bodies]
            at = dt.datetime.now(dt.UTC) + dt.timedelta(days=n / 2)  # a later pass, not a day later
            with stages.timing("validation"):
                if listing:
                    records = [Fetched(r.connection_id, at, r) for body in parsed for r in (
                        parse_resource(item, expected_id=None, path="/connections") for item in body["data"])]
                else:
                    records = [Fetched(i, at, parse_connection(body, expected_id=i, path="-"))
                               for i, body in zip(ids, parsed, strict=True)]
            _store_in_batches(store, records, stages)
            passes.append(stages.per_connection(len(ids)))
        client.http.close()
    finally:
        store.engine.dispose()
    return passes


AROUND = 2000  # ids of the loop measured just before and just after each pass of the job


def job_passes(env: dict[str, str], strategy: str, ids_file: Path,
               reference: Callable[[], float]) -> list[tuple[float, float, float]]:
    """(seconds, peak RSS MB, reference) of the first and the unchanged pass of ``sync --strategy``.

    ``reference`` (the plain loop's conn/s) is measured just before and just
    after each pass; its mean is that pass's reference. On shared cores the
    loop moves by a third within minutes, so one measurement at the start
    would make a ratio of whatever the machine did in between.
    """
    command(["db", "upgrade"], env)
    command(["connections", "import", str(ids_file)], env)
    args = ["sync", "--strategy", strategy] + (["--all"] if strategy == "ids" else [])
    passes = []
    for _ in range(2):
        before = reference()
        seconds, rss = command(args, env)
        passes.append((seconds, rss, (before + reference()) / 2))
    return passes


def measure(database: str, url: str, world: tuple[str, list[str], Path], concurrency: int,
            archive: bool = True) -> Figures:
    """The whole comparison for one database (``url`` of an empty database) and one world."""
    base_url, ids, directory = world
    figures = Figures(database, len(ids))
    ref_ids = httpx_ids(base_url, ids)
    figures.add("httpx loop, per id", ref_ids, ref_ids)
    env = {**os.environ, "SMARTCAR_ACCESS_TOKEN": TOKEN, "SMARTCAR_ETL_DATABASE_URL": url,
           "SMARTCAR_ETL_CONFIG": str(config_file(directory, base_url, concurrency, archive))}
    ids_file = directory / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    passes = job_passes(env, "ids", ids_file, lambda: httpx_ids(base_url, ids[:AROUND]))
    for (seconds, rss, around), label in zip(passes, ("first", "unchanged"), strict=True):
        figures.add(f"sync --strategy ids, {label} pass", len(ids) / seconds, around, rss)
    ref_list = httpx_listing(base_url, len(ids))
    figures.add("httpx loop, listing pages", ref_list, ref_list)
    return figures


def listing_figures(figures: Figures, url: str, world: tuple[str, list[str], Path], concurrency: int,
                    archive: bool = True) -> None:
    """Add the listing's passes (on their own empty database ``url``) to ``figures``."""
    base_url, ids, directory = world
    env = {**os.environ, "SMARTCAR_ACCESS_TOKEN": TOKEN, "SMARTCAR_ETL_DATABASE_URL": url,
           "SMARTCAR_ETL_CONFIG": str(config_file(directory, base_url, concurrency, archive))}
    passes = job_passes(env, "list", directory / "ids.txt", lambda: httpx_listing(base_url, len(ids)))
    for (seconds, rss, around), label in zip(passes, ("first", "unchanged"), strict=True):
        figures.add(f"sync --strategy list, {label} pass", len(ids) / seconds, around, rss)


def print_figures(figures: Figures) -> None:
    print(f"\n{figures.database}, {figures.count} connections")
    print(f"  {'measurement':38} {'conn/s':>9} {'httpx loop':>11} {'vs httpx':>9} {'peak RSS':>9}")
    for label, rate, reference, ratio, rss in figures.rows:
        shown = f"{rss:6.0f} MB" if rss is not None else ""
        print(f"  {label:38} {rate:9.0f} {reference:11.0f} {ratio:9.2f} {shown:>9}")
    print("  (each pass against the loop measured just before and after it; the first loop row, at the start)")


def print_breakdown(figures: Figures, count: int, kind: str, passes: list[dict[str, float]]) -> None:
    """The stages, their sum, the whole command's µs per connection (at its own size) and what it spends beyond."""
    print(f"\n{figures.database}, per-stage µs per connection, {kind}, {count} connections, one thread")
    print(f"  {'stage':28} {'first pass':>11} {'unchanged':>11}")
    for stage in passes[0]:
        print(f"  {stage:28} {passes[0][stage]:11.1f} {passes[1][stage]:11.1f}")
    sums = [sum(p.values()) for p in passes]
    print(f"  {'sum of the stages':28} {sums[0]:11.1f} {sums[1]:11.1f}")
    strategy = "ids" if kind == "per id" else "list"
    whole = [1e6 / rate for label, rate, *_ in figures.rows if label.startswith(f"sync --strategy {strategy},")]
    print(f"  {f'whole sync, {figures.count} conns':28} {whole[0]:11.1f} {whole[1]:11.1f}")
    print(f"  {'whole minus the stages':28} {whole[0] - sums[0]:11.1f} {whole[1] - sums[1]:11.1f}"
          "   (start-up, run bookkeeping, hand-offs; below 0: threads overlapped stages)")


def static_mode(counts: list[int], databases: dict[str, Callable[[], Iterator[str]]], concurrency: int,
                server: str = "auto", archive: tuple[bool, ...] = (True,)) -> None:
    """The whole static-server comparison; ``databases`` maps a name to a context giving an empty database.

    ``archive``: the settings of archive.enabled to measure the job's passes with (each in the same run).
    """
    for count in counts:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            ids = write_world(directory / "www", count)
            with serve(directory / "www", server) as (base_url, what):
                print(f"\n== {count} connections, served by {what}: ceiling {ceiling(base_url, ids):,.0f} "
                      f"answers/s to a pipelined raw socket; job concurrency {concurrency}, rate budget on")
                httpx_ids(base_url, ids)  # warm the server and the page cache
                httpx_listing(base_url, len(ids))
                world = (base_url, ids, directory)
                for name, database in databases.items():
                    for archived in archive:
                        label = name if archive == (True,) else f"{name}, archive {'on' if archived else 'off'}"
                        with contextmanager(database)() as url:
                            figures = measure(label, url, world, concurrency, archived)
                        with contextmanager(database)() as url:
                            listing_figures(figures, url, world, concurrency, archived)
                        print_figures(figures)
                    figures.database = name  # the breakdown below runs in this process, with the archive on
                    sample = ids[:5000]
                    config = Config(api=ApiConfig(base_url=base_url, access_token=Secret(TOKEN)),
                                    rate_limit=RateLimitConfig(capacity=CAPACITY, per_minute=PER_MINUTE))
                    for kind, listing in (("per id", False), ("listing", True)):
                        with contextmanager(database)() as url:
                            print_breakdown(figures, len(sample), kind,
                                            breakdown(config, url, sample, listing=listing))
