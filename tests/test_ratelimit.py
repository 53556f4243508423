"""The token bucket: bursts up to capacity, then the refill rate; shared; cancellable."""

from __future__ import annotations

import threading

from etl.api.ratelimit import TokenBucket, shared_bucket
from etl.db.store import Store


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_burst_then_refill_rate() -> None:
    t = FakeTime()
    bucket = TokenBucket(capacity=3, per_second=0.5, clock=t.clock, sleep=t.sleep)
    times = []
    for _ in range(6):
        assert bucket.acquire()
        times.append(t.now)
    assert times == [0, 0, 0, 2.0, 4.0, 6.0]
    assert bucket.waited == 6.0


def test_refill_never_exceeds_capacity() -> None:
    t = FakeTime()
    bucket = TokenBucket(capacity=2, per_second=1, clock=t.clock, sleep=t.sleep)
    t.now = 100.0  # a long idle time
    for _ in range(3):
        bucket.acquire()
    assert t.now == 101.0


def test_cancel_ends_a_wait() -> None:
    bucket = TokenBucket(capacity=1, per_second=1 / 3600)
    assert bucket.acquire()
    cancelled = threading.Event()
    threading.Timer(0.05, cancelled.set).start()
    assert bucket.acquire(cancelled) is False


def test_shared_bucket_is_one_per_setting() -> None:
    assert shared_bucket(120, 2) is shared_bucket(120, 2)
    assert shared_bucket(120, 2) is not shared_bucket(60, 2)
    assert shared_bucket(120, 2).per_second == 2 / 60
    assert shared_bucket(120, 2).capacity == 119 - 2 / 60 * 0.1  # headroom for the network delay
    assert shared_bucket(20, 3000).capacity == 14.0


def test_a_client_bucket_like_the_apis_provokes_no_429() -> None:

    from etl.api.auth import ClientCredentials
    from etl.api.client import ClientOptions, SmartcarClient
    from etl.api.ratelimit import client_bucket
    from etl.api.retry import RetryPolicy
    from etl.api.transport import make_http_client
    from etl.config import Secret
    from etl.fakeapi import FakeApi, serve, urls
    from etl.fetch import fetch_outcomes

    fake = FakeApi(rate_limit=(10, 200))
    ids = fake.populate(120, seed=1)
    with serve(fake) as root:
        u = urls(root)
        http = make_http_client(timeout=10, concurrency=8)
        retry = RetryPolicy(max_attempts=1)  # a 429 would fail the fetch, not hide behind a retry
        auth = ClientCredentials(http=http, token_url=u["token_url"], client_id=fake.client_id,
                                 client_secret=Secret(fake.client_secret), retry=retry)
        client = SmartcarClient(base_url=u["base_url"], auth=auth, http=http, retry=retry,
                                options=ClientOptions(limiter=client_bucket(10, 200 * 60)))
        try:
            outcomes = list(fetch_outcomes(ids, client=client, concurrency=8))
        finally:
            http.close()
    assert fake.rate_limited == 0 and len(outcomes) == 120
    assert all(type(o).__name__ == "Fetched" for o in outcomes)


def test_a_run_reports_how_long_it_waited_for_the_rate_limit(run_sync, engine) -> None:  # type: ignore[no-untyped-def]
    from etl.api.ratelimit import TokenBucket
    from etl.tracking import track

    ids = run_sync.fake.populate(6, seed=2)
    track(Store(engine), ids)
    t = FakeTime()
    bucket = TokenBucket(capacity=2, per_second=0.5, clock=t.clock, sleep=t.sleep)  # 2 at once, then one per 2 s
    result = run_sync(limiter=bucket)
    assert result.counts.fetched == 6 and result.rate_limit_wait == 8.0
    assert "(8s of it waiting for the rate limit)" in result.summary()
