"""Benchmark: `report html` over a large synthetic history, its SQL and its rendering timed apart.

Builds a database of N connections (default 288,000) with a year of grant intervals and changes
(first observations, revocations, grants again, disconnections and returns), written with bulk inserts
rather than through the API, then times the page's queries (permissions held per instant, changes per
period, the fleet, the coverage line) and the rendering (charts and HTML), for the default window (the
last 90 days, by day) and for the whole year by week. SQLite by default; ``--postgres-url`` and
``--mariadb-url`` add a temporary database on those servers.

Usage:
    .venv/bin/python benchmarks/bench_html.py [--connections 288000] [--days 365] [--seed 1]
        [--postgres-url URL] [--mariadb-url URL] [--keep PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Table

from etl.db.dialects import dialect_for
from etl.db.engine import make_engine, upgrade
from etl.db.models import connections, permission_changes, permission_grants, users, vehicles
from etl.db.scratch import scratch_database
from etl.report_html import render_page
from etl.reports import PageFigures, Window, changes_per_period, coverage_note, fleet_by_make, held_over_time

NOW = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
PERMISSIONS = ["read_location", "read_odometer", "read_vin", "read_battery", "read_charge", "control_charge",
               "read_tires", "read_engine_oil", "control_security", "read_fuel"]
MAKES = {"Tesla": "BEV", "Ford": "ICE", "Toyota": "HEV", "BMW": "BEV", "Kia": "BEV", "Hyundai": "PHEV",
         "Volkswagen": "ICE", "Audi": "PHEV", "Nissan": "BEV", "Volvo": "PHEV", "Mercedes-Benz": "ICE",
         "Chevrolet": "BEV", "Honda": "HEV", "Jeep": "PHEV", "Rivian": "BEV", "Porsche": "BEV"}
CHUNK = 20_000


class History:
    """Rows of every table for a synthetic history, made one connection at a time."""

    def __init__(self, count: int, days: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.start = NOW - dt.timedelta(days=days)
        self.span = (NOW - self.start).total_seconds()
        self.rows: dict[str, list[dict[str, Any]]] = {"users": [], "vehicles": [], "connections": [],
                                                      "permission_grants": [], "permission_changes": []}
        for n in range(count):
            self.connection(n)

    def at(self, after: dt.datetime, share: float = 1.0) -> dt.datetime:
        """A random instant (to the microsecond) after ``after``, within ``share`` of what is left until now."""
        left = (NOW - after).total_seconds() * share
        return after + dt.timedelta(microseconds=self.rng.randrange(1, max(2, int(left * 1e6))))

    def connection(self, n: int) -> None:
        rng, cid, ident = self.rng, str(uuid.UUID(int=n + 1, version=4)), str(uuid.UUID(int=(1 << 64) + n, version=4))
        seen = self.at(self.start, 0.9)
        make = rng.choice(list(MAKES))
        self.rows["users"].append({"id": ident, "first_seen_at": seen, "last_seen_at": NOW})
        self.rows["vehicles"].append({"id": ident, "make": make, "model": "Model", "year": 2024, "mode": "live",
                                      "powertrain_type": MAKES[make], "first_seen_at": seen, "last_seen_at": NOW})
        held = rng.sample(PERMISSIONS, rng.randint(2, 6))
        open_: dict[str, dt.datetime] = {}
        self.change(cid, held, "first_seen", seen, open_)
        when, status = seen, "active"
        for _ in range(rng.choice((0, 0, 1, 2))):  # later revocations and grants
            when = self.at(when, 0.3)
            permission = rng.choice(PERMISSIONS)
            self.change(cid, [permission], "revoked" if permission in open_ else "granted", when, open_)
        if rng.random() < 0.12:  # disconnected; a third come back
            when = self.at(when, 0.5)
            self.change(cid, sorted(open_), "disconnected", when, open_)
            status = "deleted"
            if rng.random() < 0.33:
                self.change(cid, held, "reconnected", self.at(when, 0.5), open_)
                status = "active"
        self.rows["permission_grants"] += [{"connection_id": cid, "permission": p, "valid_from": since,
                                            "valid_to": None} for p, since in open_.items()]
        self.rows["connections"].append({"id": cid, "user_id": ident, "vehicle_id": ident, "status": status,
                                         "tracked_at": seen, "source_created_at": seen, "first_seen_at": seen,
                                         "last_seen_at": NOW, "last_success_at": NOW})

    def change(self, cid: str, permissions: list[str], kind: str, when: dt.datetime,
               open_: dict[str, dt.datetime]) -> None:
        """Record ``kind`` for each permission at ``when``: open or close its grant, log the change."""
        for permission in permissions:
            granted = kind in ("first_seen", "granted", "reconnected")
            if granted == (permission in open_):
                continue
            if granted:
                open_[permission] = when
            else:
                self.rows["permission_grants"].append({"connection_id": cid, "permission": permission,
                                                       "valid_from": open_.pop(permission), "valid_to": when})
            self.rows["permission_changes"].append({
                "connection_id": cid, "permission": permission, "change": "granted" if granted else "revoked",
                "kind": kind, "observed_at": when, "previous_observed_at": None if kind == "first_seen" else when})


def load(url: str, history: History) -> dict[str, int]:
    """Migrate ``url`` and bulk insert the history; rows per table."""
    engine = make_engine(url)
    try:
        upgrade(engine)
        tables: list[Table] = [users, vehicles, connections, permission_grants, permission_changes]
        for table in tables:
            rows = history.rows[table.name]
            for start in range(0, len(rows), CHUNK):
                with engine.begin() as conn:
                    dialect_for(conn).insert_rows(conn, table, rows[start:start + CHUNK])
    finally:
        engine.dispose()
    return {name: len(rows) for name, rows in history.rows.items()}


def measure(url: str, window: Window) -> tuple[list[float], float, int]:
    """Seconds for each of the page's queries (held, changes, fleet and coverage), seconds for its rendering,
    and the page's size in bytes. The queries are page_figures', one by one."""
    engine = make_engine(url)
    try:
        clock = [time.perf_counter()]
        held = held_over_time(engine, window)
        clock.append(time.perf_counter())
        changes = changes_per_period(engine, window)
        clock.append(time.perf_counter())
        figures = PageFigures(window=window, held=held, changes=changes, fleet=fleet_by_make(engine),
                              coverage=coverage_note(engine, window.since))
        clock.append(time.perf_counter())
        page = render_page(figures)
        clock.append(time.perf_counter())
    finally:
        engine.dispose()
    spans = [later - earlier for earlier, later in zip(clock, clock[1:], strict=False)]
    return spans[:3], spans[3], len(page.encode())


@contextmanager
def sqlite_file(keep: str | None) -> Iterator[str]:
    if keep:
        Path(keep).unlink(missing_ok=True)
        yield f"sqlite:///{Path(keep).resolve()}"
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield f"sqlite:///{Path(tmp) / 'bench.db'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=288_000)
    parser.add_argument("--days", type=int, default=365, help="how far back the history goes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--postgres-url", default="", help="an admin URL where a temporary database may be created")
    parser.add_argument("--mariadb-url", default="", help="likewise for MariaDB")
    parser.add_argument("--keep", help="the SQLite file to build (kept afterwards); default: a temporary one")
    args = parser.parse_args()

    started = time.perf_counter()
    history = History(args.connections, args.days, args.seed)
    print(f"{args.connections:,} connections, {args.days} days of history: made in "
          f"{time.perf_counter() - started:.1f} s")
    targets: dict[str, Callable[[], Any]] = {"SQLite": lambda: sqlite_file(args.keep)}
    for name, admin in (("PostgreSQL", args.postgres_url), ("MariaDB", args.mariadb_url)):
        if admin:
            targets[name] = lambda admin=admin: scratch_database(admin, prefix="etl_bench_")
    windows = {"last 90 days by day": Window(NOW - dt.timedelta(days=90), NOW, "day"),
               f"last {args.days} days by week": Window(NOW - dt.timedelta(days=args.days), NOW, "week")}
    for name, target in targets.items():
        with target() as url:
            started = time.perf_counter()
            counts = load(url, history)
            print(f"{name}: loaded {sum(counts.values()):,} rows ({counts['permission_grants']:,} grants, "
                  f"{counts['permission_changes']:,} changes) in {time.perf_counter() - started:.1f} s")
            print(f"  {'window':<26} {'SQL s':>6} {'(held':>6} {'changes':>7} {'fleet)':>6} {'render s':>8} "
                  f"{'page KB':>7}")
            for label, window in windows.items():
                (held, changes, fleet), render, size = measure(url, window)
                print(f"  {label:<26} {held + changes + fleet:>6.2f} {held:>6.2f} {changes:>7.2f} {fleet:>6.2f} "
                      f"{render:>8.2f} {size / 1024:>7.0f}")


if __name__ == "__main__":
    main()
