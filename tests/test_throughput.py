"""How fetching spends its threads and its requests: the gate, the workers, the direct transport.

Behaviour only; the speed is measured by ``benchmarks/bench_sync.py --static``.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from sqlalchemy import Engine

from etl.api.auth import StaticToken
from etl.api.client import SmartcarClient, environment_proxy, make_http_client
from etl.config import Secret
from etl.errors import FatalApiError
from etl.fakeapi import FakeApi
from etl.fetch import Gate, fetch_outcomes, next_limit
from etl.outcomes import Fetched, Outcome


def test_a_slow_api_gets_every_thread_a_fast_one_a_single_one() -> None:
    assert next_limit(wall=0.300, cpu=0.0003, maximum=8) == 8  # hundreds of ms: latency-bound
    assert next_limit(wall=0.0004, cpu=0.0003, maximum=8) == 1  # answers as fast as we parse them
    assert next_limit(wall=0.0024, cpu=0.0003, maximum=8) == 4  # in between: half of wall / cpu
    assert next_limit(wall=0.0, cpu=0.0, maximum=5) == 5  # nothing measured yet
    assert next_limit(wall=10.0, cpu=0.001, maximum=3) == 3


def test_the_gate_widens_for_latency_and_narrows_again_under_contention() -> None:
    gate = Gate(4)
    assert gate.limit == 1  # nothing measured yet: one request, from the consumer's own thread
    admitted: list[int] = []
    waiter = threading.Thread(target=lambda: admitted.append(3) if gate.admit(3) else None)
    waiter.start()
    for _ in range(100):  # the answers take a while: the parked worker 3 may go
        gate.timed(lambda: time.sleep(0.002))
        if gate.limit == 4:
            break
    waiter.join(timeout=5)
    assert gate.limit == 4 and admitted == [3]
    give_up = time.perf_counter() + 5
    while gate.limit > 1 and time.perf_counter() < give_up:  # CPU-bound work: wall == cpu
        gate.timed(lambda: sum(range(2000)))
    assert gate.limit == 1


def test_the_first_request_sets_the_limit_but_not_the_averages() -> None:
    gate = Gate(8)

    def first() -> None:  # connecting, the token, code run the first time: CPU a later request does not spend
        end = time.thread_time() + 0.02
        while time.thread_time() < end:
            pass
        time.sleep(0.03)

    gate.timed(first)
    assert gate.limit == 1  # 50 ms of wall for 20 ms of CPU: one in flight
    gate.timed(lambda: time.sleep(0.05))  # the API's latency, for almost no CPU
    assert gate.limit == 8  # at once, not after the first request has been averaged away


class Slow:
    """A MockTransport handler answering after ``delay``, counting how many requests it held at once."""

    def __init__(self, fake: FakeApi, delay: float) -> None:
        self.fake, self.delay = fake, delay
        self.active = self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.delay)
            return self.fake.handle(request)
        finally:
            with self.lock:
                self.active -= 1


def client_for(handler: object) -> SmartcarClient:
    http = make_http_client(timeout=5, concurrency=4, transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    return SmartcarClient(base_url="https://api.test/v3", auth=StaticToken(Secret("t")), http=http)


def fetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fetch_")]


def fetch_all(handler: object, ids: list[str], concurrency: int = 4, window: int = 8) -> list[Outcome]:
    """Every outcome of ``fetch_outcomes`` over ``ids`` through a client on ``handler``."""
    client = client_for(handler)
    try:
        return list(fetch_outcomes(ids, client=client, concurrency=concurrency, window=window))
    finally:
        client.http.close()


def test_a_slow_api_is_fetched_with_several_requests_in_flight() -> None:
    fake = FakeApi(access_tokens=("t",))
    ids = fake.populate(24, seed=4)
    slow = Slow(fake, delay=0.05)
    outcomes = fetch_all(slow, ids)
    assert sorted(o.connection_id for o in outcomes) == sorted(ids)
    assert all(isinstance(o, Fetched) for o in outcomes)
    assert slow.peak == 4  # latency-bound: every worker from the second request on
    assert fetch_threads() == []


def test_a_consumer_that_stops_early_leaves_no_worker_and_sends_nothing_more() -> None:
    fake = FakeApi(access_tokens=("t",))
    ids = fake.populate(40, seed=5)
    slow = Slow(fake, delay=0.01)
    client = client_for(slow)
    outcomes = fetch_outcomes(ids, client=client, concurrency=4, window=4)
    first = [next(outcomes) for _ in range(3)]
    outcomes.close()
    sent = fake.count("GET", "/v3/connections/")
    time.sleep(0.05)
    client.http.close()
    assert len(first) == 3 and fetch_threads() == []
    assert fake.count("GET", "/v3/connections/") == sent <= 3 + 4 + 4  # consumed, waiting in the window, in flight
    assert client.cancelled.is_set()


def test_a_fatal_answer_stops_every_worker_and_is_raised() -> None:
    fake = FakeApi(access_tokens=("t",))
    ids = fake.populate(30, seed=6)
    fake.fail_next(430, match=ids[5])
    with pytest.raises(FatalApiError):
        fetch_all(Slow(fake, delay=0.002), ids, concurrency=3, window=6)
    assert fetch_threads() == [] and fake.count("GET", "/v3/connections/") < 30


class Busy:
    """A MockTransport handler that spends ``cpu`` seconds of its caller's CPU on each answer, noting which
    thread asked; from the ``slow_after``-th request on it also sleeps ``delay`` (an API that slows down)."""

    def __init__(self, fake: FakeApi, cpu: float = 0.005, *, slow_after: int | None = None,
                 delay: float = 0.1) -> None:
        self.slow = Slow(fake, delay=0.0)
        self.cpu, self.slow_after, self.delay = cpu, slow_after, delay
        self.threads: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.threads.append(threading.current_thread().name)
        end = time.thread_time() + self.cpu
        while time.thread_time() < end:
            pass
        self.slow.delay = self.delay if self.slow_after is not None and len(self.threads) > self.slow_after else 0
        return self.slow(request)


def test_a_fast_api_is_fetched_from_the_consumers_own_thread_one_request_per_outcome() -> None:
    fake = FakeApi(access_tokens=("t",))
    ids = fake.populate(30, seed=7)
    busy = Busy(fake)
    client = client_for(busy)
    outcomes = fetch_outcomes(ids, client=client, concurrency=4, window=8)
    first = [next(outcomes) for _ in range(20)]
    assert fetch_threads() == [] and fake.count("GET", "/v3/connections/") == 20  # nothing fetched ahead
    outcomes.close()
    client.http.close()
    assert [o.connection_id for o in first] == ids[:20]  # in order: one at a time
    assert set(busy.threads) == {threading.current_thread().name} and busy.slow.peak == 1


def test_workers_take_over_when_the_api_slows_down() -> None:
    fake = FakeApi(access_tokens=("t",))
    ids = fake.populate(40, seed=8)
    busy = Busy(fake, slow_after=10)
    outcomes = fetch_all(busy, ids)
    assert sorted(o.connection_id for o in outcomes) == sorted(ids)
    assert set(busy.threads[:10]) == {threading.current_thread().name}  # fast: from the consumer's thread
    assert {name[:6] for name in busy.threads[12:]} == {"fetch_"} and busy.slow.peak == 4
    assert fetch_threads() == []


def test_a_fatal_answer_fetched_inline_is_raised_and_nothing_more_is_sent() -> None:
    fake = FakeApi(access_tokens=("t",))
    ids = fake.populate(30, seed=9)
    fake.fail_next(430, match=ids[5])
    client = client_for(Busy(fake))
    with pytest.raises(FatalApiError):
        list(fetch_outcomes(ids, client=client, concurrency=3, window=6))
    client.http.close()
    assert fake.count("GET", "/v3/connections/") == 6 and client.cancelled.is_set()


def test_the_api_transport_takes_the_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert environment_proxy(httpx.URL("https://vehicle.api.smartcar.com/v3")) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "iam.smartcar.com")
    assert environment_proxy(httpx.URL("https://vehicle.api.smartcar.com/v3")) == "http://proxy.internal:3128"
    assert environment_proxy(httpx.URL("https://iam.smartcar.com/oauth2/token")) is None
    assert environment_proxy(httpx.URL("http://vehicle.api.smartcar.com/v3")) is None  # no HTTP_PROXY
    http = make_http_client(timeout=5, concurrency=1)
    try:
        transport = http.direct(httpx.URL("https://vehicle.api.smartcar.com/v3/connections/x"))
        assert transport is http.direct(httpx.URL("https://vehicle.api.smartcar.com/v3/connections/y"))
        assert transport is not http.direct(httpx.URL("https://iam.smartcar.com/oauth2/token"))
    finally:
        http.close()
    assert http.transports == {}


def test_the_next_listing_page_is_fetched_while_the_one_before_is_stored(engine: Engine) -> None:
    """Paused inside page 1's items (as while a batch is written), page 2 is requested already; page 3 is not."""
    from etl.context import Pass, Seams
    from etl.db.store import Store
    from etl.fetch import Listing
    from tests.conftest import Clock, make_config

    fake = FakeApi()
    ids = fake.populate(250, seed=7)
    store = Store(engine)
    store.track(ids, at=Clock()())
    seams = Seams(transport=httpx.MockTransport(fake.handle), now=Clock())
    ctx = Pass.open(make_config(fake, str(engine.url)), store, seams)
    listing = Listing(ctx)
    outcomes = listing.outcomes()

    def pages_asked() -> list[str]:
        return [p for m, p in fake.requests if m == "GET" and p == "/v3/connections"]

    first = next(outcomes)
    for _ in range(200):  # the background request, not a sleep standing for one
        if len(pages_asked()) == 2:
            break
        time.sleep(0.01)
    assert isinstance(first, Fetched) and listing.page == 1
    assert len(pages_asked()) == 2
    rest = list(outcomes)
    ctx.client.http.close()
    assert len(rest) == 249 and len(pages_asked()) == 3
    assert sorted(o.connection_id for o in [first, *rest]) == sorted(ids)


