"""A self-contained demonstration: the fake API on loopback, SQLite, a few passes, a report."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from etl.config import ApiConfig, Config, RateLimitConfig, RetryConfig, Secret
from etl.db.demofile import create_marked, read_marks
from etl.db.engine import make_engine
from etl.db.store import Store
from etl.errors import ConfigError, clipped
from etl.fakeapi import FakeApi, serve, urls
from etl.output import render
from etl.reports import changes_after_first_fetch, permissions_by_vehicle
from etl.sync import sync
from etl.tracking import track

DEMO_TRIGGER = "demo"
# A well-formed id the fake API does not know: the demo shows it classified as deleted.
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


# SQLite's files beside a database (its journals and shared memory) and the run lock's (etl.db.dialects).
JOURNALS = ("-wal", "-shm", "-journal")
SIBLINGS = (*JOURNALS, ".lock")


def _is_demo_database(path: Path) -> bool:
    """Whether the demo made the file at ``path`` (its marker) and only demo runs have used it since.

    Files of versions before the marker count when they hold runs, every one the demo's, and no journal.
    """
    marks = read_marks(path)  # the file alone: nothing beside it is touched before the proof
    if marks is None:
        return False
    if marks.marked:  # ours, and so are its journals: read them too, for runs not yet in the file
        marks = read_marks(path, with_journal=True)
        return marks is not None and marks.triggers <= {DEMO_TRIGGER}
    journals = any(os.path.lexists(f"{path}{suffix}") for suffix in JOURNALS)  # could hold other runs
    return not journals and marks.triggers == {DEMO_TRIGGER}


def prepare_database(path: Path) -> None:
    """Create a new, marked demo database at ``path``, replacing only one the demo made; never through a link."""
    if path.is_symlink():
        _refuse(path, "is a symbolic link, which the demo does not follow")
    if os.path.lexists(path):
        if not path.is_file() or not _is_demo_database(path):
            _refuse(path, "exists and is not a demo database")
        for sibling in [Path(f"{path}{suffix}") for suffix in SIBLINGS] + [path]:  # the proof goes last
            try:
                sibling.unlink(missing_ok=True)
            except OSError as error:
                _refuse(sibling, f"cannot be removed ({error.strerror})")
    else:
        for suffix in SIBLINGS:
            sibling = Path(f"{path}{suffix}")
            # A journal left without its database would be read into the new one; a link would be followed.
            if sibling.is_symlink() or (os.path.lexists(sibling) and (suffix in JOURNALS or not sibling.is_file())):
                _refuse(sibling, "exists without a demo database beside it")
    try:
        create_marked(path)
    except OSError as error:  # made meanwhile by someone else, or the folder is missing or read-only
        _refuse(path, f"cannot be created ({error.strerror})")


def _refuse(path: Path, why: str) -> NoReturn:
    name = str(path)
    msg = f"--database: {name if len(name) <= 200 and name.isprintable() else clipped(name)} {why}; choose another path"
    raise ConfigError(msg)


def run_demo(
    *, database: Path, connections_count: int = 30, passes: int = 4, seed: int = 7,
    out: Callable[[str], None],
) -> None:
    """Run the demonstration, writing its story and report through ``out``."""
    prepare_database(database)  # before the fake API starts: a refusal costs nothing
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
