"""A self-contained demonstration: the fake API on loopback, SQLite, a few passes, a report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from etl.config import ApiConfig, Config, RateLimitConfig, RetryConfig, Secret
from etl.db.engine import make_engine
from etl.db.store import Store, sqlite_run_triggers
from etl.errors import ConfigError
from etl.fakeapi import FakeApi, serve, urls
from etl.output import render
from etl.reports import changes_after_first_fetch, permissions_by_vehicle
from etl.sync import sync
from etl.tracking import track

DEMO_TRIGGER = "demo"
# A well-formed id the fake API does not know: the demo shows it classified as deleted.
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


def _is_demo_database(path: Path) -> bool:
    triggers = sqlite_run_triggers(path)
    return triggers is not None and triggers <= {DEMO_TRIGGER}


def prepare_database(path: Path) -> None:
    """Remove an earlier demo database at ``path``; refuse to touch any other file."""
    if not path.exists():
        return
    if not _is_demo_database(path):
        msg = f"--database: {path} exists and is not a demo database; choose another path"
        raise ConfigError(msg)
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def run_demo(
    *, database: Path, connections_count: int = 30, passes: int = 4, seed: int = 7,
    out: Callable[[str], None],
) -> None:
    """Run the demonstration, writing its story and report through ``out``."""
    prepare_database(database)
    fake = FakeApi(client_id="demo-client", client_secret="demo-secret-not-real")
    ids = fake.populate(connections_count, seed=seed)
    store = Store(make_engine(f"sqlite:///{database}"))
    try:
        store.upgrade()
        with serve(fake) as root:
            config = Config(
                database_url=f"sqlite:///{database}",
                api=ApiConfig(base_url=urls(root)["base_url"], token_url=urls(root)["token_url"],
                              client_id=fake.client_id,
                              client_secret=Secret(fake.client_secret), timeout_seconds=10, concurrency=4),
                retry=RetryConfig(initial_backoff_seconds=0.05, max_backoff_seconds=0.5),
                rate_limit=RateLimitConfig(capacity=10_000, per_minute=600_000),  # the fake has no limit
            )
            out(f"Fake Smartcar API on {root}; database {database}")
            track(store, ids + [UNKNOWN_ID])
            out(f"Tracking {len(ids) + 1} connection ids (one of them unknown to the API).\n")
            for number in range(1, passes + 1):
                if number > 1:
                    for line in fake.churn(seed=seed + number, changes=4):
                        out(f"  world: {line}")
                if number == 2:
                    fake.fail_next(503, times=2)
                    out("  world: the API will answer 503 twice (the job retries)")
                result = sync(config, store, trigger=DEMO_TRIGGER, ignore_due=True)
                out(f"pass {number}: {result.summary()}\n")
        out(_report(store))
    finally:
        store.engine.dispose()
    out(f"\nQuery it yourself: sqlite3 {database} 'SELECT * FROM permission_changes'")


def _report(store: Store) -> str:
    changes = changes_after_first_fetch(store.engine)
    per_vehicle: dict[tuple[str, str, str], list[str]] = {}
    for make, model, vehicle_id, permission in permissions_by_vehicle(store.engine):
        per_vehicle.setdefault((make, model, vehicle_id), []).append(permission)
    rows = [{"vehicle": f"{make} {model}", "vehicle_id": vid[:8], "permissions": ", ".join(p)}
            for (make, model, vid), p in per_vehicle.items()]
    change_rows = [{**row, "observed_at": row["observed_at"].strftime("%H:%M:%S.%f"),
                    "connection_id": row["connection_id"][:8]} for row in changes]
    return "\n".join([
        "Permission changes after the first pass:",
        render(change_rows, ["observed_at", "change", "permission", "make", "model", "connection_id"]),
        "",
        "Current permissions per vehicle:",
        render(rows, ["vehicle", "vehicle_id", "permissions"]),
    ])