@pytest.mark.parametrize("value", ["garbage", "ftp://proxy:21", "http://user:s3cret@[::1", "http://a\x01b:3128"])
def test_a_proxy_variable_httpx_cannot_use_is_a_config_error_that_keeps_its_secret(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    from etl.errors import ConfigError

    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", value)
    with pytest.raises(ConfigError) as caught:
        make_http_client(timeout=5, concurrency=1)
    assert "HTTPS_PROXY" in str(caught.value) and caught.value.exit_code == 2
    assert "s3cret" not in str(caught.value) and value not in str(caught.value)
    make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(lambda r: httpx.Response(200))).close()


@pytest.mark.parametrize("db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_postgresql_prepares_what_runs_per_row_and_plans_each_batch_for_its_parameters(engine: Engine) -> None:
    """A generic plan made while the tables were small would scan them whole for each batch as they grow;
    forcing custom plans on the session instead would replan every foreign-key check, one per row."""
    import datetime as dt

    from sqlalchemy import bindparam, select, update

    from etl.db.dialects import among
    from etl.db.models import vehicles

    at = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    ids = [f"v{n:05d}" for n in range(500)]
    with engine.begin() as conn:  # a small table, never analysed: as in a first backfill
        conn.execute(vehicles.insert(), [{"id": i, "first_seen_at": at, "last_seen_at": at} for i in ids])
    for _ in range(2):  # the connection the test made, and a new one after dispose: set up the same way
        with engine.connect() as conn:
            conn.rollback()  # what the pool does at check-in
            for n in range(16):  # past psycopg's default threshold (prepared at the fifth)
                conn.execute(select(vehicles.c.id).where(among(conn, vehicles.c.id, ids[n * 30:n * 30 + 100]))).all()
            conn.execute(update(vehicles).where(vehicles.c.id == bindparam("b_id")).values(model="M"),
                         [{"b_id": i} for i in ids[:3]])
            prepared = conn.exec_driver_sql("SELECT statement FROM pg_prepared_statements").scalars().all()
            assert not [s for s in prepared if s.startswith("SELECT vehicles.id")], prepared  # planned each time
            assert [s for s in prepared if s.startswith("UPDATE vehicles")], prepared  # parsed once for its rows
            source = conn.exec_driver_sql("SELECT source FROM pg_settings WHERE name = 'plan_cache_mode'").scalar()
            assert source != "session", source  # not set by the job: foreign-key checks keep their cached plans
        engine.dispose()
