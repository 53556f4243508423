"""Fixtures: databases (SQLite file, PostgreSQL and MariaDB servers), the fake API, a clock, a config.

PostgreSQL tests need ETL_TEST_POSTGRES_URL and MariaDB tests ETL_TEST_MARIADB_URL (an
admin URL on a server where the tests may create databases); they skip without it, unless
ETL_REQUIRE_POSTGRES=1 / ETL_REQUIRE_MARIADB=1, which turns the skip into a failure. A server that
does not answer is skipped the same way (and fails where it is required). The tests share
one migrated database per server for the session, emptied after each test, and a test that
asks for an unmigrated one gets its own; all are created here and dropped afterwards, and
nothing else on the server is touched.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from etl.api.auth import clear_token_cache
from etl.check import check_history
from etl.config import ApiConfig, Config, RateLimitConfig, RetryConfig, Secret, SyncConfig
from etl.context import Seams
from etl.db.dialects import dialect_for
from etl.db.engine import make_engine, upgrade
from etl.db.scratch import create_database, drop_database, emptied, schema_of, scratch_database
from etl.db.store import Store
from etl.fakeapi import FakeApi, serve, urls
from etl.sync import RunResult, sync

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
# Servers the tests may create databases on: backend -> (admin URL variable, variable that makes them required).
SERVERS = {
    "postgresql": ("ETL_TEST_POSTGRES_URL", "ETL_REQUIRE_POSTGRES"),
    "mariadb": ("ETL_TEST_MARIADB_URL", "ETL_REQUIRE_MARIADB"),
}
DEFAULT_PORTS = {"postgresql": 5432, "mariadb": 3306, "mysql": 3306}


def admin_url(backend: str) -> str:
    """The admin URL of the backend's test server; skip without one (or when it does not answer), fail
    where the server is required."""
    variable, required = SERVERS[backend]
    url = os.environ.get(variable)
    problem = f"{variable} is not set" if not url else _unanswered(url)
    if problem:
        if os.environ.get(required) == "1":
            pytest.fail(f"{required}=1 but {problem}")
        pytest.skip(problem)
    assert url
    return url


@functools.cache
def _unanswered(url: str) -> str | None:
    """Why nothing answers at the URL's host and port (None when something does), asked once a session."""
    parsed = make_url(url)
    host, port = parsed.host or "127.0.0.1", parsed.port or DEFAULT_PORTS[parsed.get_backend_name()]
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as error:
        return f"nothing answers at {host}:{port} ({error.strerror or error})"
    return None


class Templates:
    """Databases migrated once per session for the tests that ask for a migrated one (``engine``).

    SQLite: a file, copied for each test. PostgreSQL and MariaDB: one database per server, which those
    tests share, emptied after each (``emptied``: TRUNCATE, ids restarted). A test that changed more
    than rows (a trigger, a dropped index, a downgrade: ``schema_of`` differs) gets it dropped and made
    again, so the next test starts from the migrated schema either way.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.made: dict[str, str] = {}
        self.schema: dict[str, Any] = {}

    def sqlite(self) -> Path:
        path = self.folder / "template.db"
        if "sqlite" not in self.made:
            self.made["sqlite"] = self._migrate(f"sqlite:///{path}")
        return path

    def shared(self, backend: str, admin: str) -> str:
        """The session's migrated database on this server."""
        if backend not in self.made:
            self.made[backend] = self._migrate(create_database(admin, prefix="etl_test_shared_"))
            self.schema[backend] = schema_of(self.made[backend])
        return self.made[backend]

    def reset(self, backend: str, admin: str) -> None:
        """Ready the shared database for the next test: emptied, or made again if its schema changed."""
        url = self.made[backend]
        try:
            if emptied(url, self.schema[backend]):
                return
        except SQLAlchemyError:  # the test left it unreadable (a table dropped, say): made again too
            pass
        COPIED.discard(url)
        drop_database(admin, self.made.pop(backend), prefix="etl_test_shared_")

    @staticmethod
    def _migrate(url: str) -> str:
        engine = make_engine(url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()  # PostgreSQL copies a template only while nobody is connected to it
        return url


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Templates]:
    made = Templates(tmp_path_factory.mktemp("templates"))
    yield made
    for backend in SERVERS:
        if backend in made.made:
            drop_database(admin_url(backend), made.made[backend], prefix="etl_test_shared_")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres),
                        pytest.param("mariadb", marks=pytest.mark.mariadb)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, templates: Templates) -> Iterator[str]:
    """A database URL for the test: a SQLite file under tmp_path, or a database on the PostgreSQL or
    MariaDB server. Empty and the test's own, unless the test also asks for ``engine``: then migrated,
    a copy of the session's SQLite file, or the server's shared database, emptied after the test
    (``Templates``)."""
    migrated = "engine" in request.fixturenames
    if request.param == "sqlite":
        path = tmp_path / "etl.db"
        if migrated:
            shutil.copyfile(templates.sqlite(), path)
            COPIED.add(f"sqlite:///{path}")
        yield f"sqlite:///{path}"
        return
    admin = admin_url(request.param)
    if not migrated:
        with scratch_database(admin) as url:
            yield url
        return
    url = templates.shared(request.param, admin)
    COPIED.add(url)
    try:
        yield url
    finally:
        templates.reset(request.param, admin)


# Test databases copied from a migrated template: the ``engine`` fixture does not migrate them again.
COPIED: set[str] = set()


# Hypothesis examples per backend, as a share of SQLite's: a server round trip costs more than a file
# write, and three databases must stay within CI's ten minutes.
EXAMPLE_SHARE = {"sqlite": 1.0, "postgresql": 0.4, "mariadb": 0.4}


def max_examples(engine: Engine, on_sqlite: int) -> int:
    """How many hypothesis examples a property test runs on this engine's database."""
    backend = dialect_for(engine).name
    return max(1, round(on_sqlite * EXAMPLE_SHARE[backend]))


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
    if db_url not in COPIED:  # a copy of a template is at head already: upgrade would only check that (20 ms)
        upgrade(engine)
    yield engine
    if request.node.get_closest_marker("corrupts_history") is None:
        result = check_history(engine)
        assert result.ok, result.violations
    _checked_in(engine)


@pytest.fixture(autouse=True)
def _fresh_tokens() -> Iterator[None]:
    """Every test starts without the tokens the process keeps across passes (``etl.api.auth._cache``)."""
    clear_token_cache()
    yield
    clear_token_cache()


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

        ``cancelled``, ``metrics`` and ``limiter`` go into the pass's seams; ``archive=False`` turns the
        document archive off; the rest goes to ``sync``.
        """
        self.clock.advance(seconds=advance.total_seconds())
        seams = {k: kwargs.pop(k) for k in ("cancelled", "metrics", "limiter") if k in kwargs}
        store = Store(self.engine, archive=kwargs.pop("archive", True))
        return sync(self.config, store, seams=Seams(
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


MEASURED = "measured: "  # record_property(MEASURED + what, value): shown at the end of the run


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What tests measured (the image's size and build time, say), once each, after the results. The figures
    travel in the reports' user properties, so pytest-xdist's workers hand them to the process that prints."""
    shown: dict[str, object] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            for name, value in getattr(report, "user_properties", ()):
                if isinstance(name, str) and name.startswith(MEASURED):
                    shown[name.removeprefix(MEASURED)] = value
    if shown:
        terminalreporter.write_sep("-", "measured")
        for name, value in shown.items():
            terminalreporter.write_line(f"{name}: {value}")
