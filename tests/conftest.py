"""Fixtures: databases (SQLite file, PostgreSQL server), the fake API, a clock, a config.

PostgreSQL tests need ETL_TEST_POSTGRES_URL (an admin URL on a server where the
tests may create databases); they skip without it, unless ETL_REQUIRE_POSTGRES=1,
which turns the skip into a failure. Every PostgreSQL test gets a database of
its own, created here and dropped afterwards; nothing else on the server is touched.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from etl.check import check_history
from etl.config import ApiConfig, Config, RateLimitConfig, RetryConfig, Secret, SyncConfig
from etl.context import Seams
from etl.db.engine import make_engine, upgrade
from etl.db.store import Store
from etl.fakeapi import FakeApi, serve, urls
from etl.sync import RunResult, sync

PG_URL = os.environ.get("ETL_TEST_POSTGRES_URL")
REQUIRE_PG = os.environ.get("ETL_REQUIRE_POSTGRES") == "1"
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def _pg_admin_url() -> str:
    if not PG_URL:
        if REQUIRE_PG:
            pytest.fail("ETL_REQUIRE_POSTGRES=1 but ETL_TEST_POSTGRES_URL is not set")
        pytest.skip("ETL_TEST_POSTGRES_URL is not set")
    return PG_URL


def _admin_engine(admin_url: str) -> Engine:
    return create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=None)


def create_pg_database(admin_url: str) -> str:
    """Create an empty database of our own; return its URL."""
    name = f"etl_test_{uuid.uuid4().hex[:16]}"
    admin = _admin_engine(admin_url)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(admin_url: str, url: str) -> None:
    """Drop a database that create_pg_database made."""
    name = make_url(url).database
    assert name and name.startswith("etl_test_")
    admin = _admin_engine(admin_url)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database URL: a SQLite file under tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'etl.db'}"
        return
    admin_url = _pg_admin_url()
    url = create_pg_database(admin_url)
    try:
        yield url
    finally:
        drop_pg_database(admin_url, url)


def _checked_in(engine: Engine) -> None:
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    engine.dispose()
    assert checked_out == 0, f"{checked_out} connections were not returned to the pool"


@pytest.fixture
def empty_engine(db_url: str) -> Iterator[Engine]:
    """An engine on an empty (unmigrated) database."""
    engine = make_engine(db_url)
    yield engine
    _checked_in(engine)


@pytest.fixture
def engine(db_url: str, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An engine on a database migrated to the latest revision by Alembic.

    Afterwards `check` must find the history sound, whatever the test did
    (unless it is marked ``corrupts_history``).
    """
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    if request.node.get_closest_marker("corrupts_history") is None:
        result = check_history(engine)
        assert result.ok, result.violations
    _checked_in(engine)


class Clock:
    """A thread-safe fake clock: every call returns a later instant (by ``step``)."""

    def __init__(self, start: dt.datetime = T0, step: dt.timedelta = dt.timedelta(milliseconds=1)) -> None:
        self.now = start
        self.step = step
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            self.now += self.step
            return self.now

    def advance(self, **delta: float) -> None:
        with self._lock:
            self.now += dt.timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake_api() -> FakeApi:
    """The fake API, empty; tests add connections and faults."""
    return FakeApi(client_id="test-client", client_secret="test-client-secret")


def make_config(fake: FakeApi, db_url: str, **api: Any) -> Config:
    """A config for MockTransport tests: fake hosts, the fake's credentials, fast retries."""
    settings: dict[str, Any] = {
        "base_url": "https://api.test/v3",
        "token_url": "https://auth.test/oauth2/token",
        "client_id": fake.client_id,
        "client_secret": Secret(fake.client_secret),
        "concurrency": 4,
        **api,
    }
    # The rate limit is far above anything a test sends, unless a test sets its own.
    # Per-id fetching unless a test asks for the listing (tests of `auto` and `list` do).
    return Config(database_url=db_url, api=ApiConfig(**settings), retry=RetryConfig(max_attempts=5),
                  rate_limit=RateLimitConfig(capacity=1_000_000, per_minute=60_000_000),
                  sync=SyncConfig(strategy="ids"))


class Runner:
    """Runs `sync` against a FakeApi over MockTransport, recording the sleeps it asked for."""

    def __init__(self, fake: FakeApi, engine: Engine, clock: Clock) -> None:
        self.fake = fake
        self.engine = engine
        self.clock = clock
        self.sleeps: list[float] = []
        self.config = make_config(fake, engine.url.render_as_string(hide_password=False))

    def __call__(self, *, advance: dt.timedelta = dt.timedelta(minutes=15), **kwargs: Any) -> RunResult:
        """One pass, ``advance`` (default: one schedule interval) after the previous one, as cron would.

        ``cancelled``, ``metrics`` and ``limiter`` go into the pass's seams; the rest to ``sync``.
        """
        self.clock.advance(seconds=advance.total_seconds())
        seams = {k: kwargs.pop(k) for k in ("cancelled", "metrics", "limiter") if k in kwargs}
        return sync(self.config, Store(self.engine), seams=Seams(
            transport=httpx.MockTransport(self.fake.handle), sleep=self.sleeps.append, now=self.clock, **seams),
            **kwargs)


@pytest.fixture
def run_sync(fake_api: FakeApi, engine: Engine, clock: Clock) -> Runner:
    return Runner(fake_api, engine, clock)


@pytest.fixture
def api_server(fake_api: FakeApi) -> Iterator[dict[str, str]]:
    """The fake API served on loopback; yields its base_url and token_url."""
    with serve(fake_api) as root:
        yield urls(root)
