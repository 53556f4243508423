"""The rate budget stays sound: a hostile Retry-After, a clock stepped back, a long client id.

The job and the fake API run on one injected clock (``SharedTime`` of test_budget): no test waits for
real, and no test asserts a wall time.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import replace
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select, update

from etl.api.auth import StaticToken
from etl.api.client import ClientOptions, SmartcarClient
from etl.api.ratelimit import Patience, SharedBucket, TokenBucket
from etl.api.retry import RetryPolicy
from etl.api.transport import make_http_client
from etl.config import ApiConfig, Config, RateLimitConfig, Secret
from etl.context import Seams, StoreLedger, budget_key
from etl.db.models import rate_budgets
from etl.db.store import Bucket, Store
from etl.fakeapi import FakeApi
from etl.sync import sync
from etl.tracking import track
from tests.conftest import T0, make_config
from tests.test_budget import SharedTime, make_world

HUGE_RETRY_AFTERS = ["999999999999", "Fri, 31 Dec 9999 23:59:59 GMT"]
FLOOR = 0.05  # seconds: no wait for the budget is shorter (a busy loop would be)
KEY_LENGTH = rate_budgets.c.key.type.length  # type: ignore[attr-defined]


def _seams(fake: FakeApi, time: SharedTime) -> Seams:
    return Seams(transport=httpx.MockTransport(fake.handle), sleep=time.sleep, now=time.now)


# -- 3. one Retry-After no longer poisons the budget ----------------------------------------------------------------

@pytest.mark.parametrize("retry_after", HUGE_RETRY_AFTERS)
def test_a_huge_retry_after_costs_one_capped_wait_and_the_next_pass_fetches(engine: Engine, retry_after: str) -> None:
    fake, time, config, ids = make_world(engine, 12, seed=11)
    fake.fail_next(429, headers={"Retry-After": retry_after}, match="/v3/connections/")
    first = sync(config, Store(engine), seams=_seams(fake, time), ignore_due=True)
    # The retry waited the cap (retry.max_retry_after_seconds), and so did the budget: the pass went on.
    assert (first.exit_code, first.counts.fetched, first.deferred) == (0, 12, 0)
    assert time.seconds < 2 * config.retry.max_retry_after_seconds
    row = Store(engine).budget(budget_key(config))
    assert row.tokens >= -row.capacity
    time.sleep(config.retry.max_retry_after_seconds)
    second = sync(config, Store(engine), seams=_seams(fake, time), ignore_due=True)
    assert (second.exit_code, second.counts.fetched, second.deferred) == (0, 12, 0)
    assert fake.rate_limited == 0


def test_the_store_never_drains_the_budget_below_minus_capacity(engine: Engine) -> None:
    store = Store(engine)
    bucket = Bucket(capacity=4.0, per_second=2.0)
    store.lease_tokens("k", want=1, bucket=bucket, at=T0)
    store.drain_tokens("k", seconds=999999999999.0, at=T0)
    assert store.budget("k").tokens == -4.0
    assert store.budget_tokens("k", at=T0, empty=4.0) == -4.0
    late = store.lease_tokens("k", want=1, bucket=bucket, at=T0 + dt.timedelta(seconds=2.4))
    assert late.granted == 0 and late.wait == pytest.approx(0.1)  # -4 + 4.8 = 0.8 tokens: 0.1 s to the next
    assert store.lease_tokens("k", want=1, bucket=bucket, at=T0 + dt.timedelta(seconds=2.5)).granted == 1
    store.drain_tokens("k", seconds=float("inf"), at=T0 + dt.timedelta(seconds=3))
    assert store.budget("k").tokens == -4.0
    store.drain_tokens("k", seconds=float("nan"), at=T0 + dt.timedelta(seconds=3))
    assert store.budget("k").tokens == 0.0  # no readable wait: empty, not poisoned


def test_a_budget_poisoned_before_the_fix_heals_within_one_refill(engine: Engine) -> None:
    store = Store(engine)
    bucket = Bucket(capacity=4.0, per_second=2.0)
    store.lease_tokens("k", want=1, bucket=bucket, at=T0)
    with engine.begin() as conn:  # as a 429 with Retry-After: 999999999999 left it
        conn.execute(update(rate_budgets).where(rate_budgets.c.key == "k").values(tokens=-2e12))
    assert store.budget_tokens("k", at=T0, empty=4.0) == -4.0  # what status shows: one bucket deep, not -2e12
    assert store.lease_tokens("k", want=1, bucket=bucket, at=T0 + dt.timedelta(seconds=2.5)).granted == 1


def test_the_in_process_bucket_never_drains_below_minus_capacity() -> None:
    now = [0.0]
    bucket = TokenBucket(capacity=4.0, per_second=2.0, clock=lambda: now[0])
    bucket.drain(999999999999.0)
    assert bucket.try_acquire() == pytest.approx(2.5)  # from -4 to 1 token at 2 a second
    now[0] = 2.5
    assert bucket.try_acquire() == 0.0
    bucket.drain(float("inf"))
    assert bucket.try_acquire() == pytest.approx(2.5)


class RecordingLimiter:
    """A limiter that never waits and records the drains it is asked for."""

    def __init__(self) -> None:
        self.waited = 0.0
        self.drains: list[float] = []

    def acquire(self, cancelled: threading.Event | None = None, patience: Patience | None = None) -> bool:
        return True

    def drain(self, seconds: float) -> None:
        self.drains.append(seconds)


@pytest.mark.parametrize("retry_after", HUGE_RETRY_AFTERS)
def test_the_client_asks_for_no_longer_a_drain_than_max_retry_after(retry_after: str) -> None:
    fake_api = FakeApi(access_tokens=("ready-token",))
    conn = fake_api.add()
    fake_api.fail_next(429, headers={"Retry-After": retry_after}, match="/v3/")
    sleeps: list[float] = []
    retry = RetryPolicy(max_retry_after=30.0, sleep=sleeps.append, jitter=lambda: 1.0)
    limiter = RecordingLimiter()
    http = make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(fake_api.handle))
    client = SmartcarClient(base_url="https://api.test/v3", auth=StaticToken(Secret("ready-token")), http=http,
                            retry=retry, options=ClientOptions(now=lambda: T0, limiter=limiter))
    assert client.get_connection(conn.id) is not None
    assert limiter.drains == [30.0] and sleeps == [30.0]


# -- 5. a clock stepped back does not spin --------------------------------------------------------------------------

def _future_row(store: Store, key: str, bucket: Bucket, tokens: float) -> None:
    """The budget row as a clock one hour ahead left it (a backwards NTP step since)."""
    store.lease_tokens(key, want=1, bucket=bucket, at=T0 + dt.timedelta(hours=1))
    with store.engine.begin() as conn:
        conn.execute(update(rate_budgets).where(rate_budgets.c.key == key).values(tokens=tokens))


def test_a_budget_updated_in_the_future_refills_from_now(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(engine)
    bucket = Bucket(capacity=5.0, per_second=1.0)
    _future_row(store, "k", bucket, tokens=0.0)
    caplog.set_level(logging.INFO, logger="etl.db.store")
    empty = store.lease_tokens("k", want=5, bucket=bucket, at=T0)
    assert empty.granted == 0 and FLOOR <= empty.wait <= 1.0
    assert store.budget("k").updated_at == T0  # written as now, not kept in the future
    assert store.lease_tokens("k", want=5, bucket=bucket, at=T0 + dt.timedelta(seconds=2)).granted == 2
    store.lease_tokens("k", want=5, bucket=bucket, at=T0 + dt.timedelta(hours=1))  # the row is now at T0 + 2 s
    _future_row(store, "k", bucket, tokens=0.0)
    store.lease_tokens("k", want=5, bucket=bucket, at=T0)
    warned = [r for r in caplog.records if "stepped back" in r.getMessage()]
    assert len(warned) == 1  # once, however often it is seen


def test_a_drain_with_the_clock_stepped_back_writes_now(engine: Engine) -> None:
    store = Store(engine)
    bucket = Bucket(capacity=5.0, per_second=1.0)
    _future_row(store, "k", bucket, tokens=5.0)
    store.drain_tokens("k", seconds=3.0, at=T0)
    assert store.budget("k").updated_at == T0
    assert store.lease_tokens("k", want=1, bucket=bucket, at=T0 + dt.timedelta(seconds=4)).granted == 1


class Spinning(Exception):
    """The bucket asked the ledger again and again without time passing."""


def test_leases_against_a_future_row_wait_at_least_the_floor(engine: Engine) -> None:
    fake = FakeApi(client_id="test-client", client_secret="s")
    config = replace(make_config(fake, "unused"), rate_limit=RateLimitConfig(capacity=6, per_minute=60.0))
    store = Store(engine)
    time = SharedTime()
    ledger = StoreLedger(store, config, now=time.now)
    _future_row(store, ledger.key, ledger.bucket, tokens=0.9999)  # a hair below a token, an hour ahead
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) > 1000:
            raise Spinning
        time.sleep(seconds)

    limiter = SharedBucket(ledger, lease=1, sleep=sleep)
    for _ in range(5):
        assert limiter.acquire()
    assert waits and min(waits) >= FLOOR
    assert len(waits) <= time.seconds / FLOOR  # lease transactions per simulated second are bounded
    assert time.seconds < 10  # five tokens at one a second, counted from now, not from an hour ahead
    assert store.budget(ledger.key).updated_at <= time.now()


class ZeroWaitLedger:
    """A ledger that grants nothing and says there is no need to wait, twice; then a token."""

    def __init__(self) -> None:
        self.leases = 0

    def lease(self, want: int) -> tuple[int, float]:
        self.leases += 1
        return (1, 0.0) if self.leases > 2 else (0, 0.0)

    def drain(self, seconds: float) -> None:
        pass


def test_a_shared_bucket_waits_the_floor_whatever_the_ledger_says() -> None:
    waits: list[float] = []
    assert SharedBucket(ZeroWaitLedger(), sleep=waits.append).acquire()
    assert waits == [FLOOR, FLOOR]


# -- 10. a long client id ------------------------------------------------------------------------------------------

def _config(client_id: str, **rate_limit: Any) -> Config:
    return Config(api=ApiConfig(client_id=client_id, client_secret=Secret("s")),
                  rate_limit=RateLimitConfig(**rate_limit))


def test_the_bucket_is_keyed_by_the_application_not_its_credentials() -> None:
    # Two applications with ready tokens (no client id) once shared the key "access-token"; by name they don't.
    config = _config("c" * 300)
    assert budget_key(config) == "default"
    assert budget_key(replace(config, api=replace(config.api, application="eu-west"))) == "eu-west"
    assert budget_key(_config("c" * 300, key="mine")) == "mine"  # rate_limit.key, when set, is the name


def test_a_300_character_client_id_syncs_on_every_database(engine: Engine) -> None:
    time = SharedTime()
    fake = FakeApi(client_id="c" * 300, client_secret="test-client-secret", clock=time.monotonic)
    ids = fake.populate(3, seed=12)
    track(Store(engine), ids, now=time.now)
    config = make_config(fake, engine.url.render_as_string(hide_password=False))
    result = sync(config, Store(engine), seams=_seams(fake, time), ignore_due=True)
    assert (result.exit_code, result.counts.fetched) == (0, 3)
    with engine.connect() as conn:
        keys = list(conn.scalars(select(rate_budgets.c.key)))
    assert keys == [budget_key(config)] and len(keys[0]) <= KEY_LENGTH



# -- what the mutation run asked of the tests above ----------------------------------------------------------------

def test_a_drain_empties_a_full_in_process_bucket_for_exactly_that_long() -> None:
    bucket = TokenBucket(capacity=4.0, per_second=2.0, clock=lambda: 0.0)
    bucket.drain(0.5)  # 4 tokens gone, then one second's refill (0.5 s * 2) owed
    assert bucket.try_acquire() == pytest.approx(1.0)


class GrantingLedger:
    """A ledger that grants ``granted`` tokens a lease, or nothing with a long wait."""

    def __init__(self, granted: int, wait: float = 3600.0) -> None:
        self.granted, self.wait, self.leases = granted, wait, 0
        self.wants: list[int] = []

    def lease(self, want: int) -> tuple[int, float]:
        self.leases += 1
        self.wants.append(want)
        return (self.granted, 0.0) if self.granted else (0, self.wait)

    def drain(self, seconds: float) -> None:
        pass


def test_a_drain_gives_back_the_tokens_a_shared_bucket_holds() -> None:
    ledger = GrantingLedger(3)
    bucket = SharedBucket(ledger, lease=3, sleep=lambda seconds: None)
    assert bucket.acquire() and ledger.leases == 1
    bucket.drain(1.0)
    assert bucket.acquire() and ledger.leases == 2  # the two it held were dropped: leased again


def test_a_cancelled_shared_bucket_takes_no_token() -> None:
    cancelled = threading.Event()
    cancelled.set()
    assert SharedBucket(GrantingLedger(0), sleep=lambda seconds: None).acquire(cancelled) is False


def test_a_cancel_ends_a_shared_buckets_wait() -> None:
    bucket = SharedBucket(GrantingLedger(0))  # an hour to the next token, waited for real
    cancelled = threading.Event()
    threading.Timer(0.05, cancelled.set).start()
    assert bucket.acquire(cancelled) is False


def test_an_in_process_bucket_asks_patience_before_it_waits() -> None:
    time = SharedTime()
    bucket = TokenBucket(capacity=1, per_second=1.0, clock=time.monotonic, sleep=time.sleep)
    assert bucket.acquire()
    asked: list[float] = []
    assert bucket.acquire(patience=lambda wait: bool(asked.append(wait))) is False
    assert asked == [pytest.approx(1.0)] and time.seconds == 0.0  # refused: not waited


def test_the_process_bucket_has_the_settings_it_was_asked_for() -> None:
    from etl.api.ratelimit import below, shared_bucket

    bucket = shared_bucket(17, 42.0)
    assert (bucket.capacity, bucket.per_second) == below(17, 42.0)


def test_the_clock_step_log_names_the_key_and_both_times(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(engine)
    bucket = Bucket(capacity=5.0, per_second=1.0)
    key = "k" * 50
    caplog.set_level(logging.INFO, logger="etl.db.store")
    store.lease_tokens(key, want=1, bucket=bucket, at=T0)
    store.lease_tokens(key, want=1, bucket=bucket, at=T0)  # the same instant: not a step back
    assert caplog.records == []
    _future_row(store, key, bucket, tokens=0.0)
    store.lease_tokens(key, want=1, bucket=bucket, at=T0)
    later = (T0 + dt.timedelta(hours=1)).isoformat()
    assert [r.getMessage() for r in caplog.records] == [
        f"rate budget {'k' * 40!r}: last updated at {later}, after now ({T0.isoformat()}): "
        "the clock stepped back? Counting from now"]


def test_a_shared_bucket_leases_one_token_at_least_and_has_waited_nothing_at_first() -> None:
    default, floor = GrantingLedger(1), GrantingLedger(1)
    first, second = SharedBucket(default), SharedBucket(floor, lease=0)
    assert first.acquire() and second.acquire()
    assert (default.wants, floor.wants, first.waited, second.waited) == ([1], [1], 0.0, 0.0)
